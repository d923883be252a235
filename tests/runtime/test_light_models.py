"""Every model under onnx/backend/test/data/light (whatever the installed onnx ships), converted
as users convert them (through SparseRtBackend with lowering), against onnxruntime.

Two versions of each: as shipped (dense: its weights are ConstantOfShape fills) and with seeded
random weights (He-scaled, so activations stay in range) 90% magnitude-pruned.
onnxruntime runs the very same file. Tolerance: max relative error (to the reference's largest
magnitude) under 1e-4 for float32 outputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from sparse_rt.runtime.backend import SparseRtBackend
from sparse_rt.runtime.check import random_feeds

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = sorted(LIGHT.glob("*.onnx"))
RTOL_FLOAT32 = 1e-4
VARIANTS = ("shipped", "pruned90")


def _weight_fills(model: onnx.ModelProto) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{ConstantOfShape output: (op reading it as a weight, shape)} for Conv and Gemm weights."""
    initializers = {t.name: t for t in model.graph.initializer}
    fills = {n.output[0]: tuple(int(d) for d in numpy_helper.to_array(initializers[n.input[0]]))
             for n in model.graph.node if n.op_type == "ConstantOfShape" and n.input[0] in initializers}
    weights = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.input[1] in fills:
            transposed = any(a.name == "transB" and a.i for a in node.attribute)
            weights[node.input[1]] = (node.op_type if not transposed else "GemmT", fills[node.input[1]])
    return weights


def _with_weights(model: onnx.ModelProto, sparsity: float, seed: int = 0) -> onnx.ModelProto:
    """A copy of `model` whose Conv/Gemm weights are seeded He-scaled values (the largest
    1 - sparsity of each kept, scaled back up) instead of ConstantOfShape fills."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(seed)
    weights = _weight_fills(model)
    kept = [n for n in out.graph.node if not (n.op_type == "ConstantOfShape" and n.output[0] in weights)]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    for name, (op, shape) in weights.items():
        fan_in = shape[1] if op == "GemmT" else (shape[0] if op == "Gemm" else math.prod(shape[1:]))
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
        if sparsity:
            magnitude = np.abs(w.reshape(-1))
            sample = magnitude[rng.integers(0, magnitude.size, min(magnitude.size, 1 << 18))]
            w[np.abs(w) < np.quantile(sample, sparsity)] = 0.0  # the quantile of a sample: ~sparsity
            w *= np.float32(1.0 / math.sqrt(1.0 - sparsity))
        out.graph.initializer.append(numpy_helper.from_array(w, name))
        if out.ir_version < 4:  # initializers are listed among the graph inputs
            out.graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    return out


def _variant(path: Path, variant: str) -> onnx.ModelProto:
    model = onnx.load(path)
    if variant == "pruned90":
        return _with_weights(model, 0.9)
    return model


def _max_rel(actual: np.ndarray, expected: np.ndarray) -> float:
    scale = float(np.abs(expected).max())
    return float(np.abs(actual.astype(np.float64) - expected).max()) / (scale or 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_light_model_matches_onnxruntime(path: Path, variant: str):
    model = _variant(path, variant)
    feeds = random_feeds(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    expected = ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"]).run(None, feeds)
    actual = SparseRtBackend.prepare(model, lower=True).run(feeds)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape and got.dtype == want.dtype == np.float32
        assert _max_rel(got, want) < RTOL_FLOAT32, f"{path.stem} ({variant}): max rel err {_max_rel(got, want):.3g}"


def test_light_models_are_found():
    assert len(MODELS) >= 5, f"expected the onnx wheel's light models under {LIGHT}, found {len(MODELS)}"


def test_pruned_variant_is_pruned():
    model = _with_weights(onnx.load(LIGHT / "light_squeezenet.onnx"), 0.9)
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_w_0")]
    assert weights and all(abs((w == 0).mean() - 0.9) < 0.02 for w in weights if w.size >= 100)


def test_global_average_pool_of_channels_last_equal_channels_is_equal():
    """SqueezeNet's regression: channels holding the same values (a channels-last view, as a
    lowered 1x1 conv leaves it) must pool to the same value, or a Softmax over the huge logits
    of the shipped model picks one class instead of the uniform answer."""
    from sparse_rt.ops.pool import bind_global_average_pool

    plane = torch.randn(1, 1, 13, 13, generator=torch.Generator().manual_seed(0)) * 1e8 + 6.77e9
    x = plane.expand(1, 1000, 13, 13).contiguous(memory_format=torch.channels_last)
    pooled = bind_global_average_pool(None, None)(x).reshape(-1)
    assert torch.equal(pooled, pooled[:1].expand_as(pooled))
    torch.testing.assert_close(pooled[0].double(), plane.double().mean(), rtol=1e-7, atol=0)


# AlexNet, VGG-19 and ZFNet-512 spend their seconds here drawing their large Linear weights; their
# 3x3 convs are the ones ResNet-50, DenseNet and Inception run
CONV_NETS = [p for p in MODELS if not any(name in p.stem for name in ("alexnet", "vgg", "zfnet"))]


@pytest.mark.slow
@pytest.mark.parametrize("path", CONV_NETS, ids=[p.stem for p in CONV_NETS])
def test_light_model_with_winograd_and_gemm_convs_matches_onnxruntime(path: Path, monkeypatch):
    """Seeded dense weights, every 3x3 stride-1 conv run as Winograd and every ungrouped 1x1 one
    as the native GEMM (the timings forced)."""
    from sparse_rt import convert
    from sparse_rt.converters import conv_algorithms
    from sparse_rt.runtime.session import InferenceSession

    model = _with_weights(onnx.load(path), 0.0)
    feeds = random_feeds(model)
    graph = convert(model, tune=False)
    monkeypatch.setattr(conv_algorithms, "_timings", lambda *args: (1.0, 0.5))
    if not conv_algorithms.choose_conv_algorithms(graph):
        pytest.skip(f"{path.stem} has no 3x3 stride-1 or ungrouped 1x1 conv")
    chosen = {name for node in graph.nodes for name in ("winograd_from", "gemm_from") if node.attributes.get(name) == 1}
    assert chosen, "no conv was given an algorithm"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    expected = ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"]).run(None, feeds)
    names = [v.name for v in graph.inputs]
    actual = InferenceSession(graph).run(None, {name: feeds[name] for name in names if name in feeds})
    for got, want in zip(actual, expected):
        assert _max_rel(got, want) < RTOL_FLOAT32, f"{path.stem} ({sorted(chosen)}): max rel err {_max_rel(got, want):.3g}"
