"""Small models of the CNN and transformer families, exported by torch.onnx (TorchScript
exporter, dynamic batch) at opsets 14 and 17, run densely through sparse_rt's ops at a
batch size other than the exported one, and compared with onnxruntime.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sparse_rt.runtime.backend import SparseRtBackend
from tests.helpers import assert_close


class MobileNetBlock(nn.Module):
    """Depthwise-separable conv, ReLU6, hard-swish, squeeze-excite with hard-sigmoid."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.squeeze, self.excite = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(8, 5))

    def forward(self, x):
        x = self.stem(x)
        y = self.depthwise(x)
        y = y * F.hardsigmoid(self.excite(F.relu(self.squeeze(F.adaptive_avg_pool2d(y, 1))))) + x
        return self.head(F.adaptive_avg_pool2d(F.silu(y), 1))


class SqueezeDenseBlock(nn.Module):
    """SqueezeNet fire module and DenseNet concatenation, ceil-mode and average pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2)
        self.squeeze, self.expand1, self.expand3 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 6, 1), nn.Conv2d(4, 6, 3, padding=1)
        self.dense = nn.Sequential(nn.BatchNorm2d(20), nn.ReLU(), nn.Conv2d(20, 4, 3, padding=1))
        self.classifier = nn.Conv2d(24, 5, 1)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2, ceil_mode=True)
        s = F.relu(self.squeeze(x))
        x = torch.cat([x, F.relu(self.expand1(s)), F.relu(self.expand3(s))], 1)
        x = F.avg_pool2d(torch.cat([x, self.dense(x)], 1), 2)
        return torch.flatten(F.adaptive_avg_pool2d(self.classifier(x), (1, 1)), 1)


class InceptionBlock(nn.Module):
    """Parallel branches with asymmetric kernels, exclusive-pad average pooling, norms, resizing."""

    def __init__(self):
        super().__init__()
        self.branch1, self.branch7 = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, (1, 7), padding=(0, 3))
        self.branch3, self.branch_pool = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.instance_norm, self.group_norm = nn.InstanceNorm2d(16, affine=True), nn.GroupNorm(4, 16)

    def forward(self, x):
        pooled = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        y = torch.cat([self.branch1(x), self.branch7(x), self.branch3(x), self.branch_pool(pooled)], 1)
        y = self.group_norm(self.instance_norm(F.max_pool2d(y, 3, 2, padding=1)))
        y = F.interpolate(y, scale_factor=2, mode="nearest") + F.interpolate(y, scale_factor=2, mode="bilinear")
        y = F.leaky_relu(y, 0.1) + F.elu(y) + torch.sigmoid(y) * torch.tanh(y)
        return F.log_softmax(F.adaptive_max_pool2d(y, 1).flatten(1), dim=1)


class ViTBlock(nn.Module):
    """Patch embedding, class token, position embedding, a pre-norm encoder layer."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, 5, dim))
        self.encoder = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True, activation="gelu", norm_first=True)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.position
        return self.head(self.encoder(x)[:, 0])


class GPTBlock(nn.Module):
    """GPT-2 style: token + position embedding, causal self-attention, tanh GELU, tied head."""

    def __init__(self, vocab: int = 30, dim: int = 16, heads: int = 2, context: int = 16):
        super().__init__()
        self.heads = heads
        self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.register_buffer("causal", torch.tril(torch.ones(context, context)).view(1, 1, context, context))

    def forward(self, ids):
        b, t = ids.shape
        x = self.tokens(ids) + self.positions(torch.arange(0, t, dtype=torch.long).unsqueeze(0))
        q, k, v = self.qkv(self.norm1(x)).split(x.shape[-1], dim=2)
        d = x.shape[-1] // self.heads
        q, k, v = (z.view(b, t, self.heads, d).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
        scores = scores.masked_fill(self.causal[:, :, :t, :t] == 0, float("-inf"))
        x = x + self.proj((F.softmax(scores, dim=-1) @ v).transpose(1, 2).contiguous().view(b, t, -1))
        h = self.up(self.norm2(x))
        h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))
        logits = (x + self.down(h)) @ self.tokens.weight.T
        return logits, torch.argmax(logits, -1), torch.topk(logits, 3, dim=-1).values


def _image(batch: int, size: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, 3, size, size),)


FAMILIES = {
    "mobilenet": (MobileNetBlock, lambda b: _image(b, 16)),
    "squeezenet_densenet": (SqueezeDenseBlock, lambda b: _image(b, 23)),
    "inception": (InceptionBlock, lambda b: _image(b, 11)),
    "vit": (ViTBlock, lambda b: _image(b, 8)),
    "gpt": (GPTBlock, lambda b: (torch.randint(0, 30, (b, 7)),)),
}


def _export(model: nn.Module, args: tuple[torch.Tensor, ...], opset: int) -> onnx.ModelProto:
    names = [f"input_{i}" for i in range(len(args))]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, buffer, opset_version=opset, dynamo=False, input_names=names,
            dynamic_axes={name: {0: "batch"} for name in names},
        )
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("opset", [14, 17])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exported_family_matches_onnxruntime(family: str, opset: int):
    torch.manual_seed(0)
    make_model, make_inputs = FAMILIES[family]
    model = make_model().eval()
    proto = _export(model, make_inputs(2), opset)
    feeds = [x.numpy() for x in make_inputs(3)]
    reference = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = reference.run(None, {i.name: x for i, x in zip(reference.get_inputs(), feeds)})
    actual = SparseRtBackend.prepare(proto).run(feeds)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape and got.dtype == want.dtype
        if want.dtype.kind == "f":
            assert_close(got, want, rtol=1e-4)
        else:
            np.testing.assert_array_equal(got, want)
