"""Graph fusions applied at conversion: op chains exporters emit, replaced by one op.

  Erf GELU  x * 0.5 * (1 + erf(x / sqrt 2))  (Div or Mul, Erf, Add, Mul, Mul) -> ai.sparse_rt::Gelu
  Tanh GELU  0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (Pow, Mul, Add, Mul, Tanh, Add, Mul,
             Mul: GPT-2's "gelu_new") -> ai.sparse_rt::Gelu approximate "tanh" (one pass, not eight)
  Attention  MatMul(q, kT), Div or Mul by a scalar (optional), Add of a float mask (optional;
             two Adds: their terms summed first, once for every layer sharing them),
             Softmax over the last axis, MatMul by v -> ai.sparse_rt::ScaledDotProductAttention;
             also torch.export's decomposition of F.scaled_dot_product_attention: q and kT each
             multiplied by sqrt(scale) before the MatMul, and the softmax's NaNs set to zero
             (IsNaN, Where) before the MatMul by v (attribute nan_to_zero)
             (torch's fused kernel: 1.5x faster than the five ops at 8 x 128 tokens, BERT-base
             heads; the scores never reach memory whole)
  Gathered product  MatMul(a, b) read only by a GatherElements over its last axis (DeBERTa's
             relative positions) -> ai.sparse_rt::MatMulGatherElements, which computes only the
             entries the indices keep (a quarter of them at 128 tokens)
  Residual LayerNorm  Add(a, b), LayerNormalization over the last axis with 1-D constant scale
             (and bias) -> ai.sparse_rt::AddLayerNormalization (one pass over a row; the sum is
             a second output when the residual stream reads it too)
  Strided 1x1 conv  Conv with a 1x1 kernel, stride s > 1 and no padding (ResNet's downsampling
             shortcuts) -> Slice(x, steps s) then the same conv at stride 1, which lowering takes
             as a linear layer (`split_strided_pointwise_conv`; one op becomes two)
  Linear GELU  SparseLinear, then GELU (erf form) -> SparseLinear with activation "gelu"
             (`fuse_linear_activation`, after lowering: the dense and CSR kernels apply it
             to their outputs in registers)
  CSR chains  a CSR layer read only by another CSR layer leaves its batched output in
             the reader's input tiles (`chain_csr_layers`, after lowering): the reader
             skips transposing its input, the writer its output (a BERT FFN's
             768x3072 down projection spent a quarter of its time at 1024 rows on that)

Decoder blocks (RMSNorm, rotary embedding, grouped-query attention, SiLU gate; identity
casts removed first) are fused in `decoder_fusion`.

A chain is fused only when its intermediate values have no other consumer and
are not graph outputs, and its constants have the expected values.
"""

from __future__ import annotations

import json
import math

import numpy as np

from sparse_rt.ir.graph import SPARSE_DOMAIN, Graph, Node


def fuse_graph(graph: Graph) -> int:
    """Apply every fusion (and `decoder_fusion`'s); returns the number of chains replaced."""
    from sparse_rt.converters.decoder_fusion import fuse_decoder_blocks, remove_identity_casts  # it imports this

    remove_identity_casts(graph)  # the casts exporters put inside softmax and norm chains
    return (fuse_erf_gelu(graph) + fuse_tanh_gelu(graph) + fuse_attention(graph) + fuse_gathered_matmul(graph)
            + fuse_add_layer_norm(graph) + split_strided_pointwise_conv(graph) + fuse_decoder_blocks(graph))


def _scalar(graph: Graph, name: str) -> float | None:
    array = graph.constants.get(name)
    if array is None or array.size != 1 or array.dtype.kind != "f":
        return None
    return float(array.reshape(()))


def _only_reader(value: str, consumers: dict[str, list[Node]], outputs: set[str], op_type: str | None = None,
                 domains: tuple[str, ...] = ("",)) -> Node | None:
    """The one node reading `value` (not a graph output) when it is an `op_type` (any op when
    None) of one of `domains`, else None."""
    users = consumers.get(value, [])
    if value in outputs or len(users) != 1:
        return None
    user = users[0]
    if user.domain not in domains or (op_type is not None and user.op_type != op_type):
        return None
    return user


def _other(node: Node, name: str) -> str | None:
    """The other input of a binary node, given one of them."""
    if len(node.inputs) != 2 or name not in node.inputs:
        return None
    return node.inputs[1] if node.inputs[0] == name else node.inputs[0]


def fuse_erf_gelu(graph: Graph) -> int:
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    producers = graph.producers()

    def only_user(value: str, op_type: str) -> Node | None:
        return _only_reader(value, consumers, outputs, op_type)

    removed: set[int] = set()
    replacement: dict[int, Node] = {}
    for erf in graph.nodes:
        if erf.op_type != "Erf" or erf.domain:
            continue
        scale = producers.get(erf.inputs[0])
        if scale is None or scale.domain or scale.op_type not in ("Div", "Mul") or erf.inputs[0] in outputs:
            continue
        if len(consumers.get(erf.inputs[0], [])) != 1:
            continue
        x = scale.inputs[0]
        factor = _scalar(graph, scale.inputs[1])
        expected = math.sqrt(2.0) if scale.op_type == "Div" else 1.0 / math.sqrt(2.0)
        if factor is None or not math.isclose(factor, expected, rel_tol=1e-4):
            continue
        add = only_user(erf.outputs[0], "Add")
        if add is None or not _isclose(_scalar(graph, _other(add, erf.outputs[0]) or ""), 1.0):
            continue
        # (x * (1 + erf)) * 0.5,  (x * 0.5) * (1 + erf)  or  x * (0.5 * (1 + erf))
        mul = only_user(add.outputs[0], "Mul")
        if mul is None:
            continue
        partner = _other(mul, add.outputs[0])
        chain: list[Node]
        if _isclose(_scalar(graph, partner or ""), 0.5):
            outer = only_user(mul.outputs[0], "Mul")
            if outer is None or _other(outer, mul.outputs[0]) != x:
                continue
            chain, last = [scale, erf, add, mul, outer], outer
        elif partner == x:
            half = only_user(mul.outputs[0], "Mul")
            if half is None or not _isclose(_scalar(graph, _other(half, mul.outputs[0]) or ""), 0.5):
                continue
            chain, last = [scale, erf, add, mul, half], half
        else:
            halving = producers.get(partner or "")
            if (halving is None or halving.op_type != "Mul" or halving.domain or x not in halving.inputs
                    or not _isclose(_scalar(graph, _other(halving, x) or ""), 0.5)
                    or len(consumers.get(partner, [])) != 1 or partner in outputs):
                continue
            chain, last = [scale, erf, add, halving, mul], mul
        if any(id(n) in removed for n in chain):
            continue
        removed.update(id(n) for n in chain)
        replacement[id(last)] = Node("Gelu", [x], [last.outputs[0]], {"approximate": "none"},
                                     graph.fresh_name(f"{erf.label()}_gelu"), SPARSE_DOMAIN)
    _replace(graph, replacement, removed - set(replacement))
    return len(replacement)


def fuse_tanh_gelu(graph: Graph) -> int:
    """Replace 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 Pow(x, 3)))) by Gelu(x), approximate "tanh".

    The halving may come first (Mul(Mul(x, 0.5), 1 + tanh)) or last (Mul(Mul(x, 1 + tanh), 0.5));
    every intermediate must be read by the chain alone.
    """
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    producers = graph.producers()

    def only_user(value: str, op_type: str) -> Node | None:
        return _only_reader(value, consumers, outputs, op_type)

    def scaled(value: str, op_type: str, factor: float) -> tuple[Node, str] | None:
        """(node, other input) when `value` comes from op_type(other, constant `factor`), read once."""
        node = producers.get(value)
        if node is None or node.op_type != op_type or node.domain or len(node.inputs) != 2:
            return None
        if value in outputs or len(consumers.get(value, [])) != 1:
            return None
        for x, c in (node.inputs, node.inputs[::-1]):
            if math.isclose(_scalar(graph, c) or 0.0, factor, rel_tol=1e-5):
                return node, x
        return None

    removed: set[int] = set()
    replacement: dict[int, Node] = {}
    for tanh in graph.nodes:
        if tanh.op_type != "Tanh" or tanh.domain:
            continue
        inner = scaled(tanh.inputs[0], "Mul", math.sqrt(2.0 / math.pi))
        if inner is None:
            continue
        add = producers.get(inner[1])
        if add is None or add.op_type != "Add" or add.domain or len(consumers.get(inner[1], [])) != 1:
            continue
        cube_term = None
        for x, term in (add.inputs, add.inputs[::-1]):
            cubic = scaled(term, "Mul", 0.044715)
            power = cubic and scaled(cubic[1], "Pow", 3.0)
            if power and power[1] == x:
                cube_term = (x, [power[0], cubic[0]])
                break
        if cube_term is None:
            continue
        x, chain = cube_term[0], [*cube_term[1], add, inner[0], tanh]
        one_plus = only_user(tanh.outputs[0], "Add")
        if one_plus is None or not _isclose(_scalar(graph, _other(one_plus, tanh.outputs[0]) or ""), 1.0):
            continue
        chain.append(one_plus)
        product = only_user(one_plus.outputs[0], "Mul")
        if product is None:
            continue
        partner = _other(product, one_plus.outputs[0])
        halved = scaled(partner or "", "Mul", 0.5)
        if halved is not None and halved[1] == x:  # (x * 0.5) * (1 + tanh)
            chain += [halved[0], product]
        elif partner == x:  # (x * (1 + tanh)) * 0.5
            half = only_user(product.outputs[0], "Mul")
            if half is None or not _isclose(_scalar(graph, _other(half, product.outputs[0]) or ""), 0.5):
                continue
            chain += [product, half]
        else:
            continue
        if any(id(n) in removed for n in chain):
            continue
        removed.update(id(n) for n in chain)
        replacement[id(chain[-1])] = Node("Gelu", [x], [chain[-1].outputs[0]], {"approximate": "tanh"},
                                          graph.fresh_name(f"{tanh.label()}_gelu"), SPARSE_DOMAIN)
    _replace(graph, replacement, removed - set(replacement))
    return len(replacement)


def split_strided_pointwise_conv(graph: Graph) -> int:
    """Rewrite Conv(x, W [O, I, 1, ...], strides s, no padding, group 1) as Conv(Slice(x, steps s), W)
    at stride 1: a 1x1 kernel reads only the inputs at multiples of the stride. Models before
    opset 10 keep their strided convs (their Slice has no steps)."""
    if graph.opset < 10:
        return 0
    nodes: list[Node] = []
    count = 0
    for node in graph.nodes:
        weight = graph.constants.get(node.inputs[1]) if node.op_type == "Conv" and len(node.inputs) > 1 else None
        attrs = node.attributes
        if node.domain or weight is None or weight.ndim < 3 or any(k != 1 for k in weight.shape[2:]):
            nodes.append(node)
            continue
        spatial = weight.ndim - 2
        strides = [int(v) for v in attrs.get("strides", [1] * spatial)]
        if (all(v == 1 for v in strides) or attrs.get("group", 1) != 1
                or any(p != 0 for p in attrs.get("pads", [0] * 2 * spatial))
                or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
            nodes.append(node)
            continue
        base = node.label().replace("/", "_").strip("_") or "conv"
        arrays = {"starts": [0] * spatial, "ends": [2**62] * spatial, "axes": list(range(2, 2 + spatial)),
                  "steps": strides}
        names = {}
        for field_name, values in arrays.items():
            names[field_name] = graph.fresh_name(f"{base}.subsample_{field_name}")
            graph.constants[names[field_name]] = np.array(values, dtype=np.int64)
        sampled = graph.fresh_name(f"{base}.subsampled")
        nodes.append(Node("Slice", [node.inputs[0], *names.values()], [sampled], {},
                          graph.fresh_name(f"{base}.subsample")))
        nodes.append(Node("Conv", [sampled, *node.inputs[1:]], list(node.outputs),
                          {**attrs, "strides": [1] * spatial}, node.name))
        count += 1
    graph.nodes = nodes
    graph.validate()
    return count


def _replace(graph: Graph, replacement: dict[int, Node], removed: set[int]) -> None:
    """Put replacement[id(node)] in place of those nodes, drop the `removed` ones, prune, validate."""
    graph.nodes = [replacement.get(id(n), n) for n in graph.nodes if id(n) not in removed]
    graph.prune_unused()
    graph.validate()


def _value_info(graph: Graph) -> dict:
    """Every value with a known type: graph inputs, outputs and inferred intermediates, by name."""
    return {**{v.name: v for v in graph.inputs + graph.outputs}, **graph.value_info}


def _isclose(value: float | None, target: float) -> bool:
    return value is not None and math.isclose(value, target, rel_tol=1e-6)


def fuse_attention(graph: Graph) -> int:
    """Replace attention chains by ScaledDotProductAttention(q, kT, v, mask or ""), attribute scale.

    Fused only when shape inference gave the scores' shape and dtype: float32, rank >= 3, q,
    kT and v of that rank (no MatMul broadcasting of batch dims), and a mask that does not
    widen the scores (`_mask_keeps_shape`).
    """
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}

    def only_user(value: str) -> Node | None:
        return _only_reader(value, consumers, outputs)

    info = _value_info(graph)

    def shape_of(name: str):
        value = info.get(name)
        return None if value is None else value.shape

    producers = graph.producers()

    def prescaled(value: str) -> tuple[str, float, Node | None]:
        """(x, c, the Mul) when `value` = Mul(x, scalar c) read only by its MatMul, else (value, 1, None)."""
        mul = producers.get(value)
        if mul is None or mul.op_type != "Mul" or mul.domain or only_user(value) is None or len(mul.inputs) != 2:
            return value, 1.0, None
        for x, c in (mul.inputs, mul.inputs[::-1]):
            factor = _scalar(graph, c)
            if factor and x not in graph.constants:
                return x, factor, mul
        return value, 1.0, None

    removed: set[int] = set()
    replacement: dict[int, Node] = {}
    sums: dict[tuple[str, str], Node] = {}
    for scores in graph.nodes:
        if scores.op_type != "MatMul" or scores.domain:
            continue
        score_info = info.get(scores.outputs[0])
        if score_info is None or score_info.dtype != "float32" or score_info.shape is None:
            continue
        rank = len(score_info.shape)
        (q, q_scale, q_mul), (k_t, k_scale, k_mul) = prescaled(scores.inputs[0]), prescaled(scores.inputs[1])
        if rank < 3 or any(shape_of(name) is None or len(shape_of(name)) != rank for name in (q, k_t)):
            continue
        chain = [mul for mul in (q_mul, k_mul) if mul is not None] + [scores]
        scale, mask, node = q_scale * k_scale, "", only_user(scores.outputs[0])
        if node is not None and node.op_type in ("Div", "Mul") and len(node.inputs) == 2:
            factor = _scalar(graph, _other(node, scores.outputs[0]) or "")
            if factor is not None and (node.op_type == "Mul" or node.inputs[0] == scores.outputs[0]) and factor:
                scale = 1.0 / factor if node.op_type == "Div" else factor
                chain.append(node)
                node = only_user(node.outputs[0])
        if node is not None and node.op_type == "Add":
            mask = _other(node, chain[-1].outputs[0]) or ""
            if not _mask_may_fit(info.get(mask), score_info.shape):
                continue
            chain.append(node)
            node = only_user(node.outputs[0])
            if node is not None and node.op_type == "Add":  # a second term (MPNet: position bias, then padding)
                second = _other(node, chain[-1].outputs[0]) or ""
                if not _mask_may_fit(info.get(second), score_info.shape):
                    continue
                if (mask, second) not in sums:  # one sum for every layer sharing both terms
                    sums[(mask, second)] = Node("Add", [mask, second], [graph.fresh_name(f"{mask}_plus_{second}")],
                                                name=graph.fresh_name(f"{mask}_plus_{second}_add"))
                mask = sums[(mask, second)].outputs[0]
                chain.append(node)
                node = only_user(node.outputs[0])
        if node is None or node.op_type != "Softmax" or node.attributes.get("axis", -1) not in (-1, rank - 1):
            continue
        chain.append(node)
        guard = _nan_guard(graph, node, consumers, outputs)
        if guard:
            chain.extend(guard)
            node = guard[-1]
        weighted = only_user(node.outputs[0])
        if weighted is None or weighted.op_type != "MatMul" or weighted.inputs[0] != node.outputs[0]:
            continue
        v = weighted.inputs[1]
        if shape_of(v) is None or len(shape_of(v)) != rank or any(id(n) in removed for n in chain):
            continue
        removed.update(id(n) for n in chain)
        attributes = {"scale": float(scale), **({"nan_to_zero": 1} if guard else {})}
        replacement[id(weighted)] = Node(
            "ScaledDotProductAttention", [q, k_t, v, mask], [weighted.outputs[0]],
            attributes, graph.fresh_name(f"{weighted.label()}_attention"), SPARSE_DOMAIN,
        )
    summed = {node.outputs[0]: node for node in sums.values()}
    nodes = []
    for node in graph.nodes:  # each sum of two terms just before its first reader
        fused = replacement.get(id(node))
        if fused is not None and fused.inputs[3] in summed:
            nodes.append(summed.pop(fused.inputs[3]))
        nodes.append(node)
    graph.nodes = nodes
    _replace(graph, replacement, removed)
    return len(replacement)


def _nan_guard(graph: Graph, softmax: Node, consumers: dict[str, list[Node]], outputs: set[str]) -> list[Node]:
    """[IsNaN, Where] when the softmax's output p is read only by IsNaN(p) and Where(IsNaN(p), 0, p)
    (torch.export's guard for fully masked rows), else []."""
    p = softmax.outputs[0]
    users = consumers.get(p, [])
    if p in outputs or len(users) != 2:
        return []
    is_nan = next((u for u in users if u.op_type == "IsNaN" and not u.domain), None)
    if is_nan is None:
        return []
    where = _only_reader(is_nan.outputs[0], consumers, outputs, "Where")
    if where is None or where not in users or where.inputs[0] != is_nan.outputs[0] or where.inputs[2] != p:
        return []
    zero = graph.constants.get(where.inputs[1])
    if zero is None or zero.size != 1 or float(zero.reshape(())) != 0.0:
        return []
    return [is_nan, where]


def _mask_may_fit(mask, scores: tuple) -> bool:
    """Whether a term added to the scores may be taken as the fused op's mask: float32 and not
    widening the scores as far as its known shape tells, or of no inferred type at all (then the
    op checks at run time, and computes the chain as exported should the mask widen the scores)."""
    if mask is None or mask.shape is None:
        return mask is None or mask.dtype in (None, "float32")
    return mask.dtype == "float32" and _mask_keeps_shape(mask.shape, scores)


def _mask_keeps_shape(mask: tuple, scores: tuple) -> bool:
    """Whether adding a mask of shape `mask` keeps `scores`' shape, as far as the known dims
    tell: every mask dim is 1, the scores' dim, or unknown against an unknown or > 1 dim (an
    unknown mask dim can only match it or be 1; should it not, the fused op raises, as torch
    cannot broadcast the mask, rather than computing something else)."""
    if len(mask) > len(scores):
        return False
    for m, s in zip(reversed(mask), reversed(scores)):
        if m == 1 or m == s:
            continue
        if isinstance(m, int) or s == 1:
            return False
    return True


def fuse_gathered_matmul(graph: Graph) -> int:
    """Replace MatMul(a, b) -> GatherElements(product, indices) over the product's last axis, the
    MatMul's only reader, by MatMulGatherElements(a, b, indices) in the GatherElements' place.
    A MatMul by a constant is left to lowering."""
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    info = _value_info(graph)
    producers = graph.producers()
    removed: set[int] = set()
    replacement: dict[int, Node] = {}
    for gather in graph.nodes:
        if gather.op_type != "GatherElements" or gather.domain or len(gather.inputs) != 2:
            continue
        matmul = producers.get(gather.inputs[0])
        if (matmul is None or matmul.op_type != "MatMul" or matmul.domain or matmul.inputs[1] in graph.constants
                or _only_reader(matmul.outputs[0], consumers, outputs, "GatherElements") is not gather):
            continue
        axis = int(gather.attributes.get("axis", 0))
        product = info.get(matmul.outputs[0])
        rank = None if product is None or product.shape is None else len(product.shape)
        if axis != -1 and (rank is None or axis != rank - 1):
            continue
        removed.add(id(matmul))
        replacement[id(gather)] = Node("MatMulGatherElements", [*matmul.inputs, gather.inputs[1]], list(gather.outputs),
                                       {}, graph.fresh_name(f"{gather.label()}_matmul"), SPARSE_DOMAIN)
    _replace(graph, replacement, removed)
    return len(replacement)


def fuse_add_layer_norm(graph: Graph) -> int:
    """Replace Add -> LayerNormalization (last axis, Y only, 1-D constant scale and bias) by
    AddLayerNormalization(a, b, scale, bias), attribute epsilon. When other nodes read the sum
    too (the residual stream of a pre-norm block: GPT-2, ViT), the fused node also outputs it,
    so it is still written once. The fused node takes the Add's place in the order."""
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    info = _value_info(graph)
    removed: set[int] = set()
    replacement: dict[int, Node] = {}
    for add in graph.nodes:
        if add.op_type != "Add" or add.domain or len(add.inputs) != 2:
            continue
        readers = consumers.get(add.outputs[0], [])
        norms = [n for n in readers if n.op_type == "LayerNormalization" and not n.domain]
        if len(norms) != 1 or id(norms[0]) in removed:
            continue
        norm = norms[0]
        shared = len(readers) > 1 or add.outputs[0] in outputs
        total = info.get(add.outputs[0])
        if total is None or total.shape is None or total.dtype != "float32" or norm.inputs[0] != add.outputs[0]:
            continue
        axis = int(norm.attributes.get("axis", -1))
        if axis not in (-1, len(total.shape) - 1) or any(name for name in norm.outputs[1:]):
            continue
        params = [name for name in norm.inputs[1:3] if name]
        if any(name not in graph.constants or graph.constants[name].ndim != 1 for name in params):
            continue
        removed.add(id(norm))
        replacement[id(add)] = Node(
            "AddLayerNormalization", [*add.inputs, *norm.inputs[1:3]],
            [norm.outputs[0], add.outputs[0]] if shared else [norm.outputs[0]],
            {"epsilon": float(norm.attributes.get("epsilon", 1e-5))},
            graph.fresh_name(f"{norm.label()}_add"), SPARSE_DOMAIN,
        )
    _replace(graph, replacement, removed)
    return len(replacement)


def only_gelu_reader(value: str, consumers: dict[str, list[Node]], outputs: set[str]) -> Node | None:
    """The GELU (erf form; ai.sparse_rt::Gelu or ONNX Gelu) that is the only reader of `value`
    (not a graph output), else None."""
    gelu = _only_reader(value, consumers, outputs, "Gelu", ("", SPARSE_DOMAIN))
    if gelu is None or gelu.attributes.get("approximate", "none") != "none":
        return None
    return gelu


def fuse_linear_activation(graph: Graph) -> int:
    """Fold a GELU (erf form; ai.sparse_rt::Gelu or ONNX Gelu) that is the only reader of a
    SparseLinear's output into that node's `activation` attribute."""
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    removed: set[int] = set()
    for linear in graph.nodes:
        if linear.op_type != "SparseLinear" or linear.domain != SPARSE_DOMAIN or linear.attributes.get("activation"):
            continue
        gelu = only_gelu_reader(linear.outputs[0], consumers, outputs)
        if gelu is None:
            continue
        linear.attributes["activation"] = "gelu"
        linear.outputs[0] = gelu.outputs[0]
        removed.add(id(gelu))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    graph.validate()
    return len(removed)


def chain_csr_layers(graph: Graph) -> int:
    """Mark each SparseLinear run by the CSR CPU kernel whose output only another such layer
    reads (as its x) with output_layout "batch_tiles", its batch tile width set to the reader's
    (graph.nodes in topological order). The config the tuner chose stays in `tuned_config`,
    for `explain` to find its measurements."""
    from sparse_rt.ops.sparse_linear import TILED_KERNEL, dispatch_of

    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}

    def tiled(node: Node) -> bool:
        return (node.op_type == "SparseLinear" and node.domain == SPARSE_DOMAIN
                and node.attributes.get("kernel") == TILED_KERNEL and not dispatch_of(node))

    chained = 0
    for writer in reversed(graph.nodes):  # readers first: a chain ends up with one tile width
        if not tiled(writer) or writer.outputs[0] in outputs:
            continue
        users = consumers.get(writer.outputs[0], [])
        if len(users) != 1 or not tiled(users[0]) or users[0].inputs[0] != writer.outputs[0]:
            continue
        writer.attributes.setdefault("tuned_config", writer.attributes["config"])
        config = json.loads(writer.attributes["config"])
        config["batch_vectors"] = json.loads(users[0].attributes["config"])["batch_vectors"]
        writer.attributes["config"] = json.dumps(config, sort_keys=True)
        writer.attributes["output_layout"] = "batch_tiles"
        chained += 1
    return chained
