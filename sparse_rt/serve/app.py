"""The HTTP app: Open Inference Protocol v2 endpoints over BatchingEngines, plus /metrics.

    GET  /v2                                  server metadata
    GET  /v2/health/live, /v2/health/ready    liveness, readiness (200 or 503)
    GET  /v2/models/{name}[/versions/1]       model metadata
    GET  /v2/models/{name}[/versions/1]/ready model readiness
    POST /v2/models/{name}[/versions/1]/infer inference (JSON or binary tensor data)
    POST /v2/repository/models/{name}/load    reload a model from its source while serving
    POST /v2/models/{name}[/versions/1]/generate, /generate_stream
                                              token generation (decoders; `serve.generation`)
    GET  /metrics                             Prometheus metrics

Every error answers {"error": "..."}: 400 bad request, 404 unknown model or path,
413 body over the limit, 415 compressed body, 503 shutting down, 504 timeout, 500 internal error.
A client that hangs up before its body is read gets nothing and is counted under status 499.
Model runs happen on the engines' worker threads, never on the event loop.

A reload builds the new session and engine off the event loop, swaps them in, then
drains the old engine: requests already queued finish on the old model, later ones
run on the new one, none is dropped. If the new model fails to load, the old one
keeps serving and the reload answers 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import sparse_rt
from sparse_rt.serve.batching import BatchingEngine, EngineClosedError, check_settings
from sparse_rt.serve.generation import GenerateEndpoints, parse_generate_request, sse_event
from sparse_rt.serve.metrics import UNKNOWN_MODEL, ServeMetrics
from sparse_rt.serve.protocol import (
    BINARY_HEADER,
    RequestError,
    check_inputs,
    datatype_of_onnx_type,
    decode_request,
    encode_response,
    metadata_shape,
)

logger = logging.getLogger(__name__)

MODEL_VERSION = "1"
CLIENT_CLOSED = 499
"""The metrics' status label of a request whose client disconnected before sending its whole body."""


@dataclass(frozen=True)
class ServeConfig:
    """Server limits and batching settings (max_batch 1 or max_delay_ms 0: no batching);
    context: positions (prompt + new tokens) a generated sequence may hold."""

    max_batch: int = 32
    max_delay_ms: float = 2.0
    workers: int = 1
    max_body_bytes: int = 64 << 20
    timeout_s: float = 30.0
    context: int = 1024

    def __post_init__(self) -> None:
        check_settings(self.max_batch, self.max_delay_ms, self.workers)
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes: expected a positive integer, got {self.max_body_bytes}")
        if self.context < 1:
            raise ValueError(f"context: expected a positive integer, got {self.context}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s: expected a positive number, got {self.timeout_s}")


@dataclass
class _Model:
    name: str
    engine: BatchingEngine
    inputs: list[Any]  # the session's NodeArgs
    metadata: dict[str, Any]


Loader = Callable[[], Any]
"""Builds a fresh session of a model (from its file), for reloads."""


class ModelServer:
    """The served models, their engines and metrics; `app` is the ASGI app serving them.

    loaders: {model name: () -> session} for the models that can be reloaded
    (POST /v2/repository/models/{name}/load); the others answer that route with 400.
    engine: what runs each model, called as BatchingEngine is (session, max_batch=,
    max_delay_ms=, workers=, on_batch=); it provides infer, output_names, queue_depth, close.
    """

    def __init__(
        self,
        sessions: Mapping[str, Any],
        config: ServeConfig = ServeConfig(),
        loaders: Mapping[str, Loader] | None = None,
        engine: Callable[..., Any] = BatchingEngine,
    ):
        if not sessions:
            raise ValueError("sessions: expected at least one model to serve, got none")
        unknown = sorted(set(loaders or {}) - set(sessions))
        if unknown:
            raise ValueError(f"loaders: expected loaders of served models {sorted(sessions)}, got ones for {unknown}")
        self.config = config
        self.metrics = ServeMetrics()
        self.loaders = dict(loaders or {})
        self._engine = engine
        self.models: dict[str, _Model] = {name: self._serve(name, session) for name, session in sessions.items()}
        self._reloading: dict[str, asyncio.Lock] = {}
        self.generation = GenerateEndpoints(_generators(sessions, config.context), workers=config.workers)
        self.ready = False
        self.app = Starlette(
            routes=self._routes(),
            exception_handlers={HTTPException: _http_error, Exception: _internal_error},
            lifespan=self._lifespan,
        )

    def _serve(self, name: str, session: Any) -> _Model:
        """A model entry with its own engine (metrics labelled `name`)."""
        config = self.config
        engine = self._engine(
            session, max_batch=config.max_batch, max_delay_ms=config.max_delay_ms,
            workers=config.workers, on_batch=self.metrics.batch_observer(name),
        )
        self.metrics.track_queue(name, engine)
        return _Model(name, engine, session.get_inputs(), _model_metadata(name, session))

    def engine(self, name: str) -> BatchingEngine:
        return self.models[name].engine

    async def reload(self, name: str) -> None:
        """Load `name` again from its loader and swap it in; the old engine drains.

        ValueError if no such model is served or it has no loader; what the loader raises
        propagates (and the old model keeps serving).
        """
        if name not in self.models:
            raise ValueError(f"unknown model {name!r}; served models: {sorted(self.models)}")
        loader = self.loaders.get(name)
        if loader is None:
            raise ValueError(f"model {name!r} was not loaded from a file, so it cannot be reloaded")
        loop = asyncio.get_running_loop()
        async with self._reloading.setdefault(name, asyncio.Lock()):
            fresh = await loop.run_in_executor(None, lambda: self._serve(name, loader()))
            old, self.models[name] = self.models[name], fresh
        await loop.run_in_executor(None, old.engine.close)

    def close(self) -> None:
        """Stop taking requests and finish the queued ones."""
        self.ready = False
        for model in self.models.values():
            model.engine.close(drain=True)
        self.generation.close()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.ready = True
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self.close)

    def _routes(self) -> list[Route]:
        routes = [
            Route("/v2", self._server_metadata),
            Route("/v2/health/live", self._live),
            Route("/v2/health/ready", self._ready),
            Route("/metrics", self._metrics),
            Route("/v2/repository/models/{model}/load", self._load, methods=["POST"]),
        ]
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [
                Route(prefix, self._model_metadata),
                Route(prefix + "/ready", self._model_ready),
                Route(prefix + "/infer", self._infer, methods=["POST"]),
                Route(prefix + "/generate", self._generate, methods=["POST"]),
                Route(prefix + "/generate_stream", self._generate_stream, methods=["POST"]),
            ]
        return routes

    # -- endpoints ---------------------------------------------------------------

    async def _server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "sparse_rt", "version": sparse_rt.__version__, "extensions": ["binary_tensor_data"]})

    async def _live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def _ready(self, request: Request) -> Response:
        return JSONResponse({"ready": self.ready}, status_code=200 if self.ready else 503)

    async def _metrics(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, headers={"content-type": content_type})

    async def _model_metadata(self, request: Request) -> Response:
        return JSONResponse(self._find(request).metadata)

    async def _model_ready(self, request: Request) -> Response:
        self._find(request)
        return JSONResponse({"ready": self.ready}, status_code=200 if self.ready else 503)

    async def _load(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name not in self.models:
            return _error(f"unknown model {name!r}; served models: {sorted(self.models)}", 404)
        if name not in self.loaders:
            return _error(f"model {name!r} was not loaded from a file, so it cannot be reloaded", 400)
        try:
            await self.reload(name)
        except Exception as exc:
            logger.exception("model %r: reload failed", name)
            return _error(f"model {name!r}: reload failed, the previous version keeps serving: "
                          f"{type(exc).__name__}: {exc}", 400)
        logger.info("model %r: reloaded", name)
        return JSONResponse({})

    async def _infer(self, request: Request) -> Response:
        start = time.perf_counter()
        label = request.path_params["model"] if request.path_params["model"] in self.models else UNKNOWN_MODEL
        try:
            model = self._find(request)
            response = await self._run(model, request)
        except RequestError as exc:
            response = _error(str(exc), exc.status)
        except ClientDisconnect:  # nobody is left to answer; counted under the status nginx logs for it
            response = Response(status_code=CLIENT_CLOSED)
        except HTTPException as exc:
            response = _error(str(exc.detail), exc.status_code)
        except Exception as exc:
            response = await _internal_error(request, exc)
        self.metrics.observe_request(label, response.status_code, time.perf_counter() - start)
        return response

    async def _run(self, model: _Model, request: Request) -> Response:
        encoding = request.headers.get("content-encoding", "identity")
        if encoding != "identity":
            raise RequestError(f"Content-Encoding: expected identity (uncompressed), got {encoding!r}", 415)
        body = await _read_body(request, self.config.max_body_bytes)
        decoded = decode_request(body, request.headers.get(BINARY_HEADER))
        check_inputs(decoded.inputs, model.inputs, model.name)
        if decoded.outputs is None:
            wanted = [(name, decoded.binary_output) for name in model.engine.output_names]
        else:
            wanted = [(output.name, output.binary) for output in decoded.outputs]
        timeout = min(self.config.timeout_s, decoded.timeout_s or self.config.timeout_s)
        try:
            results = await asyncio.wait_for(self._submit(model, decoded.inputs, [name for name, _ in wanted]), timeout)
        except asyncio.TimeoutError:
            return _error(f"model {model.name!r}: inference did not finish within {timeout:g} s", 504)
        except EngineClosedError:
            return _error(f"model {model.name!r}: the server is shutting down", 503)
        except (ValueError, TypeError) as exc:
            return _error(f"model {model.name!r}: {exc}", 400)
        except Exception as exc:
            logger.exception("model %r: inference failed", model.name)
            return _error(f"model {model.name!r}: inference failed: {type(exc).__name__}: {exc}", 500)
        body, headers = encode_response(
            model.name, decoded.id, [(name, results[name], binary) for name, binary in wanted]
        )
        return Response(body, headers=headers)

    async def _submit(self, model: _Model, inputs: dict[str, Any], outputs: list[str]) -> dict[str, Any]:
        """Run on the model's engine; if a reload closed it meanwhile, on the engine that replaced it."""
        while True:
            try:
                return await model.engine.infer(inputs, outputs)
            except EngineClosedError:
                current = self.models.get(model.name)
                if current is None or current is model:
                    raise
                model = current
    async def _generate_request(self, request: Request) -> tuple[_Model, Any, int, dict[str, Any]]:
        model = self._find(request)
        if model.name not in self.generation.generators:
            raise RequestError(f"model {model.name!r}: generate needs a decoder with past/present key values; "
                               f"decoders served: {sorted(self.generation.generators)}")
        body = await _read_body(request, self.config.max_body_bytes)
        prompt, max_tokens, sampling = parse_generate_request(body)
        self.generation.check(model.name, prompt, max_tokens, sampling)
        return model, prompt, max_tokens, sampling

    async def _generate(self, request: Request) -> Response:
        start = time.perf_counter()
        label = request.path_params["model"] if request.path_params["model"] in self.models else UNKNOWN_MODEL
        try:
            model, prompt, max_tokens, sampling = await self._generate_request(request)
            tokens = await asyncio.wait_for(
                self.generation.generate(model.name, prompt, max_tokens, sampling), self.config.timeout_s)
            response = JSONResponse({"model_name": model.name, "model_version": MODEL_VERSION,
                                     "output_ids": tokens.tolist()})
        except RequestError as exc:
            response = _error(str(exc), exc.status)
        except HTTPException as exc:
            response = _error(str(exc.detail), exc.status_code)
        except asyncio.TimeoutError:
            response = _error(f"generation did not finish within {self.config.timeout_s:g} s", 504)
        except Exception as exc:
            response = await _internal_error(request, exc)
        self.metrics.observe_request(label, response.status_code, time.perf_counter() - start)
        return response

    async def _generate_stream(self, request: Request) -> Response:
        try:
            model, prompt, max_tokens, sampling = await self._generate_request(request)
        except RequestError as exc:
            return _error(str(exc), exc.status)
        except HTTPException as exc:
            return _error(str(exc.detail), exc.status_code)

        async def events() -> AsyncIterator[bytes]:
            head = {"model_name": model.name, "model_version": MODEL_VERSION}
            steps = 0
            try:
                async for tokens in self.generation.stream(model.name, prompt, max_tokens, sampling):
                    yield sse_event({**head, "index": steps, "output_ids": tokens.tolist()})
                    steps += 1
            except Exception as exc:
                logger.exception("model %r: generation failed", model.name)
                yield sse_event({**head, "error": f"generation failed: {type(exc).__name__}: {exc}"})
                return
            yield sse_event({**head, "index": steps, "finish_reason": "length" if steps == max_tokens else "stop"})

        return StreamingResponse(events(), media_type="text/event-stream")

    def _find(self, request: Request) -> _Model:
        name = request.path_params["model"]
        version = request.path_params.get("version", MODEL_VERSION)
        model = self.models.get(name)
        if model is None:
            raise HTTPException(404, f"unknown model {name!r}; served models: {sorted(self.models)}")
        if version != MODEL_VERSION:
            raise HTTPException(404, f"model {name!r}: unknown version {version!r}; served versions: ['{MODEL_VERSION}']")
        return model


def create_app(
    sessions: Mapping[str, Any],
    config: ServeConfig = ServeConfig(),
    loaders: Mapping[str, Loader] | None = None,
) -> Starlette:
    """The ASGI app serving `sessions` ({model name: InferenceSession}); its ModelServer is `app.state.server`.

    loaders: {model name: () -> fresh session}, for the models the load route may reload.
    """
    server = ModelServer(sessions, config, loaders)
    server.app.state.server = server
    return server.app


def _generators(sessions: Mapping[str, Any], context: int) -> dict[str, Any]:
    """A Generator for each served session whose graph is a decoder with a KV cache."""
    from sparse_rt.converters.decoder import decoder_layout
    from sparse_rt.runtime.generate import Generator

    generators = {}
    for name, session in sessions.items():
        graph = getattr(session, "graph", None)
        if graph is None:
            continue
        try:
            decoder_layout(graph)
        except ValueError:
            continue
        generators[name] = Generator(session, context)
    return generators


def _model_metadata(name: str, session: Any) -> dict[str, Any]:
    def tensor(arg: Any) -> dict[str, Any]:
        return {"name": arg.name, "datatype": datatype_of_onnx_type(arg.type), "shape": metadata_shape(arg.shape)}

    return {
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": "sparse_rt",
        "inputs": [tensor(arg) for arg in session.get_inputs()],
        "outputs": [tensor(arg) for arg in session.get_outputs()],
    }


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body; RequestError 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes", 413)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body exceeds the limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _error(message: str, status: int) -> JSONResponse:
    headers = {"connection": "close"} if status == 413 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return _error(str(exc.detail), exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(f"internal error: {type(exc).__name__}: {exc}", 500)
