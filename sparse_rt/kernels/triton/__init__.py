"""Triton kernels, one per weight format; importing this package registers them (backend "triton").

Each public module holds a format's launcher `<format>_linear`, its `bind_<format>`
and a plain torch `<format>_linear_reference`; the @triton.jit code sits in the
private `_<format>_kernels` modules and the tuning spaces in `configs`.

On CUDA tensors the kernels run compiled; on CPU tensors they run under
triton's interpreter, which is how they are tested without a GPU. Set
TRITON_INTERPRET=1 before triton is first imported to run everything under the
interpreter (CPU tensors work without it too; see `_launch`).
"""

import torch

from sparse_rt.kernels.registry import Kernel, register_kernel
from sparse_rt.kernels.triton import configs
from sparse_rt.kernels.triton.bitmask import bind_bitmask
from sparse_rt.kernels.triton.bsr import bind_bsr, bsr_supports
from sparse_rt.kernels.triton.butterfly import bind_butterfly
from sparse_rt.kernels.triton.csr import bind_csr
from sparse_rt.kernels.triton.dense import bind_dense
from sparse_rt.kernels.triton.int8 import bind_int8, int8_configs
from sparse_rt.kernels.triton.nm import bind_nm
from sparse_rt.kernels.triton.permuted import bind_permuted

DEVICE_TYPES = ("cuda", "cpu")


def _on_device(weight, device: torch.device) -> bool:
    """CUDA runs the compiled kernels, the CPU the interpreter."""
    return torch.device(device).type in DEVICE_TYPES


def _bsr_on_device(weight, device: torch.device) -> bool:
    return _on_device(weight, device) and bsr_supports(weight, device)


KERNELS = [
    register_kernel(Kernel("dense_triton_cublas", "dense", "triton", bind_dense, configs.dense_configs, _on_device)),
    register_kernel(Kernel("csr_triton_rows", "csr", "triton", bind_csr, configs.csr_configs, _on_device)),
    register_kernel(Kernel("bsr_triton_dot", "bsr", "triton", bind_bsr, configs.bsr_configs, _bsr_on_device)),
    register_kernel(Kernel("nm_triton_gather", "nm", "triton", bind_nm, configs.nm_configs, _on_device)),
    register_kernel(
        Kernel("bitmask_triton_expand", "bitmask", "triton", bind_bitmask, configs.bitmask_configs, _on_device)
    ),
    register_kernel(
        Kernel("butterfly_triton", "butterfly", "triton", bind_butterfly, configs.butterfly_configs, _on_device)
    ),
    register_kernel(
        Kernel("permuted_triton", "permuted", "triton", bind_permuted, configs.permuted_configs, _on_device)
    ),
    register_kernel(Kernel("csr_int8_triton", "csr_int8", "triton", bind_int8, int8_configs, _on_device)),
    register_kernel(Kernel("bsr_int8_triton", "bsr_int8", "triton", bind_int8, int8_configs, _on_device)),
    register_kernel(Kernel("dense_int8_triton", "dense_int8", "triton", bind_int8, int8_configs, _on_device)),
]
