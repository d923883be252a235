"""On-disk tuning cache: measured seconds per (device, kernel, config, shape, weight, batch).

A JSON file, `$SPARSE_RT_CACHE` or `<user cache dir>/sparse_rt/tuning.json`,
shared across runs and processes. Writes go to a temporary file renamed over the
old one (atomic), merged with what other processes wrote meanwhile. A corrupt
file or one from another cache version is ignored with a warning. Every key starts
with a digest of the kernel sources (`kernels_digest`): timings of kernels that have
changed since are not reused, and the next write drops them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
import warnings
from pathlib import Path

import torch

CACHE_VERSION = 1


def default_cache_path() -> Path:
    """`$SPARSE_RT_CACHE`, else tuning.json in `$SPARSE_RT_CACHE_DIR` (where the compiled
    kernels go too), else ~/.cache/sparse_rt/tuning.json."""
    override = os.environ.get("SPARSE_RT_CACHE")
    if override:
        return Path(override)
    directory = os.environ.get("SPARSE_RT_CACHE_DIR")
    if directory:
        return Path(directory) / "tuning.json"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sparse_rt" / "tuning.json"


def device_fingerprint(device: torch.device) -> str:
    """CPU model and thread count, or the GPU's name."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{_cpu_model()}:threads={torch.get_num_threads()}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def kernels_digest() -> str:
    """A digest of the sources under sparse_rt/kernels (the C kernels are built from them)."""
    root = Path(__file__).resolve().parents[1] / "kernels"
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class TuningCache:
    """Maps a measurement key to seconds; `save()` persists new entries."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path is not None else default_cache_path()
        self.entries: dict[str, float] = self._read()
        self._new: dict[str, float] = {}

    @staticmethod
    def key(device: str, kernel: str, config: dict, shape: tuple[int, int], weight_signature: str, batch: int) -> str:
        config_text = json.dumps(config, sort_keys=True, separators=(",", ":"))
        return f"{kernels_digest()}|{device}|{kernel}|{config_text}|{shape[0]}x{shape[1]}|{weight_signature}|b{batch}"

    def get(self, key: str) -> float | None:
        return self.entries.get(key)

    def put(self, key: str, seconds: float) -> None:
        self.entries[key] = seconds
        self._new[key] = seconds

    def _read(self) -> dict[str, float]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            warnings.warn(f"tuning cache {str(self.path)!r} is unreadable ({exc}); ignoring it", stacklevel=3)
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
            found = data.get("version") if isinstance(data, dict) else type(data).__name__
            warnings.warn(
                f"tuning cache {str(self.path)!r} has version {found!r}, expected {CACHE_VERSION}; ignoring it",
                stacklevel=3,
            )
            return {}
        current = f"{kernels_digest()}|"
        return {k: float(v) for k, v in data["entries"].items() if k.startswith(current) and isinstance(v, (int, float))}

    def save(self) -> None:
        """Merge new entries into the file atomically; failures only warn."""
        if not self._new:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = {**self._read_quietly(), **self._new}
            fd, tmp = tempfile.mkstemp(prefix=".tuning.", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump({"version": CACHE_VERSION, "entries": merged}, f)
            os.replace(tmp, self.path)
            self._new.clear()
        except OSError as exc:
            warnings.warn(f"could not write tuning cache {str(self.path)!r}: {exc}", stacklevel=2)

    def _read_quietly(self) -> dict[str, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._read()
