"""Shared test utilities."""

from __future__ import annotations

import numpy as np
import torch


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (the scale of the reference)."""
    a = np.asarray(actual.detach().cpu() if isinstance(actual, torch.Tensor) else actual, dtype=np.float64)
    e = np.asarray(expected.detach().cpu() if isinstance(expected, torch.Tensor) else expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape mismatch: got {a.shape}, expected {e.shape}"
    scale = max(float(np.abs(e).max(initial=0.0)), 1e-12)
    return float(np.abs(a - e).max(initial=0.0)) / scale


def assert_close(actual, expected, rtol: float = 1e-4) -> None:
    """Assert max abs error <= rtol * max |expected| (tolerance relative to the reference's scale)."""
    err = relative_error(actual, expected)
    assert err <= rtol, f"relative error {err:.3g} exceeds {rtol:.3g}"


def masked_weight(out_features: int, in_features: int, density: float, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A seeded random [out, in] weight with each entry kept with probability `density` (else 0)."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(out_features, in_features, generator=generator).to(dtype)
    keep = torch.rand(out_features, in_features, generator=generator) < density
    return torch.where(keep, values, torch.zeros((), dtype=dtype))


# -march targets of the kernels' other code paths (AVX2 + FMA, portable C) and the cpuinfo flag
# a host needs to run each
OTHER_INSTRUCTION_SETS = [("haswell", "avx2"), ("x86-64", None)]


def host_runs(needs: str | None) -> bool:
    """Whether this host is x86-64 with the cpuinfo flag `needs` (None: any x86-64 host)."""
    import platform
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().replace("\n", " ") if cpuinfo.exists() else ""
    return platform.machine() in ("x86_64", "AMD64") and (needs is None or f" {needs} " in flags)


def run_script_built_for(arch: str, script: str, cache_dir, args=()):
    """`script` run with `args` in a fresh interpreter whose C kernels are built for -march=`arch`
    into `cache_dir`: the CompletedProcess, text output captured."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "SPARSE_RT_CPU_ARCH": arch, "SPARSE_RT_CACHE_DIR": str(cache_dir)}
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=600, check=False, cwd=Path(__file__).resolve().parents[1])


def run_built_for(arch: str, needs: str | None, script: str, cache_dir, args=(), expect: str = "ok") -> str:
    """Run `script` (which prints `expect`) as `run_script_built_for` does; skip where this host
    cannot run -march=`arch` code (it lacks the cpuinfo flag `needs`). Returns its output."""
    import pytest

    if not host_runs(needs):
        pytest.skip(f"host cannot run -march={arch} code")
    result = run_script_built_for(arch, script, cache_dir, args)
    assert result.returncode == 0 and expect in result.stdout, result.stderr[-3000:] or result.stdout[-3000:]
    return result.stdout
