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


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "sparse_rt", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "convert" in result.stdout and "explain" in result.stdout
