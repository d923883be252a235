"""The native build cache, the shared thread pool, and thread counts / concurrency of the CPU kernels."""

import ctypes
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from sparse_rt.formats import CsrFormat, DenseFormat
from sparse_rt.kernels.cpu import _native
from sparse_rt.kernels.cpu._launch import balanced_split
from sparse_rt.kernels.registry import kernels_for
from tests.helpers import OTHER_INSTRUCTION_SETS, assert_close, run_built_for

COUNTER = r"""
struct hits_job { int32_t* hits; int32_t* workers; };
static void _count(void* context, int64_t task, int worker) {
    struct hits_job* job = (struct hits_job*)context;
    __atomic_fetch_add(&job->hits[task], 1, __ATOMIC_RELAXED);
    job->workers[task] = worker;
}
void count_tasks(int num_threads, int64_t tasks, int32_t* hits, int32_t* workers) {
    struct hits_job job = {hits, workers};
    sr_parallel_for(num_threads, tasks, _count, &job);
}
"""


@pytest.mark.parametrize("num_threads", [1, 2, 3, 8])
def test_pool_runs_every_task_once(num_threads):
    library = _native.load_library("test_pool_counter", COUNTER)
    count = _native.declare(library, "count_tasks", [ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p])
    for tasks in (0, 1, 5, 1000):
        for _ in range(20):
            hits = torch.zeros(max(tasks, 1), dtype=torch.int32)
            workers = torch.full((max(tasks, 1),), -1, dtype=torch.int32)
            count(num_threads, tasks, hits.data_ptr(), workers.data_ptr())
            assert hits[:tasks].eq(1).all(), hits
            assert workers[:tasks].ge(0).all() and workers[:tasks].lt(num_threads).all()


def test_build_error_names_the_library(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_RT_CACHE_DIR", str(tmp_path))
    with pytest.raises(_native.NativeBuildError, match="'broken_kernel'"):
        _native.load_library("broken_kernel", "int broken = ;")


def test_build_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_RT_CACHE_DIR", str(tmp_path))
    source = "int cached_answer(void) { return 42; }"
    path = _native._build("cached", _native.PRELUDE + source)
    stamp = path.stat().st_mtime_ns
    assert _native._build("cached", _native.PRELUDE + source) == path
    assert path.stat().st_mtime_ns == stamp
    assert path.parent == tmp_path / "native"


def test_balanced_split():
    costs = torch.tensor([10, 0, 0, 10, 10, 10, 0, 10])
    split = balanced_split(costs, 4)
    assert split[0] == 0 and split[-1] == 8 and (split.diff() > 0).all()
    sums = [int(costs[a:b].sum()) for a, b in zip(split[:-1].tolist(), split[1:].tolist())]
    assert max(sums) <= 20
    assert balanced_split(torch.zeros(0, dtype=torch.int64), 4).tolist() == [0]
    assert balanced_split(torch.ones(3, dtype=torch.int64), 8).tolist() == [0, 1, 2, 3]


def _bound(fmt, bias=None):
    kernel = kernels_for(fmt, "cpu")[0]
    return kernel.bind(fmt, bias, kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))


def test_thread_counts_give_the_same_result():
    weight = torch.randn(300, 200) * (torch.rand(300, 200) < 0.2)
    csr, dense = _bound(CsrFormat.from_dense(weight)), _bound(DenseFormat.from_dense(weight))
    x = torch.randn(9, 200)
    previous = torch.get_num_threads()
    try:
        results = []
        for num_threads in (1, 2, 3, 5):
            torch.set_num_threads(num_threads)
            results.append((csr(x[:1]), csr(x), dense(x[:1]), dense(x)))
    finally:
        torch.set_num_threads(previous)
    for got in results:
        for y, expected in zip(got, (x[:1] @ weight.T, x @ weight.T, x[:1] @ weight.T, x @ weight.T)):
            assert_close(y, expected, rtol=1e-5)


def test_concurrent_calls_on_one_layer():
    weight = torch.randn(256, 128) * (torch.rand(256, 128) < 0.1)
    bias = torch.randn(256)
    layer = _bound(CsrFormat.from_dense(weight), bias)
    inputs = [torch.randn(batch, 128) for batch in (1, 7, 1, 32) * 8]

    def run(x):
        return layer(x), x @ weight.T + bias

    with ThreadPoolExecutor(max_workers=4) as pool:
        for y, expected in pool.map(run, inputs):
            assert_close(y, expected, rtol=1e-5)



def test_concurrent_first_calls_keep_one_launch():
    """Threads making a fresh layer's first one-row calls at once: every later call reads the
    task split and slices the kept launch points into (a lost race once freed them: a crash)."""
    weight = torch.randn(256, 128) * (torch.rand(256, 128) < 0.1)
    inputs = [torch.randn(1, 128) for _ in range(8)]
    for _ in range(100):
        layer = _bound(CsrFormat.from_dense(weight), None)
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(layer, inputs))
        scrap = [torch.randn(64) for _ in range(50)]  # reuses what a lost race freed
        for x in inputs:
            assert_close(layer(x), x @ weight.T, rtol=1e-5)
        del scrap

# Every format's kernels at batch 1 and batched, built for another instruction set.
OTHER_ISA_SCRIPT = r"""
import torch
from sparse_rt.formats import BsrFormat, ButterflyFormat, CsrFormat, DenseFormat, NmFormat, PermutedFormat
from sparse_rt.kernels.cpu.configs import simd_width
from sparse_rt.kernels.registry import kernels_for

torch.manual_seed(0)
sparse = torch.randn(70, 45) * (torch.rand(70, 45) < 0.3)
nm = torch.randn(70, 45) * (torch.arange(45) % 4 < 2)
weights = [
    DenseFormat.from_dense(sparse), CsrFormat.from_dense(sparse), NmFormat.from_dense(nm, n=2, m=4),
    BsrFormat.from_dense(sparse, block_shape=(4, 4)), BsrFormat.from_dense(sparse, block_shape=(1, 4)),
    ButterflyFormat(in_features=30, out_features=64, twiddles=torch.randn(6, 32, 2, 2)),
    PermutedFormat(in_features=45, out_features=44, permutations=torch.stack([torch.randperm(46) for _ in range(3)]).to(torch.int8), blocks=torch.randn(3, 23, 2, 2)),
]
for fmt in weights:
    dense = fmt.to_dense()
    bias = torch.randn(dense.shape[0])
    for kernel in kernels_for(fmt, "cpu"):
        bound = kernel.bind(fmt, bias, kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
        for batch in (1, 5, 20, 70):
            x = torch.randn(batch, dense.shape[1])
            expected = x @ dense.T + bias
            error = float((bound(x) - expected).abs().max() / expected.abs().max())
            assert error < 1e-5, (kernel.name, batch, error)
from sparse_rt.kernels.cpu.gelu import gelu
x = torch.linspace(-10, 10, 2001)
assert float((gelu(x) - torch.nn.functional.gelu(x)).abs().max()) < 1e-6
print(f"VL={simd_width()}")
"""


@pytest.mark.parametrize("arch, needs", OTHER_INSTRUCTION_SETS, ids=["avx2", "portable"])
def test_other_instruction_sets(arch, needs, tmp_path):
    run_built_for(arch, needs, OTHER_ISA_SCRIPT, tmp_path, expect="VL=8")
