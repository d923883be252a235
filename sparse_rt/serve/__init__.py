"""Serving: dynamic batching (usable on its own) and an Open Inference Protocol v2 HTTP server.

    engine = BatchingEngine(session, max_batch=32, max_delay_ms=2)
    outputs = engine.infer_sync({"x": x})

    app = create_app({"mlp": session})            # ASGI app for uvicorn
    python -m sparse_rt serve mlp.onnx --port 8000
    python -m sparse_rt serve mlp.onnx --ray --replicas 2    # Ray Serve (sparse_rt.serve.ray)
"""

from sparse_rt.serve.batching import BatchingEngine, BatchStats, EngineClosedError

__all__ = ["BatchingEngine", "BatchStats", "EngineClosedError", "create_app", "ServeConfig"]


def __getattr__(name: str):
    # the HTTP side needs starlette; BatchingEngine alone does not
    if name in ("create_app", "ServeConfig"):
        from sparse_rt.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'sparse_rt.serve' has no attribute {name!r}")
