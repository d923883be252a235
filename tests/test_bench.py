"""The bench CLI: argument handling and small end-to-end runs."""

import json

import onnx
import pytest

from sparse_rt import bench
from tests.scheduler.test_tuning import two_layer_model


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sparsity", "1.5"], "--sparsity"),
        (["--batch-sizes", "0"], "--batch-sizes"),
        (["--pattern", "block:4by4"], "--pattern"),
        (["--pattern", "5:4"], "--pattern"),
        (["--iters", "3", "--seconds", "1"], "not allowed with"),
        (["--suite", "everything"], "--suite"),
        (["--suite", "models", "--suite-models", "bart"], "--suite-models"),
        (["--calibration", "4"], "--calibration: expected a count >= 0 with --quantize"),
        (["--quantize", "int8", "--calibration", "-1"], "--calibration"),
        (["--quantize", "int8", "--calibration", "0", "--rounding", "gptq"], "--rounding gptq: rounds against calibration"),
    ],
)
def test_bad_arguments_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        bench.parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_describe_the_built_in_run():
    args = bench.parse_args([])
    assert (args.model, args.sparsity, args.pattern, args.seq_len, args.batch_sizes) == ("bert", 0.9, "unstructured", 128, [1, 8])


def test_missing_model_file_is_a_clean_error(tmp_path, capsys):
    assert bench.main(["--model", str(tmp_path / "nope.onnx"), "--quiet"]) == 2
    assert "--model" in capsys.readouterr().err


def test_file_model_end_to_end_with_json_plot_and_per_layer(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPARSE_RT_CACHE", str(tmp_path / "cache.json"))
    model, json_path, png = tmp_path / "m.onnx", tmp_path / "r.json", tmp_path / "r.png"
    onnx.save(two_layer_model(256, 1024, 64), str(model))
    argv = ["--model", str(model), "--batch-sizes", "1", "4", "--iters", "3", "--warmup", "1", "--threads", "1", "--no-tune",
            "--json", str(json_path), "--plot", str(png), "--per-layer", "--quiet"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "sparse_rt" in out and "slowest nodes" in out
    (report,) = json.loads(json_path.read_text())
    engines = {(r["engine"], r["batch"]) for r in report["latencies"]}
    assert engines == {("onnxruntime", 1), ("sparse_rt", 1), ("onnxruntime", 4), ("sparse_rt", 4)}
    for row in report["latencies"]:
        assert row["p50_ms"] > 0 and row["p50_ms"] <= row["p99_ms"] and row["runs"] == 3
        if row["engine"] == "sparse_rt":
            assert row["max_rel_error_vs_ort"] <= 1e-4 and row["speedup_vs_ort"] > 0
    assert report["weight_bytes"]["linear_sparse_rt"] < report["weight_bytes"]["linear_dense"]
    assert report["per_layer"] and report["convert_seconds"] > 0 and report["peak_rss_mb"] > 0
    assert set(report["rss_mb"]) == {"sparse_rt", "onnxruntime"} and report["rss_mb"]["sparse_rt"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_built_in_mlp_with_torch_comparison(tmp_path, capsys):
    argv = ["--model", "mlp", "--sparsity", "0.9", "--batch-sizes", "1", "--iters", "2", "--warmup", "0",
            "--no-tune", "--quiet", "--json", str(tmp_path / "r.json")]
    assert bench.main(argv) == 0
    (report,) = json.loads((tmp_path / "r.json").read_text())
    assert {r["engine"] for r in report["latencies"]} == {"onnxruntime", "torch", "sparse_rt"}
    assert all(r["max_rel_error_vs_ort"] <= 1e-4 for r in report["latencies"] if r["engine"] != "onnxruntime")
    assert 0.08 < report["weight_bytes"]["linear_sparse_rt"] / report["weight_bytes"]["linear_dense"] < 0.2


def test_quantize_int8_against_onnxruntime_fp32_and_int8(tmp_path, capsys):
    model, json_path = tmp_path / "m.onnx", tmp_path / "r.json"
    onnx.save(two_layer_model(256, 1024, 64), str(model))
    argv = ["--model", str(model), "--batch-sizes", "4", "--iters", "2", "--warmup", "0", "--threads", "1", "--no-tune",
            "--no-memory", "--quantize", "int8", "--calibration", "2", "--rounding", "gptq", "--agreement", "3",
            "--json", str(json_path), "--quiet"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "vs ort int8" in out and "agreement with onnxruntime fp32 over 3 inputs" in out
    assert "weights rounded by GPTQ, biases corrected on 2 calibration inputs" in out
    (report,) = json.loads(json_path.read_text())
    rows = {r["engine"]: r for r in report["latencies"]}
    assert set(rows) == {"onnxruntime", "onnxruntime_int8", "sparse_rt"}
    assert rows["sparse_rt"]["speedup_vs_ort_int8"] > 0 and 0 < rows["sparse_rt"]["max_rel_error_vs_ort"] < 0.05
    assert report["quantize"] == "int8" and report["precision"] == {"int8": 2} and report["calibration"] == 2
    agreement = {a["engine"]: a for a in report["agreement"]}
    assert set(agreement) == {"onnxruntime_int8", "sparse_rt"}
    assert agreement["sparse_rt"]["samples"] == 3 and agreement["sparse_rt"]["sign_agreement"] > 0.9
    assert 0 < agreement["sparse_rt"]["max_rel_error"] < 0.05
def test_decoder_family_generates_the_same_tokens_in_every_engine(tmp_path, capsys):
    argv = ["--model-family", "gpt2", "--size", "tiny", "--pattern", "2:4", "--batch-sizes", "1", "--prompt-len", "4",
            "--new-tokens", "6", "--rounds", "1", "--no-tune", "--threads", "1", "--json", str(tmp_path / "d.json")]
    assert bench.main(argv) == 0
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["pruner"] == "sparsegpt" and report["family"] == "gpt2"
    assert report["tokens_match"] == {"sparse_rt@1": True, "onnxruntime@1": True, "torch@1": True}
    assert {f["engine"] for f in report["figures"]} == {"sparse_rt", "onnxruntime", "torch"}
    assert all(f["decode_tokens_per_s"] > 0 and f["prefill_ms"] > 0 for f in report["figures"])
    assert "decode tokens/s" in capsys.readouterr().out


def test_decoder_family_rejects_a_context_overflow(capsys):
    argv = ["--model-family", "llama", "--size", "tiny", "--prompt-len", "100", "--new-tokens", "64"]
    assert bench.main(argv) == 2
    assert "at most the context 128" in capsys.readouterr().err


def test_decoders_are_tuned_at_the_rows_a_generation_runs():
    from sparse_rt.bench_decoders import generation_rows

    # one prefill of batch x prompt rows, then new_tokens - 1 one-token steps per sequence
    assert generation_rows([1], 32, 64) == {1: 63.0, 32: 1.0}
    assert generation_rows([1, 4], 4, 2) == {1: 1.0, 4: 2.0, 16: 1.0}  # 4 rows: a prefill and a step


def test_models_suite_corrects_only_its_int8_points(monkeypatch):
    from sparse_rt import bench_models

    seen = []
    monkeypatch.setattr(bench_models, "run_bench", lambda point: seen.append(point) or bench.Report(
        model=point.model, sparsity=point.sparsity, pattern=point.pattern, threads=1, convert_seconds=0.0,
        weight_bytes={}, rss_mb={}, peak_rss_mb=0.0))
    bench_models.run_models_suite(bench.parse_args(["--suite", "models", "--suite-models", "bert", "--quiet"]))
    assert {(p.quantize, p.calibration) for p in seen} == {(None, 0), ("int8", bench.DEFAULT_CALIBRATION)}


def _report(model, sparsity, speedups):
    """A bench Report whose sparse_rt rows have these {batch: speedup over onnxruntime}."""
    rows = [bench.Latency("sparse_rt", batch, 1.0, 1.0, 1.0, 1.0, 1, speedup) for batch, speedup in speedups.items()]
    return bench.Report(model=model, sparsity=sparsity, pattern="unstructured", threads=2, convert_seconds=0.0,
                        weight_bytes={}, rss_mb={}, peak_rss_mb=0.0, latencies=rows)


def test_targets_checks_each_measured_batch_against_its_target():
    from sparse_rt.bench_targets import checks_of, format_checks

    checks = checks_of([_report("minilm", 0.9, {1: 2.6, 8: 0.95}), _report("resnet50", 0.0, {1: 0.92}),
                        _report("mlp", 0.9, {1: 5.0})])
    assert [(c.model, c.batch, c.target, c.met) for c in checks] == [
        ("minilm", 1, 2.5, True), ("minilm", 8, 1.0, False), ("resnet50", 1, 0.9, True),
        ("mlp", 1, 4.0, True), ("mlp", 32, 3.0, False)]  # batch 32 not measured: missed
    table = format_checks(checks)
    assert "| minilm | 90% | 8 | 0.95x | 1.0x | MISSED |" in table
    assert "| mlp | 90% | 32 | - | 3.0x | MISSED |" in table
    assert table.endswith("3 of 5 targets met")


def test_targets_suite_runs_its_points_and_exits_1_on_a_miss(monkeypatch, capsys):
    from sparse_rt import bench_targets

    seen = []

    def fake_run(point):
        seen.append((point.model, point.sparsity, tuple(point.batch_sizes), point.pattern, point.quantize))
        return _report(point.model, point.sparsity, {b: 1.5 for b in point.batch_sizes})

    monkeypatch.setattr(bench_targets, "run_bench", fake_run)
    assert bench.main(["--suite", "targets", "--suite-models", "resnet50", "--quiet"]) == 0
    assert seen == [("resnet50", 0.9, (1, 8), "unstructured", None), ("resnet50", 0.0, (1,), "unstructured", None)]
    assert "3 of 3 targets met" in capsys.readouterr().out
    assert bench.main(["--suite", "targets", "--suite-models", "gpt2", "--quiet"]) == 1  # 1.5x < 2.0x at batch 1
    assert "| gpt2 | 90% | 1 | 1.50x | 2.0x | MISSED |" in capsys.readouterr().out
