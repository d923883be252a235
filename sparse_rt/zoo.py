"""Built-in model families, generated from configs with seeded random weights.

Used by the bench's built-in default and by the tests; nothing is downloaded.
  MLP        [batch, in] -> [batch, out]
  SmallCNN   [batch, 3, H, W] -> [batch, classes]   (conv, batch norm, pooling, residual, 1x1 convs)
  Encoder    BERT-style: token ids [batch, seq] (+ attention mask) -> hidden [batch, seq, hidden]
  Decoder    GPT-2-style causal LM: token ids [batch, seq] -> logits [batch, seq, vocab]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Sequential):
    """Linear layers of the given widths with GELU between them."""

    def __init__(self, widths: tuple[int, ...] = (256, 1024, 1024, 10)):
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.GELU())
        super().__init__(*layers)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


class SmallCNN(nn.Module):
    """A ResNet-style CNN: stem conv/bn/relu/maxpool, residual blocks, global pool, classifier."""

    def __init__(self, channels: int = 16, blocks: int = 2, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        self.blocks = nn.Sequential(*[_ResidualBlock(channels) for _ in range(blocks)])
        self.pointwise = nn.Conv2d(channels, 2 * channels, 1)
        self.head = nn.Linear(2 * channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pointwise(self.blocks(self.stem(x)))
        h = F.adaptive_avg_pool2d(F.relu(h), 1).flatten(1)
        return self.head(h)


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    ffn: int = 3072
    max_positions: int = 512
    causal: bool = False


BERT_BASE = TransformerConfig()


class _Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.heads = config.heads
        self.causal = config.causal
        self.query = nn.Linear(config.hidden, config.hidden)
        self.key = nn.Linear(config.hidden, config.hidden)
        self.value = nn.Linear(config.hidden, config.hidden)
        self.out = nn.Linear(config.hidden, config.hidden)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = t.shape
        return t.reshape(batch, seq, self.heads, hidden // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None) -> torch.Tensor:
        # x: [B, S, H] -> [B, S, H]
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if self.causal:
            seq = x.shape[1]
            allowed = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        if mask_bias is not None:
            scores = scores + mask_bias
        context = torch.softmax(scores, dim=-1) @ v
        batch, heads, seq, size = context.shape
        return self.out(context.transpose(1, 2).reshape(batch, seq, heads * size))


class _Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.attention = _Attention(config)
        self.norm1 = nn.LayerNorm(config.hidden)
        self.up = nn.Linear(config.hidden, config.ffn)
        self.down = nn.Linear(config.ffn, config.hidden)
        self.norm2 = nn.LayerNorm(config.hidden)
        self.pre_norm = config.causal  # GPT-2 normalises before, BERT after

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attention(self.norm1(x), mask_bias)
            return x + self.down(F.gelu(self.up(self.norm2(x)), approximate="tanh"))
        x = self.norm1(x + self.attention(x, mask_bias))
        return self.norm2(x + self.down(F.gelu(self.up(x))))


class Encoder(nn.Module):
    """BERT-style encoder: (input_ids [B, S] int64, attention_mask [B, S] int64) -> [B, S, hidden]."""

    def __init__(self, config: TransformerConfig = BERT_BASE):
        super().__init__()
        self.tokens = nn.Embedding(config.vocab_size, config.hidden)
        self.positions = nn.Embedding(config.max_positions, config.hidden)
        self.norm = nn.LayerNorm(config.hidden)
        self.blocks = nn.ModuleList([_Block(config) for _ in range(config.layers)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.norm(self.tokens(input_ids) + self.positions(positions))
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for block in self.blocks:
            x = block(x, mask_bias)
        return x


class Decoder(nn.Module):
    """GPT-2-style causal LM: input_ids [B, S] int64 -> logits [B, S, vocab] (tied embeddings)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        config = TransformerConfig(**{**config.__dict__, "causal": True})
        self.tokens = nn.Embedding(config.vocab_size, config.hidden)
        self.positions = nn.Embedding(config.max_positions, config.hidden)
        self.blocks = nn.ModuleList([_Block(config) for _ in range(config.layers)])
        self.norm = nn.LayerNorm(config.hidden)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)
        for block in self.blocks:
            x = block(x, None)
        return self.norm(x) @ self.tokens.weight.T


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise all weights from `seed` and set eval mode.

    Linear/conv weights ~ N(0, 1/fan_in) so activations stay O(1) at any depth;
    embeddings ~ N(0, 1); norms get random affine parameters and batch-norm
    running statistics, so that folding them is actually exercised.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(shape, std=1.0):
        return torch.randn(shape, generator=generator) * std

    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                fan_in = sub.weight[0].numel()
                sub.weight.copy_(normal(sub.weight.shape, fan_in**-0.5))
                if sub.bias is not None:
                    sub.bias.copy_(normal(sub.bias.shape, 0.1))
            elif isinstance(sub, nn.Embedding):
                sub.weight.copy_(normal(sub.weight.shape))
            elif isinstance(sub, (nn.LayerNorm, nn.BatchNorm2d)):
                sub.weight.copy_(1.0 + normal(sub.weight.shape, 0.1))
                sub.bias.copy_(normal(sub.bias.shape, 0.1))
                if isinstance(sub, nn.BatchNorm2d):
                    sub.running_mean.copy_(normal(sub.running_mean.shape, 0.1))
                    sub.running_var.copy_(1.0 + normal(sub.running_var.shape, 0.1).abs())
    return module.eval()
