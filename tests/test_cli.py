"""`python -m sparse_rt convert/explain` end to end."""

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort

import sparse_rt
from sparse_rt.__main__ import main
from tests.scheduler.test_tuning import two_layer_model


def test_convert_then_explain(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPARSE_RT_CACHE", str(tmp_path / "cache.json"))
    source, target = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(two_layer_model(), str(source))
    assert main(["convert", str(source), "-o", str(target), "--batch-sizes", "1", "4", "--quiet"]) == 0
    assert "2 linear layers lowered" in capsys.readouterr().out
    assert (tmp_path / "cache.json").exists()
    x = np.ones((3, 32), np.float32)
    (y,) = sparse_rt.InferenceSession(target).run(None, {"x": x})
    (expected,) = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    assert main(["explain", str(target)]) == 0
    report = capsys.readouterr().out
    assert "fc1" in report and "fc2" in report and "predicted speedup" in report
    assert "64x32" in report.replace(" ", "") and "16x64" in report.replace(" ", "")


def test_convert_no_tune_and_errors(tmp_path, capsys):
    source, target = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(two_layer_model(), str(source))
    assert main(["convert", str(source), "-o", str(target), "--no-tune", "--quiet"]) == 0
    assert main(["explain", str(target)]) == 0
    assert "not tuned" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "missing.onnx"), "-o", str(target)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_convert_int8_with_calibration_feeds(tmp_path, capsys):
    source, target = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(two_layer_model(), str(source))
    feeds = []
    for seed in range(2):
        feeds.append(tmp_path / f"feed{seed}.npz")
        np.savez(feeds[-1], x=np.random.default_rng(seed).standard_normal((8, 32)).astype(np.float32))
    argv = ["convert", str(source), "-o", str(target), "--no-tune", "--quiet", "--quantize", "int8",
            "--quantize-tolerance", "1", "--calibration", *map(str, feeds)]
    assert main(argv) == 0
    graph = sparse_rt.load(target)
    assert all(n.attributes["format"].endswith("_int8") for n in graph.nodes if n.op_type == "SparseLinear")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert main(argv[:-2] + [str(tmp_path / "bad.npz")]) == 2
    error = capsys.readouterr().err
    assert "calibration feed" in error and "bad.npz': expected an .npz file of input arrays" in error
    assert main(argv[:-2] + [str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz' does not exist" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "sparse_rt", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "convert" in result.stdout and "explain" in result.stdout
