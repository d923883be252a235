"""Conv with a constant weight gives the same result on channels-last and NCHW inputs."""

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt


def test_channels_last_input_matches_nchw():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 9, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6, 5, 7])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    session = sparse_rt.InferenceSession(sparse_rt.convert(model))
    x = torch.from_numpy(rng.standard_normal((2, 4, 9, 7)).astype(np.float32))
    expected = torch.nn.functional.conv2d(x.double(), torch.from_numpy(weight).double(), None, (2, 1), 1)
    for feed in (x, x.contiguous(memory_format=torch.channels_last)):
        (y,) = session.run(None, {"x": feed})
        np.testing.assert_allclose(np.asarray(y), expected.numpy(), rtol=1e-5, atol=1e-5)
