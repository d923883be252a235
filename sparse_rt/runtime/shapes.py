"""Which nodes compute only from tensor shapes, so that a session can reuse their values.

Exported models compute their reshape targets at run time: in a BERT-base export
about 600 of 1100 nodes are Shape, Gather, Unsqueeze, Concat and Cast on int64
vectors. When every tensor's shape follows from the graph inputs' shapes, those
values do too, and a session computes them once per input-shape signature.

`shape_values(graph)` proves the first condition by one pass in topological order:
every op must be one whose output shapes follow from its input shapes, its
attributes and the values of its shape inputs (Reshape's target, Slice's bounds,
...), and those shape inputs must be constants or values computed from shapes. An
op not in `SHAPE_INPUTS` (NonZero, Unique, If, a random op, an unknown custom op)
makes the answer empty: no reuse, the session runs every node.
"""

from __future__ import annotations

from sparse_rt.ir.graph import Graph

# Ops whose outputs are computed from shapes alone, whatever their input's values.
SHAPE_SOURCES = frozenset({"Shape", "Size"})

# Ops that, given inputs computed from shapes (or constants), compute small values from them
# (not ConstantOfShape or Expand: their outputs are as large as the tensors whose shapes they take).
SHAPE_ARITHMETIC = frozenset({
    "Abs", "Add", "Cast", "Ceil", "Concat", "Div", "Equal", "Floor", "Gather", "Greater",
    "Identity", "Less", "Max", "Min", "Mod", "Mul", "Neg", "Not", "Range", "ReduceProd", "Reshape", "Slice",
    "Sqrt", "Squeeze", "Sub", "Unsqueeze", "Where",
})

_SAME_SHAPE = (
    "Abs Acos Acosh Add And Asin Asinh Atan Atanh BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Cast CastLike "
    "Ceil Celu Clip Cos Cosh Div Dropout Elu Equal Erf Exp Floor Gelu Greater GreaterOrEqual HardSigmoid HardSwish "
    "Identity IsInf IsNaN LeakyRelu Less LessOrEqual Log Max Mean Min Mish Mod Mul Neg Not Or PRelu Pow Reciprocal "
    "Relu Round Selu Shrink Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Sub Sum Tan Tanh ThresholdedRelu Where Xor"
).split()
_FROM_SHAPES = (
    "ArgMax ArgMin AveragePool BatchNormalization Concat Conv ConvTranspose CumSum DepthToSpace Einsum Flatten "
    "Gather GatherElements GatherND Gemm GlobalAveragePool GlobalMaxPool GroupNormalization Hardmax "
    "InstanceNormalization LayerNormalization LogSoftmax LpNormalization LRN MatMul MaxPool ScatterElements "
    "ScatterND Shape Size Softmax SpaceToDepth Transpose Trilu"
).split()
_REDUCE = "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare"

# Default-domain op -> positions of the inputs whose values decide its output shapes.
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    **{op: () for op in _SAME_SHAPE + _FROM_SHAPES},
    **{op: (1,) for op in _REDUCE.split()},
    "ConstantOfShape": (0,),
    "Expand": (1,),
    "OneHot": (1,),
    "Pad": (1, 3),
    "Range": (0, 1, 2),
    "Reshape": (1,),
    "Resize": (1, 2, 3),
    "Slice": (1, 2, 3, 4),
    "Split": (1,),
    "Squeeze": (1,),
    "Tile": (1,),
    "TopK": (1,),
    "Unsqueeze": (1,),
    "Upsample": (1,),
}
# The project's own ops compute their output shapes from their input shapes.
OWN_DOMAIN = "ai.sparse_rt"


def shape_values(graph: Graph) -> set[str]:
    """Names of the values that are functions of the graph inputs' shapes alone (never a
    graph output); empty when some op's output shape may depend on data.

    graph: nodes in topological order.
    """
    constants = set(graph.constants)
    outputs = {v.name for v in graph.outputs}
    derived: set[str] = set()
    for node in graph.nodes:
        if node.domain == OWN_DOMAIN:
            shape_inputs: tuple[int, ...] = ()
        elif node.domain in ("", "ai.onnx") and node.op_type in SHAPE_INPUTS:
            shape_inputs = SHAPE_INPUTS[node.op_type]
        else:
            return set()
        for position in shape_inputs:
            if position < len(node.inputs) and node.inputs[position]:
                name = node.inputs[position]
                if name not in constants and name not in derived:
                    return set()
        if node.domain == OWN_DOMAIN or any(out in outputs for out in node.outputs):
            continue
        present = [name for name in node.inputs if name]
        if node.op_type in SHAPE_SOURCES or (
            node.op_type in SHAPE_ARITHMETIC
            and any(name in derived for name in present)
            and all(name in derived or name in constants for name in present)
        ):
            derived.update(out for out in node.outputs if out)
    return derived
