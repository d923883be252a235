"""Triton CSR kernel against the masked dense product (interpreter on CPU, compiled on CUDA)."""

import os

import torch

# The kernels run compiled where CUDA is present, else under triton's interpreter; the
# variable must be set before triton is first imported (see sparse_rt.kernels.triton._launch).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from sparse_rt.formats import CsrFormat
from sparse_rt.kernels.registry import get_kernel, kernels_for
from sparse_rt.kernels.triton.configs import csr_configs
from sparse_rt.kernels.triton.csr import bind_csr, csr_linear_reference, pack_csr
from tests.helpers import assert_close, masked_weight

X_SHAPES = [(1,), (5,), (2, 3)]  # leading dims of x: batch 1, batch 5, two leading dims


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)


def _with_empty_rows() -> torch.Tensor:
    weight = masked_weight(37, 53, 0.3, seed=0)
    weight[[0, 3, 36]] = 0
    return weight


def _skewed() -> torch.Tensor:
    # row lengths from 0 to 48, so the swizzle reorders and row blocks mix lengths
    weight = masked_weight(64, 48, 1.0, seed=1)
    lengths = torch.arange(64) * 48 // 63
    return weight * (torch.arange(48)[None, :] < lengths[:, None])


WEIGHTS = {
    "odd_with_empty_rows": _with_empty_rows,
    "skewed_rows": _skewed,
    "all_zero": lambda: torch.zeros(37, 53),
    "dense": lambda: masked_weight(64, 48, 1.0, seed=2),
}


@pytest.mark.parametrize("name", sorted(WEIGHTS))
@pytest.mark.parametrize("pick", [0, -1], ids=["default_config", "last_config"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_csr_matches_dense(device, name, pick, with_bias):
    weight = WEIGHTS[name]()
    out_features, in_features = weight.shape
    bias = torch.randn(out_features) if with_bias else None
    fmt = CsrFormat.from_dense(weight)
    linear = bind_csr(fmt, bias, csr_configs(fmt, device)[pick], device)
    for lead in X_SHAPES:
        x = torch.randn(*lead, in_features)
        expected = x @ weight.T + (0 if bias is None else bias)
        y = linear(x.to(device))
        assert y.shape == expected.shape and y.dtype == torch.float32 and y.device.type == device.type
        assert_close(y.cpu(), expected, rtol=1e-5)


def test_csr_one_dimensional_and_empty_input(device):
    weight = _with_empty_rows()
    fmt = CsrFormat.from_dense(weight)
    linear = bind_csr(fmt, None, csr_configs(fmt, device)[0], device)
    x = torch.randn(53)
    y = linear(x.to(device))
    assert y.shape == (37,)
    assert_close(y.cpu(), weight @ x, rtol=1e-5)
    assert linear(torch.randn(2, 0, 53).to(device)).shape == (2, 0, 37)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_csr_half_precision_on_cuda(device, dtype):
    if device.type != "cuda":
        pytest.skip("half precision is checked on CUDA only")
    weight = masked_weight(256, 384, 0.1, seed=3)
    fmt = CsrFormat.from_dense(weight)
    bias = torch.randn(256)
    for config in csr_configs(fmt, device)[:4]:
        linear = bind_csr(fmt, bias, config, device)
        for batch in (1, 17):
            x = torch.randn(batch, 384)
            y = linear(x.to(device, dtype))
            assert y.dtype == dtype
            assert_close(y.float().cpu(), x.to(dtype).float() @ weight.to(dtype).float().T + bias, rtol=2e-2)


def test_csr_row_swizzle_sorts_rows_by_length():
    fmt = CsrFormat.from_dense(_skewed())
    order = pack_csr(fmt, None, torch.device("cpu")).row_order.long()
    lengths = fmt.row_offsets.diff()[order]
    assert sorted(order.tolist()) == list(range(64))
    assert bool((lengths[:-1] >= lengths[1:]).all())
    assert int(lengths[0]) == 48


def test_csr_reference_matches_dense():
    weight = _with_empty_rows()
    bias = torch.randn(37)
    x = torch.randn(2, 3, 53)
    assert_close(csr_linear_reference(x, CsrFormat.from_dense(weight), bias), x @ weight.T + bias, rtol=1e-5)


def test_csr_kernel_is_registered(monkeypatch):
    monkeypatch.setenv("SPARSE_RT_BACKEND", "triton")
    fmt = CsrFormat.from_dense(_with_empty_rows())
    kernel = get_kernel("csr_triton_rows")
    assert kernel in kernels_for(fmt, "cpu")
    assert kernel.configs(fmt, torch.device("cpu"))[0] == csr_configs(fmt, torch.device("cpu"))[0]


def test_csr_rejects_bad_input_and_config():
    fmt = CsrFormat.from_dense(_with_empty_rows())
    linear = bind_csr(fmt, None, csr_configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
    with pytest.raises(ValueError, match=r"csr_linear: input 'x': expected .*\[\.\.\., 53\] on cpu, got float32 \[5, 52\]"):
        linear(torch.randn(5, 52))
    with pytest.raises(ValueError, match=r"got float64 \[5, 53\]"):
        linear(torch.randn(5, 53, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"CsrOptions: expected config keys .*, got \['BLOCK_B'\]"):
        bind_csr(fmt, None, {"BLOCK_B": 16}, torch.device("cpu"))
