"""CPU CSR kernel, every config of its space, against the dense product x @ W.T + b."""

import pytest
import torch

from sparse_rt.formats import CsrFormat
from sparse_rt.kernels.cpu.configs import simd_width
from sparse_rt.kernels.cpu._launch import splits_by_inputs
from sparse_rt.kernels.cpu.csr import csr_linear_reference
from sparse_rt.kernels.registry import kernels_for
from tests.helpers import assert_close, masked_weight

# leading dims of x: 1-D, batch 1, batches below / above / across SIMD tiles, and 3-D
X_SHAPES = [(), (1,), (3,), (17,), (70,), (2, 5)]


def _with_empty_rows() -> torch.Tensor:
    weight = masked_weight(37, 53, 0.3, seed=0)
    weight[[0, 3, 36]] = 0
    return weight


def _skewed() -> torch.Tensor:
    # row lengths from 0 to 300 (int16 indices, rows far longer than a register)
    weight = masked_weight(64, 300, 1.0, seed=1)
    lengths = torch.arange(64) * 300 // 63
    return weight * (torch.arange(300)[None, :] < lengths[:, None])


WEIGHTS = {
    "odd_with_empty_rows": _with_empty_rows,
    "skewed_rows_int16": _skewed,
    "all_zero": lambda: torch.zeros(37, 53),
    "all_dense": lambda: masked_weight(48, 40, 1.0, seed=2),
    "single_column": lambda: masked_weight(9, 1, 1.0, seed=3),
}


def _run_all_configs(weight: torch.Tensor, bias: torch.Tensor | None) -> int:
    fmt = CsrFormat.from_dense(weight)
    kernels = kernels_for(fmt, "cpu")
    assert [k.name for k in kernels] == ["csr_cpu_rowwise"]
    runs = 0
    for kernel in kernels:
        for config in kernel.configs(fmt, torch.device("cpu")):
            bound = kernel.bind(fmt, bias, config, torch.device("cpu"))
            for lead in X_SHAPES:
                x = torch.randn(*lead, weight.shape[1])
                expected = x @ weight.T + (0 if bias is None else bias)
                y = bound(x)
                assert y.shape == (*lead, weight.shape[0]) and y.dtype == torch.float32
                assert_close(y, expected, rtol=1e-5)
                runs += 1
    return runs


@pytest.mark.parametrize("name", sorted(WEIGHTS))
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_csr_every_config_matches_dense(name, with_bias):
    weight = WEIGHTS[name]()
    bias = torch.randn(weight.shape[0]) if with_bias else None
    assert _run_all_configs(weight, bias) > len(X_SHAPES)


@pytest.mark.parametrize("shape", [(128, 96), (96, 200)])
@pytest.mark.parametrize("density", [0.5, 0.1, 0.02])
def test_csr_shapes_and_densities(shape, density):
    weight = masked_weight(*shape, density, seed=4)
    fmt = CsrFormat.from_dense(weight)
    (kernel,) = kernels_for(fmt, "cpu")
    bias = torch.randn(shape[0])
    bound = kernel.bind(fmt, bias, kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
    for batch in (1, 8, 33):
        x = torch.randn(batch, shape[1])
        assert_close(bound(x), x @ weight.T + bias, rtol=1e-5)


def test_csr_int32_indices():
    # in_features > 32767 needs int32 column indices
    weight = torch.zeros(6, 40000)
    weight[torch.arange(6), torch.tensor([0, 7, 39999, 32768, 12345, 20000])] = torch.randn(6)
    weight[2, 35000] = 1.5
    fmt = CsrFormat.from_dense(weight)
    assert fmt.column_indices.dtype == torch.int32
    (kernel,) = kernels_for(fmt, "cpu")
    bound = kernel.bind(fmt, None, kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
    for batch in (1, 9):
        x = torch.randn(batch, 40000)
        assert_close(bound(x), x @ weight.T, rtol=1e-5)


def test_csr_reference_matches_dense():
    weight = _with_empty_rows()
    bias = torch.randn(37)
    x = torch.randn(2, 3, 53)
    assert_close(csr_linear_reference(x, CsrFormat.from_dense(weight), bias), x @ weight.T + bias, rtol=1e-5)


def test_csr_non_contiguous_and_empty_batch():
    weight = masked_weight(30, 20, 0.3, seed=5)
    fmt = CsrFormat.from_dense(weight)
    (kernel,) = kernels_for(fmt, "cpu")
    bound = kernel.bind(fmt, None, kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
    x = torch.randn(20, 9).T  # [9, 20], not contiguous
    assert not x.is_contiguous()
    assert_close(bound(x), x @ weight.T, rtol=1e-5)
    assert_close(bound(x[::2]), x[::2] @ weight.T, rtol=1e-5)
    assert bound(torch.randn(0, 20)).shape == (0, 30)


def test_csr_rejects_bad_input():
    fmt = CsrFormat.from_dense(masked_weight(30, 20, 0.3, seed=6))
    (kernel,) = kernels_for(fmt, "cpu")
    bound = kernel.bind(fmt, None, kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
    with pytest.raises(TypeError, match="expected float32"):
        bound(torch.randn(2, 20, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected float32 \[\.\.\., 20\]"):
        bound(torch.randn(2, 21))
    with pytest.raises(ValueError, match="expected config keys"):
        kernel.bind(fmt, None, {"unroll": 2}, torch.device("cpu"))
    with pytest.raises(ValueError, match="unroll"):
        kernel.bind(fmt, None, {"tasks_per_thread": 4, "unroll": 3, "batch_vectors": 1}, torch.device("cpu"))
    with pytest.raises(ValueError, match="bias: expected shape"):
        kernel.bind(fmt, torch.randn(31), kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))


@pytest.mark.parametrize("num_threads", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_csr_batched_split_by_inputs_or_outputs(name, num_threads):
    """Both task splits of the batched kernel (by output rows; by tiles of input rows, each
    transposed by its task), with a partial last tile and GELU, at 1-3 threads."""
    weight = WEIGHTS[name]()
    fmt = CsrFormat.from_dense(weight)
    (kernel,) = kernels_for(fmt, "cpu")
    bias = torch.randn(weight.shape[0])
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        splits = set()
        for config in kernel.configs(fmt, torch.device("cpu"))[:1]:
            for batch_vectors in (1, 2, 4):
                config = {**config, "batch_vectors": batch_vectors}
                width = batch_vectors * simd_width()
                for gelu in (False, True):
                    bound = kernel.bind(fmt, bias, config, torch.device("cpu"), activation="gelu" if gelu else None)
                    for batch in (2, width + 3, 3 * width - 1, 5 * width + 1):
                        splits.add(splits_by_inputs(batch, width, num_threads))
                        x = torch.randn(batch, weight.shape[1])
                        expected = x @ weight.T + bias
                        expected = torch.nn.functional.gelu(expected) if gelu else expected
                        assert_close(bound(x), expected, rtol=1e-5)
        assert splits == ({True} if num_threads == 1 else {True, False})
    finally:
        torch.set_num_threads(previous)
