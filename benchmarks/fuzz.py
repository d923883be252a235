"""Long fuzzing run of the properties in tests/fuzz/cases.py: weight formats, CPU kernels, random
graphs against onnxruntime, mutated model files.

    python benchmarks/fuzz.py                              # 10 minutes over every property
    python benchmarks/fuzz.py --minutes 2 --properties kernels files --arches native x86-64

The time is split evenly over (property, CPU arch) pairs. Each pair runs in worker
processes (fresh hypothesis examples, no example database) so that a crash in native
code (segfault, abort) or a hang is caught and reported rather than ending the run:
before every case a worker saves it (pickled) beside its count, so the case that
crashed or hung is kept under --crash-dir. A property that fails (a wrong answer) is
reported with hypothesis' shrunk example. The table lists cases tried, failures,
crashes and hangs per pair; the exit code is 1 if there was any.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROUND_EXAMPLES = 50  # examples per hypothesis run inside a worker (a worker runs rounds until its time is up)
HANG_S = 120.0  # a worker this long past its time is hung


@dataclass
class PairResult:
    property: str
    arch: str
    seconds: float
    cases: int = 0
    failures: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from tests.fuzz.cases import PROPERTIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="total fuzzing time (default: %(default)s)")
    parser.add_argument("--properties", nargs="+", choices=sorted(PROPERTIES), default=list(PROPERTIES))
    parser.add_argument("--arches", nargs="+", default=["native", "x86-64"],
                        help="SPARSE_RT_CPU_ARCH values the kernels are built for ('native': -march=native)")
    parser.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"), help="where crashing cases are kept")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    return args


# -- worker ---------------------------------------------------------------------------------


def work(name: str, seconds: float, state: Path) -> dict:
    """Run property `name` in rounds of fresh examples for `seconds`; {"cases": n, "failures": [...]}.

    Before each case, `state` holds the count so far and the pickled case (what a crash leaves behind)."""
    from hypothesis import HealthCheck, given, settings

    from tests.fuzz.cases import PROPERTIES

    strategy, check = PROPERTIES[name]
    cases = 0
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    def counted(case) -> None:
        nonlocal cases
        if time.monotonic() > deadline:  # let the round end quickly
            return
        cases += 1
        try:
            payload = pickle.dumps(case)
        except Exception:  # an unpicklable case still leaves its count and repr
            payload = pickle.dumps(repr(case)[:10_000])
        state.write_bytes(cases.to_bytes(8, "little") + payload)
        check(case)

    run = settings(max_examples=ROUND_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                   print_blob=True)(given(strategy())(counted))
    while time.monotonic() < deadline and not failures:
        try:
            run()
        except Exception:
            failures.append(traceback.format_exc(limit=3)[-4000:])
    return {"cases": cases, "failures": failures}


# -- driver ---------------------------------------------------------------------------------


def run_pair(name: str, arch: str, seconds: float, crash_dir: Path) -> PairResult:
    """Fuzz one property under one CPU arch for `seconds`, restarting workers after a crash."""
    result = PairResult(name, arch, seconds)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if arch != "native":
        env["SPARSE_RT_CPU_ARCH"] = arch
    else:
        env.pop("SPARSE_RT_CPU_ARCH", None)
    end = time.monotonic() + seconds
    with tempfile.TemporaryDirectory() as workdir:
        state = Path(workdir) / "state"
        out = Path(workdir) / "out.json"
        while time.monotonic() < end - 1 and not result.failures:
            left = end - time.monotonic()
            state.write_bytes(b"")
            command = [sys.executable, __file__, "--worker", name, "--seconds", f"{left:.1f}", "--state", str(state),
                       "--json", str(out)]
            process = subprocess.Popen(command, cwd=REPO, env=env)
            try:
                code = process.wait(left + HANG_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                code = None
            if code == 0:
                outcome = json.loads(out.read_text())
                result.cases += outcome["cases"]
                result.failures += outcome["failures"]
                continue
            done, kept = keep_case(state, crash_dir, f"{name}-{arch}-{len(result.crashes) + len(result.hangs)}")
            result.cases += done
            what = "hang" if code is None else f"exit code {code}" + (
                f" ({signal.Signals(-code).name})" if code < 0 and -code in signal.valid_signals() else "")
            (result.hangs if code is None else result.crashes).append(f"{what}; case kept in {kept}")
    return result


def keep_case(state: Path, crash_dir: Path, stem: str) -> tuple[int, Path | None]:
    """(cases the worker tried, where its last case is kept) from a dead worker's state file."""
    data = state.read_bytes() if state.exists() else b""
    if len(data) < 8:
        return 0, None
    crash_dir.mkdir(parents=True, exist_ok=True)
    path = crash_dir / f"{stem}.pkl"
    path.write_bytes(data[8:])
    return int.from_bytes(data[:8], "little"), path


def format_table(results: list[PairResult]) -> str:
    lines = ["| property | arch | seconds | cases | failures | crashes | hangs |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.property} | {r.arch} | {r.seconds:.0f} | {r.cases} | {len(r.failures)} | "
                     f"{len(r.crashes)} | {len(r.hangs)} |")
    total = sum(r.cases for r in results)
    lines.append(f"| all | | {sum(r.seconds for r in results):.0f} | {total} | "
                 f"{sum(len(r.failures) for r in results)} | {sum(len(r.crashes) for r in results)} | "
                 f"{sum(len(r.hangs) for r in results)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    args = parse_args(argv)
    if args.worker:
        outcome = work(args.worker, args.seconds, args.state)
        args.json.write_text(json.dumps(outcome))
        return 0
    pairs = [(name, arch) for name in args.properties for arch in args.arches]
    seconds = args.minutes * 60 / len(pairs)
    results = []
    for name, arch in pairs:
        result = run_pair(name, arch, seconds, args.crash_dir)
        print(f"{name} ({arch}): {result.cases} cases, {len(result.failures)} failures, {len(result.crashes)} crashes, "
              f"{len(result.hangs)} hangs", flush=True)
        for line in result.failures + result.crashes + result.hangs:
            print(line, flush=True)
        results.append(result)
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps({"minutes": args.minutes, "results": [asdict(r) for r in results]}, indent=2))
    return 1 if any(r.failures or r.crashes or r.hangs for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
