"""Experiments reproducing the research behind sparse_rt's training side.

`python -m sparse_rt.experiments NAME [--quick] [--out DIR]` runs one of
EXPERIMENTS and writes its table (CSV/JSON) and plot (PNG) under DIR
(benchmarks/results by default). --quick shrinks every sweep to a few seconds
(a smoke run, not a result). They need scikit-learn (the digits data), scipy
and matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from sparse_rt.experiments import methods, permuted, topologies

EXPERIMENTS: dict[str, Callable[[Path, bool], dict[str, Path]]] = {
    "topologies": topologies.run,
    "permuted": permuted.run,
    "methods": methods.run,
}
