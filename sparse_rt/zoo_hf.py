"""Real architectures from transformers configs: seeded weights, pruned, exported the ordinary way.

Nothing is downloaded: each model is built from its transformers config
(`BertConfig()`, `GPT2Config()`, ...) with weights drawn from a seed, pruned with
`sparse_rt.pruning`, and exported with `torch.onnx.export(..., dynamic_axes=...)`
as the transformers and torch docs show, so the converter sees the graphs users
bring.

  name          model                          inputs                                  pruned layers
  bert-base     BertModel                      input_ids, attention_mask [B, S] int64  every Linear of the 12 layers
  distilbert    DistilBertModel                input_ids, attention_mask [B, S] int64  every Linear of the 6 layers
  roberta-base  RobertaModel                   input_ids, attention_mask [B, S] int64  every Linear of the 12 layers
  minilm        BertModel, 6 x 384, FFN 1536   input_ids, attention_mask [B, S] int64  every Linear of the 6 layers
  deberta-v3-base  DebertaV2Model, v3's config (relative positions): input_ids, attention_mask [B, S] int64;
                every Linear of the 12 layers
  vit-base      ViTModel (224, patch 16)       pixel_values [B, 3, 224, 224] float32   every Linear of the 12 layers
  gpt2          GPT2Model (no cache)           input_ids [B, S] int64                  every linear map of the 12 blocks
  resnet50      ResNetForImageClassification   pixel_values [B, 3, 224, 224] float32   every 1x1 conv and the classifier
  resnet50-all-convs  the same                 the same                                every conv and the classifier

GPT-2's blocks use transformers' `Conv1D` (a linear map with its weight stored
[in, out]); they are swapped for the equal `nn.Linear` before pruning, which is
what the pruners take. `tiny=True` gives each family a 2-layer, hidden-64 (or
equally small) config for tests. transformers is an optional dependency
(`pip install 'sparse_rt[models]'`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

# The dynamo exporter at opset 17 down-converts from 18 and keeps Split's
# opset-18 `num_outputs` attribute on GPT-2's fused qkv split, which onnxruntime
# rejects; GPT-2 is therefore exported at 18, the exporter's native opset. ResNet-50's
# down-conversion fails outright (a reduction's axes input) and prints a traceback
# before the exporter keeps opset 18: it asks for 18 directly.
OPSET = 17


@dataclass(frozen=True)
class Architecture:
    """One model family: how to build it, what it takes, which layers are pruned.

    kind: "tokens" (input_ids [B, S] (+ attention_mask)) or "image" (pixel_values [B, 3, H, W]).
    prune_convs: "1x1" prunes every 1x1 conv and Linear, "all" every conv and Linear; None
    only the Linear layers of the numbered blocks.
    """

    name: str
    build: Callable[[object, bool], nn.Module]
    kind: str
    attention_mask: bool = True
    prune_convs: str | None = None
    opset: int = OPSET


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError(
            "sparse_rt.zoo_hf: expected the 'transformers' package to build these models, found it missing; "
            "pip install 'sparse_rt[models]'"
        ) from None
    return transformers


_TINY_ENCODER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def _bert(t, tiny: bool) -> nn.Module:
    return t.BertModel(t.BertConfig(**_TINY_ENCODER, vocab_size=1000) if tiny else t.BertConfig())


def _minilm(t, tiny: bool) -> nn.Module:
    shape = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    return t.BertModel(t.BertConfig(**(_TINY_ENCODER if tiny else shape), **({"vocab_size": 1000} if tiny else {})))


def _deberta_v3(t, tiny: bool) -> nn.Module:
    # deberta-v3-base's config: disentangled attention over 2 x 256 relative positions
    relative = dict(relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
                    position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True)
    if tiny:  # 2 x 8 positions: 20 tokens reach past them (the clamped relative positions)
        return t.DebertaV2Model(t.DebertaV2Config(**_TINY_ENCODER, **relative, vocab_size=1000, position_buckets=8))
    base = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    return t.DebertaV2Model(t.DebertaV2Config(**base, **relative, vocab_size=128100, position_buckets=256))


def _distilbert(t, tiny: bool) -> nn.Module:
    small = dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=1000)
    return t.DistilBertModel(t.DistilBertConfig(**small) if tiny else t.DistilBertConfig())


def _roberta(t, tiny: bool) -> nn.Module:
    return t.RobertaModel(t.RobertaConfig(**_TINY_ENCODER, vocab_size=1000) if tiny else t.RobertaConfig())


def _vit(t, tiny: bool) -> nn.Module:
    config = t.ViTConfig(**_TINY_ENCODER, image_size=32, patch_size=8) if tiny else t.ViTConfig()
    return t.ViTModel(config, add_pooling_layer=False)


def _gpt2(t, tiny: bool) -> nn.Module:
    small = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=128)
    model = t.GPT2Model(t.GPT2Config(**(small if tiny else {}), use_cache=False))
    _conv1d_to_linear(model, t.pytorch_utils.Conv1D)
    return model


def _resnet50(t, tiny: bool) -> nn.Module:
    small = dict(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], num_labels=10)
    return t.ResNetForImageClassification(t.ResNetConfig(**small) if tiny else t.ResNetConfig(num_labels=1000))


def _convnext(t, tiny: bool) -> nn.Module:
    small = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10)
    return t.ConvNextForImageClassification(t.ConvNextConfig(**small) if tiny else t.ConvNextConfig(num_labels=1000))


def _mobilenet_v2(t, tiny: bool) -> nn.Module:
    small = dict(depth_multiplier=0.35, image_size=64, num_labels=10)
    config = t.MobileNetV2Config(**small) if tiny else t.MobileNetV2Config(num_labels=1000)
    model = t.MobileNetV2ForImageClassification(config)
    # transformers draws every conv weight at std 0.02, under which 50 convs from fan-in 9 to
    # 960 shrink the features to nothing (the logits are the classifier's bias): He's init
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture("bert-base", _bert, "tokens"),
        Architecture("distilbert", _distilbert, "tokens"),
        Architecture("roberta-base", _roberta, "tokens"),
        Architecture("minilm", _minilm, "tokens"),
        Architecture("deberta-v3-base", _deberta_v3, "tokens"),
        Architecture("vit-base", _vit, "image"),
        Architecture("gpt2", _gpt2, "tokens", attention_mask=False, opset=18),
        Architecture("resnet50", _resnet50, "image", prune_convs="1x1", opset=18),
        Architecture("resnet50-all-convs", _resnet50, "image", prune_convs="all", opset=18),
        Architecture("convnext-tiny", _convnext, "image", opset=18),
        Architecture("mobilenet-v2", _mobilenet_v2, "image", prune_convs="1x1", opset=18),
    )
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"model: expected one of {sorted(ARCHITECTURES)}, got {name!r}")
    return ARCHITECTURES[name]


def build(name: str, *, tiny: bool = False, seed: int = 0) -> nn.Module:
    """The model `name` from its transformers config, weights drawn from `seed`, in eval mode."""
    arch = architecture(name)
    t = _transformers()
    torch.manual_seed(seed)  # transformers initialises from torch's global generator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = arch.build(t, tiny)
    return model.eval()


def _conv1d_to_linear(module: nn.Module, conv1d: type) -> None:
    """Swap every transformers Conv1D (y = x @ W + b, W [in, out]) for the equal nn.Linear, in place."""
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, conv1d):
                in_features, out_features = child.weight.shape
                linear = nn.Linear(in_features, out_features)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.T)
                    linear.bias.copy_(child.bias)
                setattr(parent, child_name, linear)


def pruned_layers_filter(name: str) -> Callable[[nn.Module, str], bool]:
    """filter_fn for the pruners: the Linear layers inside the numbered blocks (a qualified name with an
    index, such as encoder.layer.3.attention.self.query or h.3.mlp.c_fc, so neither the embeddings nor
    the pooler); ResNet and MobileNetV2: every 1x1 conv (ResNet's all-convs variant: every conv)
    and Linear."""
    arch = architecture(name)

    def keep(module: nn.Module, qualified: str) -> bool:
        if arch.prune_convs == "all":
            return True
        if arch.prune_convs == "1x1":
            return isinstance(module, nn.Linear) or getattr(module, "kernel_size", None) == (1, 1)
        return isinstance(module, nn.Linear) and any(part.isdigit() for part in qualified.split("."))

    return keep


def prune(model: nn.Module, name: str, sparsity: float, pattern: str = "unstructured") -> nn.Module:
    """Prune the blocks' linear layers of `model` (built by `build(name)`) in place and bake the zeros in.

    pattern: "unstructured" (magnitude, per layer) or "block:RxC" (whole RxC blocks by L2 norm).
    """
    from sparse_rt.bench import prune as prune_layers

    prune_layers(model, sparsity, pattern, filter_fn=pruned_layers_filter(name))
    return model


def example_inputs(name: str, batch: int, *, seq_len: int = 128, tiny: bool = False,
                   padded: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs for `name` by input name: token ids (and mask) [batch, seq_len], or images [batch, 3, H, W].

    padded: the first sample's attention mask zeroes its second half (exercises the masking path).
    """
    arch = architecture(name)
    generator = torch.Generator().manual_seed(seed)
    if arch.kind == "image":
        size = (32 if name == "vit-base" else 64) if tiny else 224
        return {"pixel_values": torch.randn(batch, 3, size, size, generator=generator)}
    vocab = 1000 if tiny else {"gpt2": 50257, "roberta-base": 50265, "deberta-v3-base": 128100}.get(name, 30522)
    # RoBERTa counts positions from padding_idx + 1 and reserves ids 0-3 for special tokens
    ids = torch.randint(4, vocab, (batch, seq_len), generator=generator)
    inputs = {"input_ids": ids}
    if arch.attention_mask:
        mask = torch.ones(batch, seq_len, dtype=torch.int64)
        if padded:
            mask[0, seq_len // 2:] = 0
        inputs["attention_mask"] = mask
    return inputs


def output_names(model: nn.Module, inputs: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors `model(**inputs)` returns, in order (transformers ModelOutput keys)."""
    with torch.no_grad():
        return list(model(**inputs).keys())


def export(model: nn.Module, name: str, path: str | Path, *, seq_len: int = 16, tiny: bool = False) -> Path:
    """Export `model` to `path` with torch.onnx.export and dynamic axes {batch, sequence} (images: batch).

    This is the call the transformers and torch docs show; torch 2.13 runs its
    torch.export-based exporter under it. Returns the path.
    """
    arch = architecture(name)
    inputs = example_inputs(name, 2, seq_len=seq_len, tiny=tiny)
    outputs = output_names(model, inputs)
    if arch.kind == "image":
        axes = {"pixel_values": {0: "batch"}}
        axes.update({o: {0: "batch"} for o in outputs})
    else:
        axes = {i: {0: "batch", 1: "sequence"} for i in inputs}
        axes.update({o: ({0: "batch"} if o == "pooler_output" else {0: "batch", 1: "sequence"}) for o in outputs})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (), str(path), kwargs=inputs, input_names=list(inputs), output_names=outputs,
                          dynamic_axes=axes, opset_version=arch.opset, verbose=False)
    return Path(path)


class TupleOutputs(nn.Module):
    """`model` called with positional inputs (in `names` order) returning a tuple of tensors, for timing."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(**dict(zip(self.names, tensors))).values())
