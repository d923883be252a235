"""Int8 candidates for a layer, and the output error they cost against fp32.

With `convert(..., quantize="int8")` (or a model that arrived quantized) each layer's
weight is also offered as int8 formats (int8 CSR, int8 BSR with 1x4 blocks, int8 dense),
rounded to nearest (or by GPTQ against the layer's inputs on calibration feeds); where the
conversion was given calibration feeds, the bias is corrected for the rounding's mean
output error on them (`scheduler.rounding`). Before they are timed, the int8 kernel runs
once on the layer's calibration inputs (seeded Gaussian tokens without them) and its output
is compared with the fp32 product x @ W.T + b: the relative error max |y_int8 - y| / max |y|. Above `tolerance`
the layer stays fp32 and the report says why; otherwise the int8 candidates race the
fp32 ones and the fastest wins. The verdict travels with the choice (`Precision`) and
is saved in the node's `quantization` attribute, which `explain` prints.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

from sparse_rt.formats.base import WeightFormat
from sparse_rt.formats.bsr_int8 import BsrInt8Format, quads_of
from sparse_rt.formats.csr_int8 import CsrInt8Format
from sparse_rt.formats.dense_int8 import DenseInt8Format
from sparse_rt.formats.int8 import quantize_per_channel
from sparse_rt.kernels.registry import kernels_for
from sparse_rt.scheduler.rounding import corrected_bias, gptq_round

QUANTIZE_MODES = (None, "int8")
# How int8 weights are rounded: to nearest, or by GPTQ against the calibration inputs.
ROUNDINGS = ("nearest", "gptq")
# Default bound on a layer's relative output error (int8 vs fp32, on the tuning input).
# Random Gaussian inputs give about 1% (0.96-1.06% on BERT-base's layers, dense or 10%);
# a layer with a few huge weights or activation outliers exceeds 5% and stays fp32.
DEFAULT_TOLERANCE = 0.05
# Int8 CSR is a candidate up to this density (int8 dense always is); int8 BSR up to this
# share of its 1x4 blocks holding a nonzero (about 0.34 for 90% unstructured).
INT8_CSR_MAX_DENSITY = 0.5
INT8_BSR_MAX_BLOCK_DENSITY = 0.5
# Tokens the error is measured on, when the tuning input has fewer.
ERROR_ROWS = 64


@dataclass(frozen=True)
class Precision:
    """A layer's precision verdict: `precision` "int8" or "fp32"; `error` the measured relative
    output error of int8 against fp32 (None when not measured); `reason` for fp32."""

    precision: str
    error: float | None
    tolerance: float
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Precision:
        return cls(**json.loads(text))

    def describe(self) -> str:
        error = "" if self.error is None else f", int8 error {self.error:.2%}"
        return f"{self.precision}{error}" + (f" ({self.reason})" if self.reason else "")


def check_quantize(quantize: str | None, tolerance: float, rounding: str = "nearest") -> None:
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize: expected one of {QUANTIZE_MODES}, got {quantize!r}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding: expected one of {ROUNDINGS}, got {rounding!r}")
    if not 0.0 < tolerance:
        raise ValueError(f"quantization tolerance: expected a positive relative error, got {tolerance!r}")


def int8_formats(weight: torch.Tensor, calibration: torch.Tensor | None = None) -> list[WeightFormat]:
    """The int8 formats worth trying for a float [out, in] weight (int8 dense first), its values
    rounded to nearest, or by GPTQ against the layer's calibration inputs [rows, in]."""
    q, scales = quantize_per_channel(weight) if calibration is None else gptq_round(weight, calibration)
    formats: list[WeightFormat] = [DenseInt8Format(weight=q, scales=scales)]
    density = float((weight != 0).float().mean()) if weight.numel() else 0.0
    if density <= INT8_CSR_MAX_DENSITY:
        formats.append(CsrInt8Format.from_quantized(q, scales))
        bsr = BsrInt8Format.from_quantized(q, scales)
        if bsr.blocks <= INT8_BSR_MAX_BLOCK_DENSITY * weight.shape[0] * quads_of(weight.shape[1]):
            formats.append(bsr)
    return formats


def int8_error(fmt: WeightFormat, weight: torch.Tensor, bias: torch.Tensor | None, device: torch.device,
               x: torch.Tensor, int8_bias: torch.Tensor | None = None) -> float:
    """Relative error max |y_int8 - y| / max |y| of fmt's default kernel (bias `int8_bias`,
    default `bias`) on x [rows, in] against the fp32 x @ W.T + b (inf when the int8 output is
    not finite)."""
    kernel = kernels_for(fmt, device)[0]
    bound = kernel.bind(fmt, bias if int8_bias is None else int8_bias, kernel.configs(fmt, device)[0], device)
    with torch.inference_mode():
        actual = bound(x.to(device)).to(torch.float64)
        expected = torch.nn.functional.linear(x.to(torch.float64), weight.to(torch.float64),
                                              None if bias is None else bias.to(torch.float64))
    if not bool(torch.isfinite(actual).all()):
        return float("inf")
    scale = max(float(expected.abs().max()) if expected.numel() else 0.0, 1e-30)
    return float((actual.cpu() - expected).abs().max()) / scale if expected.numel() else 0.0


def error_input(in_features: int, calibration: torch.Tensor | None = None, rows: int = ERROR_ROWS) -> torch.Tensor:
    """The tokens [rows, in] the error is measured on: `rows` of the layer's calibration inputs,
    evenly spaced, or seeded Gaussian tokens without them."""
    if calibration is not None and calibration.shape[0]:
        picks = torch.linspace(0, calibration.shape[0] - 1, min(rows, calibration.shape[0])).round().long()
        return calibration[picks].to(torch.float32)
    return torch.randn(rows, in_features, generator=torch.Generator().manual_seed(1234))


@dataclass(frozen=True)
class Int8Candidates:
    """A layer's int8 offer: `formats` that run on the device and pass the tolerance (empty when
    none does), `staying` the verdict should fp32 stay, `corrected_bias` [out] the bias the int8
    formats run with in place of the layer's (None without calibration inputs)."""

    formats: list[WeightFormat]
    staying: Precision
    corrected_bias: torch.Tensor | None = None

    def bias_for(self, fmt: WeightFormat, layer_bias: torch.Tensor | None) -> torch.Tensor | None:
        """The bias `fmt` runs with: the corrected one for an int8 format where there is one."""
        return self.corrected_bias if self.corrected_bias is not None and is_int8(fmt) else layer_bias

    def choice_bias(self, fmt: WeightFormat) -> np.ndarray | None:
        """`Choice.bias` for a layer that chose `fmt`: float32 [out], or None for the layer's own."""
        return None if self.corrected_bias is None or not is_int8(fmt) else self.corrected_bias.numpy()


def int8_candidates(weight: torch.Tensor, bias: torch.Tensor | None, device: torch.device,
                    tolerance: float, calibration: torch.Tensor | None = None,
                    rounding: str = "nearest") -> Int8Candidates:
    """The int8 formats of a float [out, in] weight, bias [out] or None; calibration: the
    layer's inputs [rows, in], to correct the bias by (`scheduler.rounding.corrected_bias`)
    and, with rounding="gptq", to round the weight against (`int8_formats`).

    The verdict `staying` is "fp32 (int8 error e > tolerance)" when int8 was too inaccurate,
    "fp32 (faster)" when int8 passed but loses the race."""
    gptq_inputs = calibration if rounding == "gptq" else None
    formats = [f for f in int8_formats(weight, gptq_inputs) if kernels_for(f, device)]
    if not formats:
        return Int8Candidates([], Precision("fp32", None, tolerance, f"no int8 kernel on {device}"))
    corrected = None if calibration is None else corrected_bias(weight, formats[0].to_dense(), bias, calibration)
    error = int8_error(formats[0], weight, bias, device, error_input(weight.shape[1], calibration), corrected)
    if not error <= tolerance:
        return Int8Candidates([], Precision("fp32", error, tolerance, f"int8 error above the tolerance {tolerance:.2%}"))
    return Int8Candidates(formats, Precision("fp32", error, tolerance, "fp32 was faster"), corrected)


def is_int8(fmt: WeightFormat) -> bool:
    return fmt.name.endswith("_int8")


def verdict(chosen: WeightFormat, staying: Precision) -> Precision:
    """The layer's precision once `chosen` won: int8 formats take the measured error."""
    if is_int8(chosen):
        return Precision("int8", staying.error, staying.tolerance)
    return staying


# Without timing, int8 CSR below this density, int8 dense above (as the fp32 heuristic's rule);
# below it, int8 BSR where the 1x4 blocks are at least this full (a block-pruned weight).
HEURISTIC_CSR_MAX_DENSITY = 0.3
HEURISTIC_BSR_MIN_FILL = 0.75


def heuristic_int8(weight: torch.Tensor, bias: torch.Tensor | None, device: torch.device, tolerance: float,
                   fp32: tuple[WeightFormat, str, dict], calibration: torch.Tensor | None = None,
                   rounding: str = "nearest") -> tuple[tuple[WeightFormat, str, dict], Precision, np.ndarray | None]:
    """Timing-free: ((format, kernel, config), verdict, `Choice.bias`), int8 when within
    `tolerance`, else `fp32` with the layer's own bias (None)."""
    offer = int8_candidates(weight, bias, device, tolerance, calibration, rounding)
    if not offer.formats:
        return fp32, offer.staying, None
    density = float((weight != 0).float().mean()) if weight.numel() else 0.0
    by_name = {f.name: f for f in offer.formats}
    fmt = None
    if density <= HEURISTIC_CSR_MAX_DENSITY:
        csr, bsr = by_name.get("csr_int8"), by_name.get("bsr_int8")
        blocks_full = csr is not None and bsr is not None and csr.nnz >= HEURISTIC_BSR_MIN_FILL * 4 * max(bsr.blocks, 1)
        fmt = bsr if blocks_full else csr
    fmt = fmt or by_name["dense_int8"]
    kernel = kernels_for(fmt, device)[0]
    return (fmt, kernel.name, kernel.configs(fmt, device)[0]), verdict(fmt, offer.staying), offer.choice_bias(fmt)
