"""Token generation with a decoder's KV cache: `Generator(model, context).generate(ids, n)`.

The model is a decoder exported with past/present key values (`converters.decoder`).
A generation preallocates, per layer, key and value buffers [batch, kv_heads,
prompt + new tokens, head_dim]; every call feeds the pasts as views `buffer[:, :, :past]`
and the plan's cache Concat nodes (past ++ new along the sequence axis) are replaced by
`AppendToCache`, which writes the new positions into the buffer behind the view and
returns the longer view. No step copies the cache: a token costs the new positions
only, not a concatenation of the whole past per layer.

Step 1 (prefill) runs the whole prompt with empty pasts; each later step runs one token
per sequence. Tokens are chosen greedily (argmax, the first on ties) or sampled
(temperature, top-k, top-p) from a generator seeded by `seed`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from sparse_rt.converters.decoder import DecoderLayout, decoder_layout
from sparse_rt.ir.graph import Graph

_SEQUENCE_AXES = (2, -2)


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. do_sample False: argmax. Otherwise softmax of
    logits / temperature over the top_k tokens (0: all) and the smallest set of them
    whose probability reaches top_p, drawn with a generator seeded by `seed`."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected a positive number, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k: expected 0 (all tokens) or a positive integer, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a fraction in (0, 1], got {self.top_p}")


class AppendToCache:
    """Concat(past, new) along the sequence axis of [batch, heads, positions, head_dim]
    tensors. When `past` is a prefix view `buffer[:, :, :P]` of a contiguous buffer with room for
    the new positions, they are written into the buffer and the view
    `buffer[:, :, :P + S]` is returned; otherwise it concatenates. One input: returned as is."""

    def __call__(self, past: torch.Tensor, new: torch.Tensor | None = None) -> torch.Tensor:
        if new is None:
            return past
        length, extra = past.shape[2], new.shape[2]
        base = _buffer_behind(past)
        if base is None or base.shape[2] < length + extra:
            return torch.cat((past, new), dim=2)
        base[:, :, length:length + extra].copy_(new)
        return base[:, :, :length + extra]


def _buffer_behind(past: torch.Tensor) -> torch.Tensor | None:
    """The contiguous [batch, heads, capacity, head_dim] buffer that `past` is the prefix
    view `buffer[:, :, :P]` of (starting its storage), or None."""
    if past.dim() != 4 or past.storage_offset() != 0:
        return None
    batch, heads, _, head_dim = past.shape
    stride = past.stride()
    if stride[3] != 1 or stride[2] != head_dim or stride[1] % head_dim or stride[0] != heads * stride[1]:
        return None
    capacity = stride[1] // head_dim
    if past.untyped_storage().nbytes() < batch * stride[0] * past.element_size():
        return None
    return past.as_strided((batch, heads, capacity, head_dim), stride, 0)


def cache_appends(graph: Graph, layout: DecoderLayout) -> set[str]:
    """Outputs of the graph's Concat nodes that grow the cache: (past ++ new) -> present,
    and single-input Concats of a past (the exporter's first cache update)."""
    pasts = {name for pair in layout.past for name in pair}
    presents = {name for pair in layout.present for name in pair}
    found = set()
    for node in graph.nodes:
        if node.op_type != "Concat" or node.attributes.get("axis") not in _SEQUENCE_AXES:
            continue
        inputs = [name for name in node.inputs if name]
        if (len(inputs) == 2 and node.outputs[0] in presents) or (len(inputs) == 1 and inputs[0] in pasts):
            found.add(node.outputs[0])
    return found


def _append_in_place(appends: set[str]) -> Callable[[list], list]:
    def rewrite(steps: list) -> list:
        return [dataclasses.replace(step, fn=AppendToCache())
                if len(step.outputs) == 1 and step.outputs[0] in appends else step for step in steps]
    return rewrite


class Generator:
    """Generate tokens with a decoder: `Generator(model, context, device="cpu", threads=None)`.

    model: a Graph, a sparse_rt or plain ONNX file (path or bytes), or an
    InferenceSession of one. context: the most positions (prompt + new tokens) a
    sequence may hold, the model's position limit."""

    def __init__(self, model: Any, context: int, device: str | torch.device = "cpu", threads: int | None = None):
        from sparse_rt.runtime.session import InferenceSession

        if not isinstance(context, int) or context < 1:
            raise ValueError(f"context: expected a positive integer, got {context!r}")
        session = model if isinstance(model, InferenceSession) else InferenceSession(model, device, threads)
        self.layout = decoder_layout(session.graph)
        if self.layout.kv_heads is None or self.layout.head_dim is None:
            raise ValueError(f"input {self.layout.past[0][0]!r}: expected fixed kv_heads and head_dim to "
                             f"preallocate the cache, got {session.graph.value(self.layout.past[0][0]).describe()}")
        self.context = context
        self.appends = cache_appends(session.graph, self.layout)
        # every step has a new input shape (one more past position): keep the shape values
        # of every past length and prompt length a sequence can have, so that later
        # generations reuse them instead of recomputing them at every step
        self.session = session.replan(_append_in_place(self.appends), shape_cache_entries=2 * context + 2)

    def generate(self, input_ids: Any, max_new_tokens: int, **sampling: Any) -> np.ndarray:
        """Prompt [batch, prompt] (or [prompt]) token ids -> [batch, prompt + max_new_tokens]
        int64. sampling: do_sample, temperature, top_k, top_p, seed (see `Sampling`),
        eos_token_id (a finished sequence is padded with it)."""
        prompt = check_prompt(input_ids, max_new_tokens, self.context, self.layout)
        new = list(self.stream(prompt, max_new_tokens, **sampling))
        return np.concatenate([prompt] + [t[:, None] for t in new], axis=1) if new else prompt

    def stream(self, input_ids: Any, max_new_tokens: int, *, eos_token_id: int | None = None,
               **sampling: Any) -> Iterator[np.ndarray]:
        """An iterator over the next token of every sequence, [batch] int64, one step at a
        time; it stops early once every sequence has produced `eos_token_id`. The prompt
        and the sampling settings are checked here, before the first step."""
        prompt = check_prompt(input_ids, max_new_tokens, self.context, self.layout)
        return self._steps(prompt, max_new_tokens, TokenChooser(Sampling(**sampling)), eos_token_id)

    def _steps(self, prompt: np.ndarray, max_new_tokens: int, choose: "TokenChooser",
               eos_token_id: int | None) -> Iterator[np.ndarray]:
        batch, length = prompt.shape
        capacity = length + max_new_tokens
        layout = self.layout
        ids_dtype = getattr(torch, layout.ids_dtype)
        with torch.inference_mode():
            buffers = [torch.empty(batch, layout.kv_heads, capacity, layout.head_dim,
                                   dtype=getattr(torch, layout.dtype), device=self.session.device)
                       for _ in range(2 * layout.layers)]
        pasts = [buffer[:, :, :0] for buffer in buffers]
        mask = torch.ones(batch, capacity, dtype=torch.int64)
        positions = torch.arange(capacity, dtype=torch.int64)[None].expand(batch, capacity)
        tokens = torch.from_numpy(prompt).to(ids_dtype)
        done = torch.zeros(batch, dtype=torch.bool)
        past = 0
        for _ in range(max_new_tokens):
            step = tokens.shape[1]
            feed = {layout.input_ids: tokens}
            if layout.attention_mask:
                feed[layout.attention_mask] = mask[:, :past + step]
            if layout.position_ids:
                feed[layout.position_ids] = positions[:, past:past + step].contiguous()
            for (key, value), index in zip(layout.past, range(0, 2 * layout.layers, 2)):
                feed[key], feed[value] = pasts[index], pasts[index + 1]
            outputs = self.session.run_views(feed)
            pasts = [outputs[name] for pair in layout.present for name in pair]
            past += step
            with torch.inference_mode():
                chosen = choose(outputs[layout.logits][:, -1, :])
                if eos_token_id is not None:
                    chosen = torch.where(done, torch.tensor(eos_token_id), chosen)
                    done |= chosen == eos_token_id
            yield chosen.numpy().astype(np.int64)
            if eos_token_id is not None and bool(done.all()):
                return
            tokens = chosen[:, None].to(ids_dtype)


class TokenChooser:
    """logits [batch, vocab] -> token ids [batch] int64, as `sampling` says."""

    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self.generator = None
        if sampling.do_sample:
            self.generator = torch.Generator()
            if sampling.seed is not None:
                self.generator.manual_seed(sampling.seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if not self.sampling.do_sample:
            return torch.argmax(logits, dim=-1)
        logits = logits / self.sampling.temperature
        if self.sampling.top_k:
            kth = torch.topk(logits, min(self.sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.sampling.top_p < 1:
            ordered, order = torch.sort(logits, dim=-1, descending=True)
            cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
            drop = cumulative - torch.softmax(ordered, dim=-1) >= self.sampling.top_p  # mass before this token
            logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        probabilities = torch.softmax(logits, dim=-1)
        return torch.multinomial(probabilities, 1, generator=self.generator)[:, 0]


def check_prompt(input_ids: Any, max_new_tokens: int, context: int, layout: DecoderLayout) -> np.ndarray:
    """The prompt as int64 [batch, prompt] after checking it; clear errors for an empty
    prompt, a wrong dtype or rank, ids outside the vocabulary and a prompt plus new
    tokens longer than the context."""
    if isinstance(input_ids, torch.Tensor):
        input_ids = input_ids.detach().cpu().numpy()
    array = np.asarray(input_ids)
    if array.dtype.kind not in "iu" or array.dtype.itemsize > 8:
        raise TypeError(f"input_ids: expected integer token ids (int64 or int32) [batch, prompt], "
                        f"got {array.dtype.name} {list(array.shape)}")
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2:
        raise ValueError(f"input_ids: expected [batch, prompt] or [prompt], got rank {array.ndim} {list(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"input_ids: expected a non-empty prompt [batch >= 1, prompt >= 1], got {list(array.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
    if array.shape[1] + max_new_tokens > context:
        raise ValueError(f"input_ids: a prompt of {array.shape[1]} tokens plus max_new_tokens={max_new_tokens} "
                         f"exceeds the context of {context} positions")
    low, high = int(array.min()), int(array.max())
    if low < 0 or (layout.vocab is not None and high >= layout.vocab):
        raise ValueError(f"input_ids: expected token ids in [0, {layout.vocab}), got values in [{low}, {high}]")
    return np.ascontiguousarray(array, dtype=np.int64)


def greedy_with_session(session: Any, layout: DecoderLayout, input_ids: np.ndarray,
                        max_new_tokens: int) -> np.ndarray:
    """Greedy tokens from any session with onnxruntime's `run(output_names, feed)`, with a
    plain concatenating cache loop (how onnxruntime is driven; the reference for tests
    and the bench): [batch, prompt] -> [batch, prompt + max_new_tokens]."""
    new = list(greedy_stream_with_session(session, layout, input_ids, max_new_tokens))
    return np.concatenate([input_ids] + [token[:, None] for token in new], axis=1)


def greedy_stream_with_session(session: Any, layout: DecoderLayout, input_ids: np.ndarray,
                               max_new_tokens: int) -> Iterator[np.ndarray]:
    """`greedy_with_session` one step at a time: yields the next tokens [batch] int64."""
    batch, _ = input_ids.shape
    kv_dtype = np.dtype(layout.dtype)
    pasts = [np.zeros((batch, layout.kv_heads, 0, layout.head_dim), kv_dtype) for _ in range(2 * layout.layers)]
    tokens, past = input_ids.astype(layout.ids_dtype), 0
    names = [layout.logits] + [name for pair in layout.present for name in pair]
    for _ in range(max_new_tokens):
        step = tokens.shape[1]
        feed = {layout.input_ids: tokens}
        if layout.attention_mask:
            feed[layout.attention_mask] = np.ones((batch, past + step), np.int64)
        if layout.position_ids:
            feed[layout.position_ids] = np.tile(np.arange(past, past + step, dtype=np.int64), (batch, 1))
        for index, (key, value) in enumerate(layout.past):
            feed[key], feed[value] = pasts[2 * index], pasts[2 * index + 1]
        logits, *pasts = session.run(names, feed)
        past += step
        chosen = np.argmax(logits[:, -1, :], axis=-1).astype(np.int64)
        yield chosen
        tokens = chosen[:, None].astype(layout.ids_dtype)


def load_layout(model: str | os.PathLike | bytes | Graph) -> DecoderLayout:
    """The decoder layout of an ONNX file or Graph (for engines other than sparse_rt)."""
    from sparse_rt.converters.onnx import import_onnx

    return decoder_layout(model if isinstance(model, Graph) else import_onnx(model))
