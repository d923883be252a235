"""The Open Inference Protocol generate extension over token ids, for decoder models.

    POST /v2/models/{name}[/versions/1]/generate          one JSON answer
    POST /v2/models/{name}[/versions/1]/generate_stream   server-sent events, one per token

Request (JSON; the models carry no tokenizer, so prompts are token ids):

    {"input_ids": [int, ...] or [[int, ...], ...] (batch of equal-length prompts),
     "parameters"?: {"max_tokens" | "max_new_tokens": int (default 16), "do_sample": bool,
                     "temperature": float, "top_k": int, "top_p": float, "seed": int,
                     "eos_token_id": int}}

`generate` answers {"model_name", "model_version", "output_ids": [[int, ...]]} (the new
tokens per sequence); `generate_stream` sends `data: {"model_name", "model_version",
"index": i, "output_ids": [int per sequence]}` per step, then a last event with
"finish_reason" ("length" or "stop"). Errors before the first token answer
{"error": ...} with 400 (bad request) or 404; an error mid-stream is sent as an event
{"error": ...}. Generation runs on worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Iterator

import numpy as np

from sparse_rt.serve.protocol import RequestError

DEFAULT_MAX_TOKENS = 16
_SAMPLING_KEYS = {"do_sample": bool, "temperature": (int, float), "top_k": int, "top_p": (int, float),
                  "seed": int, "eos_token_id": int}
_DONE = object()


def parse_generate_request(body: bytes) -> tuple[np.ndarray, int, dict[str, Any]]:
    """(prompt int64 [batch, prompt], max new tokens, sampling keywords) of a request body;
    RequestError naming the field, what was expected and what was found."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"request body: expected JSON, got a parse error: {exc}") from None
    if not isinstance(request, dict):
        raise RequestError(f"request body: expected a JSON object, got {type(request).__name__}")
    if "input_ids" not in request:
        raise RequestError(f"request: expected 'input_ids' (token ids), got fields {sorted(request)}")
    ids = request["input_ids"]
    if not isinstance(ids, list) or not ids:
        raise RequestError(f"input_ids: expected a non-empty list of token ids, got {json.dumps(ids)[:80]}")
    rows = ids if isinstance(ids[0], list) else [ids]
    if any(not isinstance(row, list) or not row or len(row) != len(rows[0]) for row in rows):
        raise RequestError("input_ids: expected non-empty prompts of equal length")
    if any(isinstance(t, bool) or not isinstance(t, int) for row in rows for t in row):
        raise RequestError("input_ids: expected integer token ids")
    parameters = request.get("parameters", {})
    if not isinstance(parameters, dict):
        raise RequestError(f"parameters: expected a JSON object, got {type(parameters).__name__}")
    max_tokens = parameters.get("max_tokens", parameters.get("max_new_tokens", DEFAULT_MAX_TOKENS))
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(f"parameters.max_tokens: expected a positive integer, got {max_tokens!r}")
    sampling = {}
    for key, kinds in _SAMPLING_KEYS.items():
        if key in parameters:
            value = parameters[key]
            if (isinstance(value, bool) and kinds is not bool) or not isinstance(value, kinds):
                raise RequestError(f"parameters.{key}: expected {getattr(kinds, '__name__', 'a number')}, "
                                   f"got {value!r}")
            sampling[key] = value
    return np.asarray(rows, dtype=np.int64), max_tokens, sampling


class GenerateEndpoints:
    """Generation for the served decoders: {model name: runtime.generate.Generator}."""

    def __init__(self, generators: dict[str, Any], workers: int = 1):
        self.generators = generators
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sparse_rt-generate")

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def check(self, name: str, prompt: np.ndarray, max_tokens: int, sampling: dict[str, Any]) -> None:
        """The Generator's own checks, before any work: RequestError 400 on bad input."""
        from sparse_rt.runtime.generate import Sampling, check_prompt

        generator = self.generators[name]
        try:
            check_prompt(prompt, max_tokens, generator.context, generator.layout)
            Sampling(**{k: v for k, v in sampling.items() if k != "eos_token_id"})
        except (ValueError, TypeError) as exc:
            raise RequestError(f"model {name!r}: {exc}") from None

    async def generate(self, name: str, prompt: np.ndarray, max_tokens: int, sampling: dict[str, Any]) -> np.ndarray:
        """The new tokens [batch, steps], generated on a worker thread."""
        generator = self.generators[name]
        loop = asyncio.get_running_loop()
        tokens = await loop.run_in_executor(
            self.executor, lambda: list(generator.stream(prompt, max_tokens, **sampling)))
        return np.stack(tokens, axis=1)

    async def stream(self, name: str, prompt: np.ndarray, max_tokens: int,
                     sampling: dict[str, Any]) -> AsyncIterator[np.ndarray]:
        """The tokens of each step [batch] as they come from a worker thread; an exception
        there is raised here. Stops the worker when the consumer goes away."""
        generator = self.generators[name]
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def produce() -> None:
            try:
                steps: Iterator[np.ndarray] = generator.stream(prompt, max_tokens, **sampling)
                for tokens in steps:
                    if cancelled.is_set():
                        return
                    loop.call_soon_threadsafe(queue.put_nowait, tokens)
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            except Exception as exc:  # handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        self.executor.submit(produce)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancelled.set()


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload)}\n\n".encode()
