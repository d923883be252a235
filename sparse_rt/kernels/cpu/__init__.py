"""CPU kernels: one module per weight format, each registering its kernels on import.

The kernels are C, compiled once per machine at first use (`_native`) and run on one
shared caller-helps thread pool (`_pool`); `heuristic.pick_cpu_kernel` chooses among
them without timing.
"""

from sparse_rt.kernels.cpu import bitmask, bsr, bsr_int8, butterfly, csr, csr_int8, dense, dense_int8, nm, permuted  # noqa: F401
