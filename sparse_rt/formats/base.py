"""The contract every weight format follows, and the registry of formats.

A weight format holds a linear layer's weight W of shape [out_features, in_features]
losslessly (only exact zeros are dropped). It knows how to rebuild the dense
weight, how many bytes it occupies and how many FLOPs one input row costs, and how
to turn itself into named arrays plus scalar attributes for the ONNX file.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

import numpy as np
import torch

FormatT = TypeVar("FormatT", bound="WeightFormat")

FORMATS: dict[str, type["WeightFormat"]] = {}


def register_format(cls: type[FormatT]) -> type[FormatT]:
    """Class decorator: make a format findable by its `name`."""
    if cls.name in FORMATS:
        raise ValueError(f"weight format {cls.name!r} is already registered")
    FORMATS[cls.name] = cls
    return cls


def get_format(name: str) -> type["WeightFormat"]:
    """The format class called `name`; the error lists the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown weight format {name!r}; known: {sorted(FORMATS)}") from None


class WeightFormat:
    """Base class of the weight formats (each a dataclass of torch tensors).

    Subclasses set `name` and implement every method below. `shape` is
    (out_features, in_features) of the dense weight the format stands for.
    """

    name: ClassVar[str]
    shape: tuple[int, int]  # a dataclass field or a property of the subclass

    @classmethod
    def from_dense(cls: type[FormatT], weight: torch.Tensor, **params) -> FormatT:
        """Build from a dense [out, in] weight; raises ValueError if it does not fit."""
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        """The dense [out, in] float weight this format stands for."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays the format holds."""
        return sum(t.numel() * t.element_size() for t in self.arrays().values())

    @property
    def flops_per_row(self) -> int:
        """Multiply-adds times two for one input row (one token)."""
        raise NotImplementedError

    def arrays(self) -> dict[str, torch.Tensor]:
        """The format's tensors by field name (stored as ONNX initializers)."""
        raise NotImplementedError

    def attributes(self) -> dict[str, int | list[int]]:
        """The format's scalar parameters (stored as ONNX node attributes)."""
        raise NotImplementedError

    @classmethod
    def from_arrays(
        cls: type[FormatT], arrays: dict[str, torch.Tensor], attributes: dict[str, int | list[int]]
    ) -> FormatT:
        """Inverse of (arrays(), attributes()); validates like the constructor."""
        raise NotImplementedError


def padded_mask(nonzero: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """A 0/1 (bool, uint8 or float) [out, in] mask as uint8 [rows, columns] (rows >= out,
    columns >= in), zero in the padding; a uint8 mask of that shape is used in place."""
    if nonzero.dtype == torch.uint8 and tuple(nonzero.shape) == (rows, columns):
        return nonzero.contiguous()
    padded = torch.zeros(rows, columns, dtype=torch.uint8)
    padded[: nonzero.shape[0], : nonzero.shape[1]] = nonzero != 0
    return padded


def as_dense_weight(weight: torch.Tensor | np.ndarray, what: str = "weight") -> torch.Tensor:
    """Check and return a 2-D floating [out, in] weight as a torch tensor."""
    if isinstance(weight, np.ndarray):
        weight = torch.from_numpy(weight)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor or numpy array, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"{what}: expected a 2-D [out, in] matrix, got shape {list(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"{what}: expected a floating dtype, got {weight.dtype}")
    return weight.detach()


def narrowest_index_dtype(max_value: int) -> torch.dtype:
    """The smallest signed integer dtype that holds 0..max_value."""
    for dtype in (torch.int8, torch.int16, torch.int32):
        if max_value <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64
