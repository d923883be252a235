"""Generative decoders: GPT-2- and Llama-shaped causal LMs from `transformers` configs,
with seeded weights (nothing is downloaded), exported to ONNX with a KV cache.

The exported file has the layout `optimum` and `torch.onnx.export` of a transformers
model with a DynamicCache give a user (`converters.decoder` recognises it):

    inputs   input_ids [batch, sequence] int64
             attention_mask [batch, past + sequence] int64
             position_ids [batch, sequence] int64
             past_key_values.{i}.key / .value  [batch, kv_heads, past, head_dim] float32
    outputs  logits [batch, sequence, vocab] float32
             present.{i}.key / .value  [batch, kv_heads, past + sequence, head_dim]

The first call (prefill) passes the prompt with empty pasts (past = 0); each later call
passes one token per sequence and the previous call's presents as its pasts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

FAMILIES = ("llama", "gpt2")


@dataclass(frozen=True)
class DecoderShape:
    """The size of a decoder: hidden width, layers, heads (kv_heads < heads: grouped-query
    attention, Llama only; GPT-2 ignores it), feed-forward width, vocabulary and context length."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 128
    vocab: int = 256
    context: int = 128


TINY = DecoderShape()
# Llama-shaped, 118M parameters: 8 layers of hidden 1024 (16 heads, 4 kv heads), FFN 2816.
LLAMA_118M = DecoderShape(hidden=1024, layers=8, heads=16, kv_heads=4, ffn=2816, vocab=8192, context=512)
# Llama-shaped, 31M parameters (124 MB of float32 weights, past any CPU's last-level cache).
LLAMA_31M = DecoderShape(hidden=512, layers=8, heads=8, kv_heads=2, ffn=1408, vocab=8192, context=512)
# GPT-2-shaped, 32M parameters.
GPT2_32M = DecoderShape(hidden=512, layers=8, heads=8, kv_heads=8, ffn=2048, vocab=8192, context=512)
# GPT-2-shaped, 106M parameters: 10 layers of hidden 768, FFN 3072 (GPT-2 small's blocks).
GPT2_106M = DecoderShape(hidden=768, layers=10, heads=12, kv_heads=12, ffn=3072, vocab=16384, context=512)


def decoder_config(family: str, shape: DecoderShape = TINY):
    """The transformers config of a `family` ("llama" or "gpt2") decoder of `shape`."""
    from transformers import GPT2Config, LlamaConfig

    if family == "llama":
        return LlamaConfig(
            vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
            num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
            num_key_value_heads=shape.kv_heads, max_position_embeddings=shape.context,
            tie_word_embeddings=False,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=shape.vocab, n_embd=shape.hidden, n_layer=shape.layers, n_head=shape.heads,
            n_inner=shape.ffn, n_positions=shape.context, bos_token_id=None, eos_token_id=None,
        )
    raise ValueError(f"decoder family: expected one of {FAMILIES}, got {family!r}")


def build_decoder(family: str, shape: DecoderShape = TINY, seed: int = 0) -> nn.Module:
    """A `family` causal LM of `shape` with weights drawn from `seed`, in eval mode.

    GPT-2's Conv1D projections ([in, out] weights) are replaced by equivalent
    nn.Linear layers so the pruners and the converter see ordinary linear layers.
    """
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    config = decoder_config(family, shape)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = (LlamaForCausalLM if family == "llama" else GPT2LMHeadModel)(config)
    if family == "gpt2":
        _conv1d_to_linear(model)
    return model.eval()


def _conv1d_to_linear(model: nn.Module) -> None:
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                with torch.no_grad():
                    linear.weight.copy_(child.weight.T)
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)


def layer_count(model: nn.Module) -> int:
    return model.config.num_hidden_layers


def kv_shape(model: nn.Module) -> tuple[int, int]:
    """(kv heads, head dim) of a transformers decoder."""
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return kv_heads, config.hidden_size // heads


class KVCacheDecoder(nn.Module):
    """The decoder with its cache as flat tensors (the exported signature):
    (input_ids, attention_mask, position_ids, past k0, past v0, k1, ...) ->
    (logits, present k0, present v0, k1, ...)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.layers = layer_count(model)
        self.train(model.training)  # the exporter restores this mode on the wrapped model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        presents = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of the exported layout for `layers` layers."""
    inputs = ["input_ids", "attention_mask", "position_ids"]
    outputs = ["logits"]
    for i in range(layers):
        inputs += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        outputs += [f"present.{i}.key", f"present.{i}.value"]
    return inputs, outputs


def export_decoder(model: nn.Module, path: str | os.PathLike) -> None:
    """Write `model` (a transformers causal LM) as ONNX with past/present key values
    (the layout in the module docstring), dynamic batch and lengths."""
    layers = layer_count(model)
    kv_heads, head_dim = kv_shape(model)
    batch, sequence, past = 1, 3, 5  # traced with a non-empty past; the axes stay dynamic
    ids = torch.zeros(batch, sequence, dtype=torch.int64)
    mask = torch.ones(batch, past + sequence, dtype=torch.int64)
    positions = torch.arange(past, past + sequence)[None]
    pasts = [torch.zeros(batch, kv_heads, past, head_dim) for _ in range(2 * layers)]
    inputs, outputs = io_names(layers)
    axes = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
    }
    axes.update({name: {0: "batch_size", 2: "past_sequence_length"} for name in inputs[3:]})
    axes.update({name: {0: "batch_size", 2: "total_sequence_length"} for name in outputs[1:]})
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(KVCacheDecoder(model), (ids, mask, positions, *pasts), str(path), input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, dynamo=False, opset_version=17)
