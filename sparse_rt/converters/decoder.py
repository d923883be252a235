"""Recognise a generative decoder exported with a KV cache (see `sparse_rt.decoders`).

The layout is the one `optimum` and `torch.onnx.export` of transformers models give:
inputs `input_ids` [batch, sequence] (integer), optionally `attention_mask`
[batch, past + sequence] and `position_ids` [batch, sequence], and per layer i
`past_key_values.{i}.key` / `.value` [batch, kv_heads, past, head_dim]; outputs
`logits` [batch, sequence, vocab] and `present.{i}.key` / `.value`
[batch, kv_heads, past + sequence, head_dim]. Anything else is an unknown layout,
reported with what was expected and what was found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sparse_rt.ir.graph import Graph, Value

_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_PRESENT = re.compile(r"present\.(\d+)\.(key|value)")
OPTIONAL_INPUTS = ("attention_mask", "position_ids")


@dataclass(frozen=True)
class DecoderLayout:
    """Names and sizes of a decoder graph's cache interface.

    past[i] / present[i]: (key name, value name) of layer i. kv_heads, head_dim: the
    cache's fixed dims (None where the graph does not say). vocab: the logits' last dim."""

    input_ids: str
    attention_mask: str | None
    position_ids: str | None
    logits: str
    past: tuple[tuple[str, str], ...]
    present: tuple[tuple[str, str], ...]
    kv_heads: int | None
    head_dim: int | None
    vocab: int | None
    dtype: str
    ids_dtype: str

    @property
    def layers(self) -> int:
        return len(self.past)


def decoder_layout(graph: Graph) -> DecoderLayout:
    """The graph's decoder layout; ValueError naming what is missing or unexpected."""
    inputs = {v.name: v for v in graph.inputs}
    outputs = {v.name: v for v in graph.outputs}
    expected = ("expected inputs input_ids, [attention_mask, position_ids,] past_key_values.{i}.key/.value "
                "and outputs logits, present.{i}.key/.value")
    found = f"found inputs {list(inputs)} and outputs {list(outputs)}"
    past = _by_layer(inputs, _PAST)
    present = _by_layer(outputs, _PRESENT)
    unknown = [name for name in inputs if name != "input_ids" and name not in OPTIONAL_INPUTS
               and not _PAST.fullmatch(name)]
    if "input_ids" not in inputs or "logits" not in outputs or not past or unknown:
        raise ValueError(f"unknown model layout for generation: {expected}; {found}")
    if len(past) != len(present) or any(layer is None for layer in past + present):
        raise ValueError(f"unknown model layout for generation: every layer needs a past and a present key and "
                         f"value ({len(past)} past layers, {len(present)} present layers); {found}")
    key = inputs[past[0][0]]
    if key.shape is not None and len(key.shape) != 4:
        raise ValueError(f"input {key.name!r}: expected [batch, kv_heads, past, head_dim], got {key.describe()}")
    ids = inputs["input_ids"]
    if ids.dtype not in ("int64", "int32"):
        raise ValueError(f"input 'input_ids': expected int64 or int32 token ids, got {ids.describe()}")
    return DecoderLayout(
        input_ids="input_ids",
        attention_mask="attention_mask" if "attention_mask" in inputs else None,
        position_ids="position_ids" if "position_ids" in inputs else None,
        logits="logits",
        past=tuple(past),
        present=tuple(present),
        kv_heads=_fixed(key, 1),
        head_dim=_fixed(key, 3),
        vocab=_fixed(outputs["logits"], 2),
        dtype=key.dtype,
        ids_dtype=ids.dtype,
    )


def _by_layer(values: dict[str, Value], pattern: re.Pattern) -> list:
    """[(key name, value name)] by layer index; None where a layer misses one."""
    found: dict[int, dict[str, str]] = {}
    for name in values:
        match = pattern.fullmatch(name)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = name
    if not found:
        return []
    layers = []
    for i in range(max(found) + 1):
        pair = found.get(i, {})
        layers.append((pair["key"], pair["value"]) if len(pair) == 2 else None)
    return layers


def _fixed(value: Value, axis: int) -> int | None:
    if value.shape is None or len(value.shape) <= axis:
        return None
    dim = value.shape[axis]
    return dim if isinstance(dim, int) else None
