import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparse_rt.experiments.__main__ import main
from sparse_rt.pruning.topologies import TOPOLOGIES
from sparse_rt.runtime.session import set_threads

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    set_threads(threads)


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_permuted_quick_runs_from_the_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "sparse_rt.experiments", "permuted", "--quick", "--out", str(tmp_path)],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = _rows(tmp_path / "permuted.csv")
    assert [(r["target"], int(r["depth"]), int(r["parameters"])) for r in rows] == [
        ("lowrank1", 1, 4096), ("lowrank1", 2, 8192), ("permutation", 1, 4096), ("permutation", 2, 8192)
    ]
    assert all(0.0 < float(r["final_error"]) < 10.0 for r in rows)
    summary = json.loads((tmp_path / "permuted.json").read_text())["summary"]
    assert summary["lowrank1"]["best_depth"] in (1, 2)
    assert _is_png(tmp_path / "permuted.png")


def test_topologies_quick(tmp_path):
    assert main(["topologies", "--quick", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "topologies.csv")
    assert {r["construction"] for r in rows} == set(TOPOLOGIES)
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 1.0
        assert float(row["algebraic_connectivity"]) >= -1e-9
        if row["construction"] != "random_edge":
            kept = 16 * int(row["degree_layer1"]) + 10 * int(row["degree_layer2"])
            assert float(row["density"]) == pytest.approx(kept / (16 * 64 + 10 * 16))
    summary = json.loads((tmp_path / "topologies.json").read_text())
    assert set(summary["correlations_with_accuracy"]) == {"algebraic_connectivity", "spectral_gap", "density"}
    assert _is_png(tmp_path / "topologies.png")


def test_methods_quick(tmp_path):
    assert main(["methods", "--quick", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "methods.csv")
    methods = {"magnitude", "gmp", "lottery", "snip", "grasp", "synflow", "set", "rigl", "random"}
    assert {r["method"] for r in rows} == methods | {"dense"}
    for row in rows:
        # masks fix the sparsity; weights that never got a gradient (constant-zero pixels) may add exact zeros
        assert float(row["sparsity"]) - 1e-3 <= float(row["measured_sparsity"]) <= float(row["sparsity"]) + 0.02, row
        assert 0.0 <= float(row["accuracy"]) <= 1.0
    serving = _rows(tmp_path / "methods_serving.csv")
    assert {(r["method"], int(r["batch"])) for r in serving} == {(m, b) for m in methods | {"dense"} for b in (1, 64)}
    for row in serving:
        assert float(row["max_rel_error"]) < 1e-4
        assert float(row["speedup"]) == pytest.approx(float(row["onnxruntime_ms"]) / float(row["sparse_rt_ms"]))
    assert _is_png(tmp_path / "methods.png")


def test_unknown_experiment_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["lottery"])
    assert "invalid choice: 'lottery'" in capsys.readouterr().err
