"""Zero-copy torch views of numpy arrays (graph constants, numpy inputs)."""

from __future__ import annotations

import warnings

import numpy as np
import torch


def tensor_view(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing `array`'s memory (copied only when not C-contiguous). Read-only
    arrays are shared too: no op writes its inputs or the graph's constants."""
    flags = array.flags
    if flags.c_contiguous and flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns about read-only arrays
        return torch.from_numpy(np.ascontiguousarray(array).reshape(array.shape))
