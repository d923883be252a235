"""Decoders with a KV cache: export layout, conversion, and generation against onnxruntime and torch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import sparse_rt
from sparse_rt import zoo
from sparse_rt.converters.decoder import decoder_layout
from sparse_rt.decoders import FAMILIES, KVCacheDecoder, build_decoder, export_decoder
from sparse_rt.pruning import finalize, sparsegpt_prune, wanda_prune
from sparse_rt.runtime.generate import AppendToCache, Generator, greedy_with_session
from tests.helpers import assert_close

CONTEXT = 64


def _not_head(module, name):
    return name != "lm_head"


@pytest.fixture(scope="module", params=[(f, p) for f in FAMILIES for p in ("wanda50", "sparsegpt2:4")],
                ids=lambda fp: f"{fp[0]}-{fp[1]}")
def pruned(request, tmp_path_factory):
    """(torch model, its ONNX path, converted graph) of a tiny pruned decoder."""
    family, pattern = request.param
    model = build_decoder(family)
    calibration = [torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    if pattern == "wanda50":
        wanda_prune(model, calibration, 0.5, filter_fn=_not_head)
    else:
        sparsegpt_prune(model, calibration, nm=(2, 4), filter_fn=_not_head)
    finalize(model)
    path = tmp_path_factory.mktemp("decoder") / f"{family}.onnx"
    export_decoder(model, path)
    return model, path, sparse_rt.convert(path, tune=False)


def _feed(layout, batch, step, past, seed=0):
    rng = np.random.default_rng(seed)
    feed = {
        "input_ids": rng.integers(0, 256, (batch, step)).astype(np.int64),
        "attention_mask": np.ones((batch, past + step), np.int64),
        "position_ids": np.tile(np.arange(past, past + step), (batch, 1)),
    }
    for key, value in layout.past:
        for name in (key, value):
            feed[name] = rng.standard_normal((batch, layout.kv_heads, past, layout.head_dim)).astype(np.float32)
    return feed


def test_export_layout_and_steps_match_onnxruntime(pruned):
    model, path, graph = pruned
    layout = decoder_layout(graph)
    assert layout.layers == model.config.num_hidden_layers and layout.vocab == 256
    session = sparse_rt.InferenceSession(graph)
    reference = ort.InferenceSession(str(path))
    wrapper = KVCacheDecoder(model)
    for batch, step, past in [(1, 7, 0), (1, 1, 9), (3, 1, 4), (2, 5, 3)]:
        feed = _feed(layout, batch, step, past)
        ours, theirs = session.run(None, feed), reference.run(None, feed)
        with torch.no_grad():
            torch_out = wrapper(*[torch.from_numpy(feed[v.name]) for v in graph.inputs])
        for a, b, c in zip(ours, theirs, torch_out):
            assert a.shape == b.shape
            assert_close(a, b, rtol=1e-5)
            assert_close(c, b, rtol=1e-5)


def test_greedy_tokens_match_onnxruntime_and_torch(pruned):
    model, path, graph = pruned
    generator = Generator(graph, context=CONTEXT)
    prompt = np.random.default_rng(1).integers(0, 256, (2, 6))
    ours = generator.generate(prompt, 16)
    theirs = greedy_with_session(ort.InferenceSession(str(path)), generator.layout, prompt, 16)
    np.testing.assert_array_equal(ours, theirs)
    ids = torch.from_numpy(prompt)
    with torch.no_grad():
        torch_tokens = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    np.testing.assert_array_equal(ours, torch_tokens.numpy())
    streamed = np.stack(list(generator.stream(prompt, 16)), axis=1)
    np.testing.assert_array_equal(streamed, ours[:, 6:])


def test_cache_grows_in_place_in_one_buffer(pruned):
    _, _, graph = pruned
    generator = Generator(graph, context=CONTEXT)
    layout = generator.layout
    assert len(generator.appends) >= 2 * layout.layers
    buffers = {name: torch.zeros(1, layout.kv_heads, 12, layout.head_dim) for pair in layout.past for name in pair}
    feed = {k: torch.from_numpy(v) for k, v in _feed(layout, 1, 5, 0).items()}
    feed.update({name: buffer[:, :, :0] for name, buffer in buffers.items()})
    first = generator.session.run_views(feed)
    reference = sparse_rt.InferenceSession(graph).run(None, {k: v.numpy() for k, v in feed.items()})
    for (past_pair, present_pair) in zip(layout.past, layout.present):
        for past, present in zip(past_pair, present_pair):
            tensor = first[present]
            assert tensor.data_ptr() == buffers[past].data_ptr() and tensor.shape[2] == 5
            expected = reference[[v.name for v in graph.outputs].index(present)]
            assert_close(buffers[past][:, :, :5], expected, rtol=1e-6)


def test_a_generator_keeps_the_shape_values_of_every_step(pruned):
    """Each step has a new input shape; a second generation of the same lengths reuses every
    step's shape values, more steps than a plain session keeps signatures for."""
    from sparse_rt.runtime.session import SHAPE_CACHE_ENTRIES

    _, _, graph = pruned
    context = SHAPE_CACHE_ENTRIES + 16
    generator = Generator(graph, context=context)
    prompt = np.arange(4)[None] % 100
    first = generator.generate(prompt, context - 4)
    kept = dict(generator.session._shape_cache)
    assert len(kept) == context - 4  # the prompt, then one signature a step but the last
    assert np.array_equal(generator.generate(prompt, context - 4), first)
    assert generator.session._shape_cache.keys() == kept.keys()
    with pytest.raises(ValueError, match="shape_cache_entries: expected a positive count, got 0"):
        generator.session.replan(lambda steps: steps, shape_cache_entries=0)


def test_append_to_cache_concatenates_what_has_no_room():
    past, new = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 1, 5)
    assert torch.equal(AppendToCache()(past, new), torch.cat((past, new), dim=2))
    buffer = torch.zeros(2, 3, 6, 5)
    buffer[:, :, :4] = past
    grown = AppendToCache()(buffer[:, :, :4], new)
    assert grown.data_ptr() == buffer.data_ptr() and torch.equal(grown, torch.cat((past, new), dim=2))
    full = buffer[:, :, :6]
    assert AppendToCache()(full, new).shape[2] == 7  # no room left: a copy


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    path_model = build_decoder("llama")
    graph = sparse_rt.convert(_export(path_model), tune=False)
    generator = Generator(graph, context=CONTEXT)
    prompt = np.array([[1, 2, 3, 4]])
    first = generator.generate(prompt, 12, do_sample=True, seed=5, temperature=1.5)
    assert np.array_equal(first, generator.generate(prompt, 12, do_sample=True, seed=5, temperature=1.5))
    assert not np.array_equal(first, generator.generate(prompt, 12, do_sample=True, seed=6, temperature=1.5))
    np.testing.assert_array_equal(generator.generate(prompt, 12, do_sample=True, seed=7, top_k=1),
                                  generator.generate(prompt, 12))
    np.testing.assert_array_equal(generator.generate(prompt, 12, do_sample=True, seed=7, top_p=1e-6),
                                  generator.generate(prompt, 12))
    greedy = generator.generate(prompt, 12)
    stop = int(greedy[0, 6])
    stopped = generator.generate(prompt, 12, eos_token_id=stop)
    assert stopped.shape[1] <= 4 + 12 and stopped[0, -1] == stop


_EXPORTED: dict = {}


def _export(model):
    import tempfile

    if "path" not in _EXPORTED:
        _EXPORTED["path"] = tempfile.mkdtemp() + "/llama.onnx"
        export_decoder(model, _EXPORTED["path"])
    return _EXPORTED["path"]


def test_bad_input_gets_a_clear_error():
    graph = sparse_rt.convert(_export(build_decoder("llama")), tune=False)
    generator = Generator(graph, context=16)
    with pytest.raises(ValueError, match="non-empty prompt"):
        generator.generate(np.zeros((1, 0), np.int64), 4)
    with pytest.raises(ValueError, match="exceeds the context of 16"):
        generator.generate(np.zeros((1, 14), np.int64), 4)
    with pytest.raises(ValueError, match="exceeds the context of 16"):
        generator.generate(np.zeros((1, 20), np.int64), 1)
    with pytest.raises(TypeError, match="expected integer token ids.*float32"):
        generator.generate(np.zeros((1, 4), np.float32), 4)
    with pytest.raises(ValueError, match=r"token ids in \[0, 256\)"):
        generator.generate(np.array([[1, 300]]), 4)
    with pytest.raises(ValueError, match="temperature"):
        generator.generate(np.array([[1, 2]]), 4, do_sample=True, temperature=0.0)
    encoder = torch.nn.Linear(8, 8)
    with pytest.raises(ValueError, match="unknown model layout.*found inputs"):
        Generator(sparse_rt.convert(encoder, (torch.randn(2, 8),), tune=False), context=16)
    with pytest.raises(ValueError, match="unknown model layout"):
        Generator(sparse_rt.convert(zoo.seeded(zoo.MLP((8, 8))), (torch.randn(2, 8),), tune=False), context=16)
