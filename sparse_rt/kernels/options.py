"""Kernel options as frozen dataclasses, their JSON config form, and tuning spaces over them.

Shared by the CPU and Triton backends: a config (what the scheduler times and the
saved model records) is `asdict(options)`; `parse_options` turns it back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, fields
from typing import TypeVar

from sparse_rt.kernels.registry import Config

OptionsT = TypeVar("OptionsT")


def parse_options(cls: type[OptionsT], config: Config) -> OptionsT:
    """The options a config dict stands for (fields with a default may be left out: configs
    saved before the field existed); ValueError names missing and unknown keys."""
    expected = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    if not required <= set(config) <= expected:
        raise ValueError(f"{cls.__name__}: expected config keys {sorted(expected)}, got {sorted(config)}")
    return cls(**config)


def config_space(default: OptionsT, axes: dict[str, Iterable],
                 keep: Callable[[OptionsT], bool] = lambda o: True) -> list[Config]:
    """[default] + every point of the product of `axes` (other fields from `default`) that `keep` accepts."""
    configs = [asdict(default)]
    base = asdict(default)
    for values in itertools.product(*axes.values()):
        candidate = type(default)(**{**base, **dict(zip(axes, values))})
        config = asdict(candidate)
        if keep(candidate) and config not in configs:
            configs.append(config)
    return configs
