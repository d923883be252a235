"""Fusions of the blocks of exported decoders (Llama, GPT-2), applied at conversion.

  Identity casts  Cast to the dtype its input already has -> its readers read the input
             (`remove_identity_casts`; the exporter puts one around every RMSNorm and softmax)
  RMSNorm    Pow(x, 2), ReduceMean over the last axis (keepdims), Add eps, Sqrt, Div(1, .) or
             Reciprocal, Mul by x (or Div(x, Sqrt)), Mul by a 1-D constant weight ->
             ai.sparse_rt::RMSNormalization(x, weight); with x = Add(a, b), the residual add too:
             AddRMSNormalization(a, b, weight) [-> y, a + b when the residual stream reads the sum]
  Rotary     Add(Mul(x, cos), Mul(Concat(Neg(Slice(x, h:)), Slice(x, :h)) over the last axis,
             sin)) with h half of x's static last dim -> ai.sparse_rt::RotaryEmbedding(x, cos, sin)
  Grouped attention  ScaledDotProductAttention (see `fusion.fuse_attention`) whose kT is
             Transpose(k, [0, 1, 3, 2]) and whose k and v are both repeat_kv(., r) (Unsqueeze at
             axis 2, Expand to [B, Hkv, r, S, E], Reshape to [B, Hkv * r, S, E]) or both plain ->
             ai.sparse_rt::GroupedQueryAttention(q, k, v, mask), attribute kv_repeats r: torch's
             kernel reads each key/value head for its r query heads, nothing is repeated or transposed
  Head layouts  the Reshape [B, L, H * E] -> [B, L, H, E] and Transpose [0, 2, 1, 3] before a
             RotaryEmbedding, and the Transpose [0, 2, 1, 3] and Reshape after a
             GroupedQueryAttention, become the fused node's optional `shape` input (the rotary
             kernel reads the transposed view in place; attention merges its heads)
  SiLU gate  Mul(Mul(g, Sigmoid(g)), up) -> ai.sparse_rt::SiluMul(g, up)

As in `fusion`, a chain is fused only when its intermediate values have no reader outside
it and are not graph outputs, and its constants, axes and attributes are the expected ones.
Shape arithmetic the exporter computes at run time (the slice point of rotate_half, the
target shapes of repeat_kv) is evaluated from the inferred static dims (`_shape_elements`).
"""

from __future__ import annotations

from onnx import helper

from sparse_rt.converters.fusion import (_isclose, _mask_keeps_shape, _only_reader, _other, _replace, _scalar,
                                         _value_info)
from sparse_rt.ir.graph import SPARSE_DOMAIN, Graph, Node

# how deep `_shape_elements` follows a shape computation
_MAX_SHAPE_DEPTH = 12


def fuse_decoder_blocks(graph: Graph) -> int:
    """Apply the decoder fusions (after `fusion.fuse_attention`); returns the chains replaced."""
    return (fuse_rms_norm(graph) + fuse_rotary_embedding(graph) + fuse_grouped_attention(graph)
            + fuse_head_layouts(graph) + fuse_silu_mul(graph))


def remove_identity_casts(graph: Graph) -> int:
    """Drop each Cast whose input's dtype is known and equal to its target (readers read the
    input instead); a Cast whose output is a graph output stays."""
    outputs = {v.name for v in graph.outputs}
    renamed: dict[str, str] = {}
    kept: list[Node] = []
    for node in graph.nodes:
        node.inputs = [renamed.get(name, name) for name in node.inputs]
        source = graph.value(node.inputs[0]) if node.op_type == "Cast" and not node.domain else None
        if (source is not None and node.outputs[0] not in outputs
                and helper.tensor_dtype_to_np_dtype(node.attributes["to"]).name == source.dtype):
            renamed[node.outputs[0]] = node.inputs[0]
            continue
        kept.append(node)
    graph.nodes = kept
    graph.prune_unused()
    graph.validate()
    return len(renamed)


def fuse_rms_norm(graph: Graph) -> int:
    """Replace RMSNorm chains (and a residual Add feeding them) by one node; see the module docstring."""
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    producers = graph.producers()
    info = _value_info(graph)

    def only_user(value: str, *op_types: str) -> Node | None:
        user = _only_reader(value, consumers, outputs)
        return user if user is not None and user.op_type in op_types else None

    removed: set[int] = set()
    replacement: dict[int, Node] = {}
    for mean in graph.nodes:
        if mean.op_type != "ReduceMean" or mean.domain or not _reduces_last_axis(graph, mean, info):
            continue
        power = producers.get(mean.inputs[0])
        if (power is None or power.op_type != "Pow" or power.domain or only_user(mean.inputs[0], "ReduceMean") is None
                or not _isclose(_scalar(graph, power.inputs[1]), 2.0)):
            continue
        x = power.inputs[0]
        x_info = info.get(x)
        if x_info is None or x_info.dtype != "float32":
            continue
        add = only_user(mean.outputs[0], "Add")
        epsilon = _scalar(graph, _other(add, mean.outputs[0]) or "") if add is not None else None
        sqrt = only_user(add.outputs[0], "Sqrt") if epsilon is not None and epsilon >= 0 else None
        if sqrt is None:
            continue
        chain = [power, mean, add, sqrt]
        node = only_user(sqrt.outputs[0], "Div", "Reciprocal")
        if node is not None and node.op_type == "Div" and node.inputs[0] == x:  # Div(x, sqrt)
            normalized = node
        elif node is not None and (node.op_type == "Reciprocal" or (
                node.inputs[1] == sqrt.outputs[0] and _isclose(_scalar(graph, node.inputs[0]), 1.0))):
            normalized = only_user(node.outputs[0], "Mul")
            if normalized is None or _other(normalized, node.outputs[0]) != x:
                continue
            chain.append(node)
        else:
            continue
        chain.append(normalized)
        scaled = only_user(normalized.outputs[0], "Mul")
        weight = _other(scaled, normalized.outputs[0]) if scaled is not None else None
        if weight is None or weight not in graph.constants or graph.constants[weight].ndim != 1:
            continue
        chain.append(scaled)
        if any(id(n) in removed for n in chain):
            continue
        residual = producers.get(x)
        if (residual is not None and residual.op_type == "Add" and not residual.domain and len(residual.inputs) == 2
                and id(residual) not in removed and all(graph.value(name) is not None
                                                        and graph.value(name).dtype == "float32"
                                                        for name in residual.inputs)):
            shared = x in outputs or any(id(r) not in (id(power), id(normalized)) for r in consumers.get(x, []))
            fused = Node("AddRMSNormalization", [*residual.inputs, weight],
                         [scaled.outputs[0], x] if shared else [scaled.outputs[0]], {"epsilon": float(epsilon)},
                         graph.fresh_name(f"{mean.label()}_add_rms_norm"), SPARSE_DOMAIN)
            chain.append(residual)
            anchor = residual
        else:
            fused = Node("RMSNormalization", [x, weight], [scaled.outputs[0]], {"epsilon": float(epsilon)},
                         graph.fresh_name(f"{mean.label()}_rms_norm"), SPARSE_DOMAIN)
            anchor = power
        removed.update(id(n) for n in chain)
        replacement[id(anchor)] = fused
    _replace(graph, replacement, removed - set(replacement))
    return len(replacement)


def _reduces_last_axis(graph: Graph, mean: Node, info: dict) -> bool:
    """Whether a ReduceMean keeps dims and reduces exactly the last axis of its input (axes as
    an attribute, or as a constant second input from opset 18)."""
    if int(mean.attributes.get("keepdims", 1)) != 1:
        return False
    if len(mean.inputs) > 1 and mean.inputs[1]:
        axes = graph.constants.get(mean.inputs[1])
        axes = None if axes is None else [int(a) for a in axes.reshape(-1)]
    else:
        axes = mean.attributes.get("axes")
    source = info.get(mean.inputs[0])
    if axes is None or len(axes) != 1 or source is None or source.shape is None:
        return False
    return axes[0] in (-1, len(source.shape) - 1)


def fuse_rotary_embedding(graph: Graph) -> int:
    """Replace x * cos + rotate_half(x) * sin by RotaryEmbedding(x, cos, sin); see the module docstring."""
    if graph.opset < 10:  # Slice takes its bounds as inputs from opset 10 on
        return 0
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    producers = graph.producers()
    info = _value_info(graph)

    def only_user(value: str, op_type: str) -> Node | None:
        return _only_reader(value, consumers, outputs, op_type)

    def sliced(value: str) -> tuple[str, int, int, Node] | None:
        """(x, start, end, the Slice) when `value` = x[..., start:end] over the last axis, read once."""
        node = producers.get(value)
        if node is None or node.op_type != "Slice" or node.domain or len(node.inputs) < 4:
            return None
        if only_user(value, "Neg") is None and only_user(value, "Concat") is None:
            return None
        source = info.get(node.inputs[0])
        if source is None or source.shape is None:
            return None
        bounds = [_static_int(graph, name, producers) for name in node.inputs[1:4]]
        steps = _static_int(graph, node.inputs[4], producers) if len(node.inputs) > 4 and node.inputs[4] else 1
        if any(b is None for b in bounds) or steps != 1 or bounds[2] not in (-1, len(source.shape) - 1):
            return None
        return node.inputs[0], bounds[0], bounds[1], node

    removed: set[int] = set()
    replacement: dict[int, Node] = {}
    for concat in graph.nodes:
        if concat.op_type != "Concat" or concat.domain or len(concat.inputs) != 2:
            continue
        negate = producers.get(concat.inputs[0])
        if negate is None or negate.op_type != "Neg" or negate.domain or only_user(negate.outputs[0], "Concat") is None:
            continue
        upper, lower = sliced(negate.inputs[0]), sliced(concat.inputs[1])
        if upper is None or lower is None or upper[0] != lower[0]:
            continue
        x = upper[0]
        x_info = info.get(x)
        width = x_info.shape[-1] if x_info is not None and x_info.shape else None
        if (x_info is None or x_info.dtype != "float32" or not isinstance(width, int) or width % 2
                or concat.attributes.get("axis") not in (-1, len(x_info.shape) - 1)):
            continue
        half = width // 2
        if upper[1] != half or upper[2] < width or lower[1] != 0 or lower[2] != half:
            continue
        rotated = only_user(concat.outputs[0], "Mul")
        sin = _other(rotated, concat.outputs[0]) if rotated is not None else None
        total = only_user(rotated.outputs[0], "Add") if sin is not None else None
        direct = producers.get(_other(total, rotated.outputs[0]) or "") if total is not None else None
        if (direct is None or direct.op_type != "Mul" or direct.domain or x not in direct.inputs
                or only_user(direct.outputs[0], "Add") is not total):
            continue
        cos = _other(direct, x)
        tables = [graph.value(cos), graph.value(sin)]  # constants too: position tables folded at export
        if any(t is None or t.shape is None or t.dtype != "float32" or not _mask_keeps_shape(t.shape, x_info.shape)
               for t in tables):
            continue
        chain = [upper[3], lower[3], negate, concat, rotated, direct, total]
        if any(id(n) in removed for n in chain):
            continue
        removed.update(id(n) for n in chain)
        replacement[id(total)] = Node("RotaryEmbedding", [x, cos, sin], [total.outputs[0]], {},
                                      graph.fresh_name(f"{total.label()}_rotary"), SPARSE_DOMAIN)
    _replace(graph, replacement, removed - set(replacement))
    return len(replacement)


def fuse_grouped_attention(graph: Graph) -> int:
    """Replace ScaledDotProductAttention(q, Transpose(k'), v') with k' and v' both repeat_kv(., r)
    of [B, Hkv, S, E] values (or both plain rank-4 values: r = 1) by GroupedQueryAttention(q, k, v,
    mask), attribute kv_repeats r."""
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    producers = graph.producers()
    removed: set[int] = set()
    replacement: dict[int, Node] = {}
    for attention in graph.nodes:
        if attention.op_type != "ScaledDotProductAttention" or attention.domain != SPARSE_DOMAIN:
            continue
        q, k_t, v, mask = attention.inputs
        transpose = producers.get(k_t)
        if (transpose is None or transpose.op_type != "Transpose" or transpose.domain
                or list(transpose.attributes.get("perm", [])) != [0, 1, 3, 2]):
            continue
        keys, values = _repeated_kv(graph, transpose.inputs[0], producers), _repeated_kv(graph, v, producers)
        if keys is None or values is None or keys[1] != values[1]:
            continue
        chain = [transpose] if _only_reader(k_t, consumers, outputs) is attention else []
        if any(id(n) in removed for n in chain):
            continue
        removed.update(id(n) for n in chain)
        replacement[id(attention)] = Node(
            "GroupedQueryAttention", [q, keys[0], values[0], mask], list(attention.outputs),
            {**attention.attributes, "kv_repeats": keys[1]}, graph.fresh_name(f"{attention.label()}_grouped"),
            SPARSE_DOMAIN,
        )
    _replace(graph, replacement, removed)
    return len(replacement)


def fuse_head_layouts(graph: Graph) -> int:
    """Fold Transpose(Reshape(p, shape), [0, 2, 1, 3]) into the RotaryEmbedding reading it, and
    Reshape(Transpose(y, [0, 2, 1, 3]), shape) into the GroupedQueryAttention writing y, as their
    `shape` input (Reshape with allowzero 0, each intermediate read by the chain alone)."""
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    producers = graph.producers()

    def swaps_heads(node: Node | None) -> bool:
        return (node is not None and node.op_type == "Transpose" and not node.domain
                and list(node.attributes.get("perm", [])) == [0, 2, 1, 3])

    def reshapes(node: Node | None) -> bool:
        return (node is not None and node.op_type == "Reshape" and not node.domain
                and not int(node.attributes.get("allowzero", 0)))

    removed: set[int] = set()
    for node in graph.nodes:
        if node.domain != SPARSE_DOMAIN:
            continue
        if node.op_type == "RotaryEmbedding" and len(node.inputs) == 3:
            transpose = producers.get(node.inputs[0])
            reshape = producers.get(transpose.inputs[0]) if swaps_heads(transpose) else None
            if (reshapes(reshape) and _only_reader(reshape.outputs[0], consumers, outputs) is transpose
                    and _only_reader(transpose.outputs[0], consumers, outputs, domains=(SPARSE_DOMAIN,)) is node):
                node.inputs = [reshape.inputs[0], *node.inputs[1:], reshape.inputs[1]]
                removed.update((id(transpose), id(reshape)))
        elif node.op_type == "GroupedQueryAttention" and len(node.inputs) == 4:
            transpose = _only_reader(node.outputs[0], consumers, outputs, "Transpose")
            reshape = (_only_reader(transpose.outputs[0], consumers, outputs, "Reshape")
                       if swaps_heads(transpose) else None)
            if reshapes(reshape) and reshape.inputs[0] == transpose.outputs[0]:
                node.inputs = [*node.inputs, reshape.inputs[1]]
                node.outputs = list(reshape.outputs)
                removed.update((id(transpose), id(reshape)))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    graph.toposort()  # a folded Reshape's shape may be computed after the node that now reads it
    graph.prune_unused()
    graph.validate()
    return len(removed) // 2


def _repeated_kv(graph: Graph, value: str, producers: dict[str, Node]) -> tuple[str, int] | None:
    """(k, r) when `value` = Reshape(Expand(Unsqueeze(k, [2]), [B, Hkv, r, S, E]), [B, Hkv * r, S, E])
    for k [B, Hkv, S, E] (transformers' repeat_kv, shapes as computed from k's dims); (value, 1)
    for a plain rank-4 float32 value; else None."""
    reshape = producers.get(value)
    if reshape is not None and reshape.op_type == "Reshape" and not reshape.domain:
        expand = producers.get(reshape.inputs[0])
        unsqueeze = producers.get(expand.inputs[0]) if expand is not None and expand.op_type == "Expand" else None
        if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or unsqueeze.domain or expand.domain:
            return None
        axes = (_shape_elements(graph, unsqueeze.inputs[1], producers) if len(unsqueeze.inputs) > 1
                else unsqueeze.attributes.get("axes"))
        k = unsqueeze.inputs[0]
        dims = _dims(graph, k)
        if axes != [2] or dims is None or not isinstance(dims[1], int) or int(reshape.attributes.get("allowzero", 0)):
            return None
        target = _shape_elements(graph, expand.inputs[1], producers)
        if target is None or len(target) != 5 or not isinstance(target[2], int) or target[2] < 1:
            return None
        repeats = target[2]
        if target != [dims[0], dims[1], repeats, dims[2], dims[3]]:
            return None
        if _shape_elements(graph, reshape.inputs[1], producers) != [dims[0], dims[1] * repeats, dims[2], dims[3]]:
            return None
        return (k, repeats) if graph.value(k).dtype == "float32" else None
    known = graph.value(value)
    if known is None or known.dtype != "float32" or known.shape is None or len(known.shape) != 4:
        return None
    return value, 1


def _dims(graph: Graph, name: str) -> list | None:
    """A value's dims: ints where static, else (name, axis); None for an unknown shape."""
    known = graph.value(name)
    if known is None or known.shape is None:
        return None
    return [d if isinstance(d, int) else (name, axis) for axis, d in enumerate(known.shape)]


def _static_int(graph: Graph, name: str, producers: dict[str, Node]) -> int | None:
    """The value of a one-element integer value that shape arithmetic fixes at conversion."""
    elements = _shape_elements(graph, name, producers)
    if elements is None or len(elements) != 1 or not isinstance(elements[0], int):
        return None
    return elements[0]


def _shape_elements(graph: Graph, name: str, producers: dict[str, Node], depth: int = 0) -> list | None:
    """The elements of a scalar or 1-D integer value computed from shapes: each an int, or
    (value, axis) for a dim known only at run time (see `_dims`); None where the computation
    is not one of Shape, Gather, (Un)Squeeze, Reshape, Cast, Concat, integer arithmetic with
    static operands, Where(Equal(x, c), a, x)."""
    array = graph.constants.get(name)
    if array is not None:
        return [int(a) for a in array.reshape(-1)] if array.dtype.kind in "iu" and array.ndim <= 1 else None
    node = producers.get(name)
    if node is None or node.domain or depth > _MAX_SHAPE_DEPTH:
        return None

    def elements(value: str) -> list | None:
        return _shape_elements(graph, value, producers, depth + 1)

    op = node.op_type
    if op == "Shape":
        dims = _dims(graph, node.inputs[0])
        return None if dims is None else dims[slice(node.attributes.get("start", 0), node.attributes.get("end"))]
    if op == "Gather" and int(node.attributes.get("axis", 0)) == 0:
        data, indices = elements(node.inputs[0]), graph.constants.get(node.inputs[1])
        if data is None or indices is None or indices.ndim > 1:
            return None
        picked = [int(i) for i in indices.reshape(-1)]
        return [data[i] for i in picked] if all(-len(data) <= i < len(data) for i in picked) else None
    if op in ("Unsqueeze", "Squeeze", "Reshape", "Identity") or (
            op == "Cast" and helper.tensor_dtype_to_np_dtype(node.attributes["to"]).kind in "iu"):
        out = graph.value(node.outputs[0])
        return elements(node.inputs[0]) if out is not None and out.shape is not None and len(out.shape) <= 1 else None
    if op == "Concat" and int(node.attributes.get("axis", 0)) in (0, -1):
        parts = [elements(part) for part in node.inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if op in ("Mul", "Div", "Add", "Sub"):
        left, right = elements(node.inputs[0]), elements(node.inputs[1])
        if left is None or right is None or len(left) != len(right) and 1 not in (len(left), len(right)):
            return None
        size = max(len(left), len(right))
        left, right = left * (size // len(left)), right * (size // len(right))
        if not all(isinstance(e, int) for e in left + right) or (op == "Div" and 0 in right):
            return None
        apply = {"Mul": lambda a, b: a * b, "Add": lambda a, b: a + b, "Sub": lambda a, b: a - b,
                 "Div": lambda a, b: abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)}[op]  # truncating
        return [apply(a, b) for a, b in zip(left, right)]
    if op == "Where":
        return _where_equal(graph, node, producers, elements)
    return None


def _where_equal(graph: Graph, node: Node, producers: dict[str, Node], elements) -> list | None:
    """Where(Equal(x, c), a, x) elementwise on shape elements: a run-time dim (>= 0) never
    equals a negative c; otherwise both sides must be ints."""
    test = producers.get(node.inputs[0])
    if test is None or test.op_type != "Equal" or test.domain:
        return None
    x, c, chosen, other = (elements(test.inputs[0]), elements(test.inputs[1]), elements(node.inputs[1]),
                           elements(node.inputs[2]))
    if any(e is None for e in (x, c, chosen, other)) or not len(x) == len(c) == len(chosen) == len(other):
        return None
    result = []
    for xi, ci, ai, bi in zip(x, c, chosen, other):
        if isinstance(xi, int) and isinstance(ci, int):
            result.append(ai if xi == ci else bi)
        elif isinstance(ci, int) and ci < 0:
            result.append(bi)
        else:
            return None
    return result


def fuse_silu_mul(graph: Graph) -> int:
    """Replace Mul(Mul(g, Sigmoid(g)), up) (either operand order) by SiluMul(g, up)."""
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    removed: set[int] = set()
    replacement: dict[int, Node] = {}
    for sigmoid in graph.nodes:
        if sigmoid.op_type != "Sigmoid" or sigmoid.domain:
            continue
        gate = sigmoid.inputs[0]
        silu = _only_reader(sigmoid.outputs[0], consumers, outputs, "Mul")
        if silu is None or _other(silu, sigmoid.outputs[0]) != gate:
            continue
        product = _only_reader(silu.outputs[0], consumers, outputs, "Mul")
        up = _other(product, silu.outputs[0]) if product is not None else None
        known = graph.value(gate)
        if up is None or known is None or known.dtype != "float32":
            continue
        removed.update((id(sigmoid), id(silu), id(product)))
        replacement[id(product)] = Node("SiluMul", [gate, up], [product.outputs[0]], {},
                                        graph.fresh_name(f"{product.label()}_silu_mul"), SPARSE_DOMAIN)
    _replace(graph, replacement, removed - set(replacement))
    return len(replacement)
