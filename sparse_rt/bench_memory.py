"""Memory of one inference session, measured in a fresh process.

RSS measured inside the bench's own process says little: converting and tuning, and
the other engines' runs, leave freed memory that later sessions reuse. A child process
imports the engine, records its RSS, builds a session on the model file, runs it once on
the saved inputs and reports how much its RSS grew.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

_CHILD = r"""
import sys
import numpy as np

engine, model, feeds_path, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024


feeds = dict(np.load(feeds_path))
if engine == "sparse_rt":
    import sparse_rt

    before = rss_mb()
    session = sparse_rt.InferenceSession(model, threads=threads)
else:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    before = rss_mb()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
session.run(None, feeds)
print(rss_mb() - before)
"""


def session_memory_mb(engine: str, model: Path, feeds: dict[str, np.ndarray], threads: int, workdir: Path) -> float:
    """RSS growth (MiB) of a fresh process that builds an `engine` ("sparse_rt" or
    "onnxruntime") session on `model` and runs it once on `feeds`; NaN where /proc is missing."""
    if not Path("/proc/self/status").exists():
        return float("nan")
    feeds_path = workdir / f"feeds_{engine}.npz"
    np.savez(feeds_path, **feeds)
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, engine, str(model), str(feeds_path), str(threads)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"measuring the memory of a {engine} session failed:\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])
