"""sparse_rt as an `onnx.backend.base.Backend`, so ONNX's own node tests run against it."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from sparse_rt.api import convert
from sparse_rt.converters.onnx import import_onnx
from sparse_rt.runtime.session import InferenceSession


class SparseRtRep(BackendRep):
    """A prepared model: runs positional inputs through an InferenceSession."""

    def __init__(self, session: InferenceSession):
        self.session = session

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if isinstance(inputs, dict):
            feed = dict(inputs)
        else:
            names = [i.name for i in self.session.get_inputs()]
            feed = dict(zip(names, inputs))
        return tuple(self.session.run(None, feed))


class SparseRtBackend(Backend):
    """ONNX models through sparse_rt: dense execution by the op registry, or with `lower=True`
    converted as users convert them (linear layers lowered, kernels picked by the heuristic)."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", lower: bool = False,
                **kwargs: Any) -> SparseRtRep:
        # no super().prepare: import_onnx runs onnx.checker itself (twice is 10 s on VGG-19)
        graph = convert(model, tune=False) if lower else import_onnx(model)
        return SparseRtRep(InferenceSession(graph, device="cpu"))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Sequence[np.ndarray], device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"
