"""CPU bitmask kernels against the dense product x @ W.T + b: every config, odd shapes, batches,
other instruction sets, the heuristic's pricing, and a converted model against onnxruntime."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.formats import BitmaskFormat
from sparse_rt.kernels.cpu import heuristic
from sparse_rt.kernels.cpu.bitmask import bitmask_linear_reference
from sparse_rt.kernels.cpu.heuristic import candidate_costs, pick_cpu_kernel
from sparse_rt.kernels.registry import get_kernel, kernels_for
from tests.formats.test_bitmask_format import two_of_four
from tests.helpers import assert_close, host_runs, masked_weight, run_built_for

CPU = torch.device("cpu")
BATCHES = (1, 2, 7, 33)


def _check_every_config(weight: torch.Tensor, batches=BATCHES, leads=((),)) -> None:
    fmt = BitmaskFormat.from_dense(weight)
    (kernel,) = kernels_for(fmt, "cpu")
    assert kernel.name == "bitmask_cpu_expand"
    out_features, in_features = weight.shape
    for config in kernel.configs(fmt, CPU):
        for bias in (None, torch.randn(out_features)):
            bound = kernel.bind(fmt, bias, config, CPU)
            for batch in batches:
                for lead in leads:
                    x = torch.randn(*lead, batch, in_features)
                    y = bound(x)
                    assert y.shape == (*lead, batch, out_features)
                    assert_close(y, x @ weight.T + (0 if bias is None else bias), rtol=1e-5)


@pytest.mark.parametrize("shape", [(37, 45), (1, 70), (19, 1), (64, 16), (24, 129), (9, 200)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_every_config_matches_dense(shape, density):
    weight = masked_weight(*shape, density, seed=shape[0] + shape[1])
    weight[shape[0] // 2] = 0  # an empty row
    _check_every_config(weight)


@pytest.mark.parametrize("fill", ["zero", "dense"])
def test_all_zero_and_all_dense(fill):
    weight = torch.zeros(21, 77) if fill == "zero" else torch.randn(21, 77)
    _check_every_config(weight)


def test_two_of_four():
    _check_every_config(two_of_four(40, 132, seed=5), leads=((), (2,)))


def test_wide_layer_crosses_column_and_row_blocks():
    # more output rows than one batched row block, more columns than one column block
    weight = masked_weight(600, 1100, 0.3, seed=6)
    fmt = BitmaskFormat.from_dense(weight)
    kernel = get_kernel("bitmask_cpu_expand")
    bias = torch.randn(600)
    for config in kernel.configs(fmt, CPU)[:3]:
        bound = kernel.bind(fmt, bias, config, CPU)
        for batch in (1, 9, 40):
            x = torch.randn(batch, 1100)
            assert_close(bound(x), x @ weight.T + bias, rtol=1e-5)


@pytest.mark.parametrize("batch_rows", [4, 8])
def test_panels_cross_column_blocks_and_a_partial_last_panel(batch_rows):
    # 1100 columns: five column blocks of the panel kernel; 600 rows: the last panel partly past out
    weight = masked_weight(600, 1100, 0.5, seed=9)
    weight[:40] = 0  # whole empty panels
    fmt = BitmaskFormat.from_dense(weight)
    kernel = get_kernel("bitmask_cpu_expand")
    config = {"tasks_per_thread": 4, "batch_rows": batch_rows, "gemv_threads": 0, "batched": "panels"}
    for bias in (None, torch.randn(600)):
        bound = kernel.bind(fmt, bias, config, CPU)
        for batch in (2, 9, 40):
            x = torch.randn(batch, 1100)
            assert_close(bound(x), x @ weight.T + (0 if bias is None else bias), rtol=1e-5)


def test_expanded_layers_share_a_scratch():
    """Batched "expand" writes each layer out into one scratch per thread, larger or smaller."""
    kernel = get_kernel("bitmask_cpu_expand")
    config = {"tasks_per_thread": 4, "batch_rows": 8, "gemv_threads": 0, "batched": "expand"}
    weights = [masked_weight(90, 130, 0.5, seed=11), masked_weight(20, 33, 0.3, seed=12)]
    bound = [kernel.bind(BitmaskFormat.from_dense(w), None, config, CPU) for w in weights]
    for _ in range(2):
        for layer, weight in zip(bound, weights):
            x = torch.randn(5, weight.shape[1])
            assert_close(layer(x), x @ weight.T, rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts(threads):
    weight = masked_weight(300, 300, 0.5, seed=7)
    fmt = BitmaskFormat.from_dense(weight)
    kernel = get_kernel("bitmask_cpu_expand")
    bound = kernel.bind(fmt, None, {"tasks_per_thread": 16, "batch_rows": 4, "gemv_threads": 0}, CPU)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch in (1, 11):
            x = torch.randn(batch, 300)
            assert_close(bound(x), x @ weight.T, rtol=1e-5)
    finally:
        torch.set_num_threads(previous)


def test_non_contiguous_and_one_dimensional_x():
    weight = masked_weight(31, 45, 0.5, seed=8)
    fmt = BitmaskFormat.from_dense(weight)
    kernel = get_kernel("bitmask_cpu_expand")
    bound = kernel.bind(fmt, None, kernel.configs(fmt, CPU)[0], CPU)
    wide = torch.randn(6, 90)
    for x in (wide[:, ::2], torch.randn(45, 5).T, wide[:1, 1::2], torch.randn(45)):
        assert not x.is_contiguous() or x.dim() == 1
        assert_close(bound(x), x @ weight.T, rtol=1e-5)


def test_bad_inputs_are_clear_errors():
    fmt = BitmaskFormat.from_dense(masked_weight(8, 12, 0.5, seed=9))
    kernel = get_kernel("bitmask_cpu_expand")
    bound = kernel.bind(fmt, None, kernel.configs(fmt, CPU)[0], CPU)
    with pytest.raises(ValueError, match=r"bitmask_linear: input 'x': expected float32 \[\.\.\., 12\]"):
        bound(torch.randn(2, 13))
    with pytest.raises(TypeError, match=r"bitmask_linear: input 'x': expected float32"):
        bound(torch.randn(2, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"BitmaskOptions: expected batch_rows in \[4, 8\], got 3"):
        kernel.bind(fmt, None, {"tasks_per_thread": 4, "batch_rows": 3, "gemv_threads": 0}, CPU)
    with pytest.raises(ValueError, match=r"bitmask_linear: bias: expected shape \[8\], got \[7\]"):
        kernel.bind(fmt, torch.randn(7), kernel.configs(fmt, CPU)[0], CPU)


def test_reference_matches_dense():
    weight = masked_weight(37, 45, 0.5, seed=10)
    bias = torch.randn(37)
    x = torch.randn(2, 3, 45)
    assert_close(bitmask_linear_reference(x, BitmaskFormat.from_dense(weight), bias), x @ weight.T + bias, rtol=1e-5)


# The kernels built for another instruction set: AVX2 (the table expand, also on an AVX-512 host) and the
# portable vector code; and the AVX-512 build, run where the host has AVX-512 and only built elsewhere.
OTHER_ISA_SCRIPT = r"""
import sys
import torch
from sparse_rt.formats import BitmaskFormat
from sparse_rt.kernels.cpu._bitmask_native import SOURCE
from sparse_rt.kernels.cpu._native import load_library
from sparse_rt.kernels.cpu.configs import simd_width
from sparse_rt.kernels.registry import get_kernel

assert hasattr(load_library("bitmask", SOURCE), "bitmask_gemm")
print(f"VL={simd_width()}")
if sys.argv[1] == "build-only":
    sys.exit(0)
torch.manual_seed(0)
kernel = get_kernel("bitmask_cpu_expand")
for shape in ((70, 45), (33, 129), (1, 1), (5, 300)):
    for density in (0.0, 0.3, 0.5, 1.0):
        weight = torch.randn(*shape) * (torch.rand(*shape) < density)
        fmt = BitmaskFormat.from_dense(weight)
        bias = torch.randn(shape[0])
        for config in kernel.configs(fmt, torch.device("cpu")):
            bound = kernel.bind(fmt, bias, config, torch.device("cpu"))
            for batch in (1, 2, 7, 33):
                x = torch.randn(batch, shape[1])
                expected = x @ weight.T + bias
                error = float((bound(x) - expected).abs().max() / expected.abs().max().clamp(min=1e-6))
                assert error < 1e-5, (shape, density, config, batch, error)
"""


@pytest.mark.parametrize("arch, width", [("haswell", 8), ("x86-64", 8), ("skylake-avx512", 16)],
                         ids=["avx2", "portable", "avx512"])
def test_other_instruction_sets(arch, width, tmp_path):
    run = "run" if arch != "skylake-avx512" or host_runs("avx512bw") else "build-only"
    run_built_for(arch, "avx2" if arch == "haswell" else None, OTHER_ISA_SCRIPT, tmp_path, [run], f"VL={width}")


# -- the heuristic's pricing --------------------------------------------------------------


def test_bitmask_is_always_priced_per_dense_entry():
    for density in (0.0, 0.5, 1.0):
        weight = masked_weight(256, 512, density, seed=11)
        costs = {name: cost for cost, name, params in candidate_costs(weight, 1) if not params}
        expected = heuristic.BITMASK_COST[0].time(256, 256 * 512, 1)
        assert costs["bitmask"] == pytest.approx(expected)


def test_measured_bitmask_loses_to_dense_at_batch_1():
    # as measured on AVX2 (module docstring of the heuristic): priced above dense, so not picked
    weight = masked_weight(768, 3072, 0.5, seed=12)
    costs = {name: cost for cost, name, params in candidate_costs(weight, 1) if not params}
    assert costs["bitmask"] > costs["dense"]
    assert pick_cpu_kernel(weight, 1)[0].name != "bitmask"


@pytest.fixture
def cheap_bitmask(monkeypatch):
    """The model with bitmask priced at a third of dense (what an expansion cheaper than the
    AVX2 one would give): the pick, the kernel it binds and the saved model are then bitmask's."""
    dense = heuristic.DENSE_COST
    monkeypatch.setattr(heuristic, "BITMASK_COST", (heuristic.Cost(0.0, dense[0].per_weight / 3), heuristic.BITMASK_COST[1]))


def test_pick_binds_and_runs_bitmask(cheap_bitmask):
    weight = masked_weight(128, 200, 0.5, seed=13)
    fmt, kernel_name, config = pick_cpu_kernel(weight, 1)
    assert (fmt.name, kernel_name) == ("bitmask", "bitmask_cpu_expand")
    assert config == get_kernel(kernel_name).configs(fmt, CPU)[0]
    x = torch.randn(1, 200)
    assert_close(get_kernel(kernel_name).bind(fmt, None, config, CPU)(x), x @ weight.T, rtol=1e-5)
    assert pick_cpu_kernel(weight, 32)[0].name != "bitmask"  # batched it stays priced as measured


def _pruned_mlp(path: Path) -> None:
    """x [batch, 96] -> Gemm 96->160 (50 % magnitude-pruned) -> Relu -> Gemm 160->40 (50 %)."""
    rng = np.random.default_rng(14)
    weights = []
    for out_features, in_features in ((160, 96), (40, 160)):
        w = rng.standard_normal((out_features, in_features)).astype(np.float32)
        w[np.abs(w) < np.median(np.abs(w))] = 0.0
        weights.append(w)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1),
    ]
    initializers = [
        numpy_helper.from_array(weights[0], "w1"), numpy_helper.from_array(rng.standard_normal(160).astype(np.float32), "b1"),
        numpy_helper.from_array(weights[1], "w2"), numpy_helper.from_array(rng.standard_normal(40).astype(np.float32), "b2"),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 40])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_converted_model_at_batch_1_round_trips_and_matches_onnxruntime(cheap_bitmask, tmp_path):
    source, saved = tmp_path / "mlp.onnx", tmp_path / "mlp.sparse.onnx"
    _pruned_mlp(source)
    sparse_rt.save(sparse_rt.convert(str(source), batch_sizes=(1,), tune=False), saved)
    onnx.checker.check_model(onnx.load(saved))
    session = sparse_rt.InferenceSession(saved)
    layers = [node for node in session.graph.nodes if node.op_type == "SparseLinear"]
    assert [node.attributes["format"] for node in layers] == ["bitmask", "bitmask"]
    assert {node.attributes["kernel"] for node in layers} == {"bitmask_cpu_expand"}
    reference = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 96)).astype(np.float32)
        expected = reference.run(None, {"x": x})[0]
        assert_close(session.run(None, {"x": x})[0], expected, rtol=1e-5)
