"""GraphBuilder: appends nodes and constants to an ONNX graph under fresh, unique names.

Emitters and rules talk to the graph only through this object. It knows, for every tensor of the
canonical model, its element type, its static shape (ints, ``None`` for dynamic dims) and, for
initializers, its value, so emitters can do shape arithmetic at compile time when shapes are static
and fall back to in-graph shape arithmetic when they are not.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxattr.light import FLOAT_TYPES, declared_dims  # noqa: F401 - FLOAT_TYPES re-exported for the emitters



class _LazyArrays(dict):
    """name -> numpy value of an initializer, converted from its TensorProto on first use (most
    weights are never read at compile time; converting them all cost a copy of the model)."""

    def __init__(self, protos: dict, derived: dict | None = None):
        super().__init__()
        self._protos = protos
        self._derived = derived or {}  # name -> fn(self) computing the value from other constants

    def get(self, name, default=None):
        if not dict.__contains__(self, name):
            proto = self._protos.get(name)
            if proto is not None:
                dict.__setitem__(self, name, numpy_helper.to_array(proto))
            elif name in self._derived:
                dict.__setitem__(self, name, self._derived[name](self))
            else:
                return default
        return dict.__getitem__(self, name)

    def __getitem__(self, name):
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name):
        return dict.__contains__(self, name) or name in self._protos or name in self._derived


def dequantized_constants(graph: onnx.GraphProto, protos: dict) -> dict:
    """output -> fn(constants) for each DequantizeLinear of constants (per tensor or per axis; not blocked): its
    value, (q - zp) * s as onnxruntime computes it, for the rules and emitters that read a weight's value; the node
    itself stays in the graph (fold.NOT_FOLDED)."""
    found = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx") or \
                any(not i or i not in protos for i in node.input[:2]) or \
                (len(node.input) > 2 and node.input[2] and node.input[2] not in protos):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("block_size", 0):
            continue
        found[node.output[0]] = functools.partial(_dequantize, list(node.input), attrs.get("axis", 1))
    return found


def _dequantize(inputs: list, axis: int, constants) -> np.ndarray:
    zp = constants[inputs[2]] if len(inputs) > 2 and inputs[2] else None
    return dequantize_array(constants[inputs[0]], constants[inputs[1]], zp, axis)


def dequantize_array(q, scale, zp, axis: int) -> np.ndarray:
    """(q - zp) * s in s's float type, as onnxruntime's DequantizeLinear computes it; a 1-D s and zp run along
    ``axis`` of q."""
    q, scale = np.asarray(q), np.asarray(scale)
    zp = np.zeros((), np.int8) if zp is None else np.asarray(zp)
    if scale.ndim == 1 and q.ndim > 1:
        scale = along_axis(scale, q.ndim, axis % q.ndim)
        zp = along_axis(zp, q.ndim, axis % q.ndim) if zp.ndim == 1 else zp
    centred = q.astype(np.int64) - zp.astype(np.int64)
    return (centred.astype(scale.dtype) * scale).astype(scale.dtype)


def along_axis(values, rank: int, axis: int) -> np.ndarray:
    """A 1-D array of one value per slice along ``axis`` of a rank-``rank`` tensor, shaped [n, 1, ..., 1] to
    broadcast against it."""
    return np.reshape(values, (-1,) + (1,) * (rank - 1 - axis))


# ops that move a tensor's elements without changing them: integer codes stay the codes of one quantizer
CODE_MOVERS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


def follow_codes(node: onnx.NodeProto, known: dict) -> bool:
    """Where ``node`` moves (CODE_MOVERS) codes that ``known`` holds something for (their quantizer, its scale and
    zero point, ...), give its output the same entry, in place; whether it did. Called on nodes in topological
    order, it follows codes through any chain of movers."""
    if node.op_type in CODE_MOVERS and node.input[:1] and node.input[0] in known:
        known[node.output[0]] = known[node.input[0]]
        return True
    return False

# op type -> index of the input whose element type the (first) output has
SAME_TYPE_OPS = {
    **dict.fromkeys((
        "Abs", "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "ConvTranspose",
        "DepthToSpace", "Div", "Erf", "Exp", "Expand", "Flatten", "Gather", "GatherElements", "Gemm",
        "GlobalAveragePool", "GlobalMaxPool", "HardSigmoid", "Identity", "Log", "MatMul", "Max", "MaxPool", "Min",
        "Mul", "Neg", "Pad", "Pow", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceSum", "Relu", "Reshape",
        "Resize", "ScatterElements", "Sigmoid", "Sign", "Slice", "Softmax", "SpaceToDepth", "Split", "Sqrt",
        "Squeeze", "Sub", "Sum", "Tanh", "Tile", "Transpose", "Unsqueeze",
        "AffineGrid", "Ceil", "Col2Im", "Cos", "CumProd", "CumSum", "Det", "Einsum", "Floor", "GatherND",
        "GridSample", "LogSoftmax", "Mod", "ReduceL1", "ReduceL2", "ReduceMin", "ReduceProd", "ReduceSumSquare",
        "Round", "ScatterND", "Sin", "TensorScatter", "TopK", "Trilu",
        "DeformConv", "InstanceNormalization", "LayerNormalization", "LpPool", "LRN", "RoiAlign"), 0),
    "Where": 1,
    "CastLike": 1,
}
BOOL_OPS = frozenset({"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor",
                      "IsNaN", "IsInf"})


class GraphBuilder:
    """Collects new nodes (in emission order, hence topologically sorted) and initializers."""

    def __init__(self, model: onnx.ModelProto, prefix: str = "oa"):
        graph = model.graph
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        # our constants, name -> array, until write_initializers puts them into a graph (each array's
        # bytes are copied once, straight into the graph that keeps them; fc6's W+ is 411 MB)
        self.pending: dict[str, np.ndarray] = {}
        # node name -> fn(node) to call once that node is in the assembled graph (a Loop body's weights)
        self.fill_later: dict = {}
        protos = {t.name: t for t in graph.initializer}
        self.constants = _LazyArrays(protos, dequantized_constants(graph, protos))
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list | None] = {}
        for vi in itertools.chain(graph.input, graph.value_info, graph.output):
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                continue
            self.types[vi.name] = tt.elem_type
            self.shapes[vi.name] = declared_dims(vi)
        for t in graph.initializer:
            self.types[t.name] = t.data_type
            self.shapes[t.name] = list(t.dims)
        self._used = {n for node in graph.node for n in itertools.chain(node.input, node.output)}
        self._used |= set(self.types) | {node.name for node in graph.node}  # fresh() names nodes too
        self._counter = itertools.count()
        self._const_cache: dict[tuple, str] = {}
        self.cache: dict = {}  # emitters' compile-time results shared across nodes (e.g. flipped weights)
        # relevance tensor -> forward tensor of its shape such that the relevance is exactly 0 wherever that
        # tensor is 0 (R = x * c for LRP's x-times rules); rules use it to divide by a cheaper denominator
        self.zero_where: dict[str, str] = {}
        # relevance tensor -> (x, s) when it was emitted as Mul(x, s) with x's shape (a residual z split, an
        # x-times LRP rule): a rule dividing by stab(x) then needs only s and x / stab(x), and relevances
        # x * s_k arriving at one x are summed as x * (s_1 + s_2)
        self.product_of: dict[str, tuple[str, str]] = {}
        # tensors whose relevance (the signal the reverse pass carries there) is also an output (keep=), and
        # what reverse_pass found there: tensor -> the carried signal, summed over the tensor's readers
        self.keep: frozenset = frozenset()
        self.kept: dict[str, str] = {}
        # conditioned tensors (condition=): tensor -> the graph input holding its mask, and those reached
        self.conditions: dict[str, str] = {}
        self.conditioned: set = set()

    # ---- names -----------------------------------------------------------------------------
    def fresh(self, hint: str = "t") -> str:
        while True:
            name = f"{self.prefix}/{hint}_{next(self._counter)}"
            if name not in self._used:
                self._used.add(name)
                return name

    # ---- emission --------------------------------------------------------------------------
    def op(self, op_type: str, inputs, n_out: int = 1, domain: str = "", **attrs):
        """Append one node; returns its output name (or a list of names when n_out > 1). The first
        output's element type is recorded when it follows from the inputs or attributes (see
        ``_output_type``), so constants made ``like`` it get its type (float16/float64 graphs)."""
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        node = helper.make_node(
            op_type, [i if i is not None else "" for i in inputs], outs,
            name=self.fresh(op_type), domain=domain or None, **attrs,
        )
        self.nodes.append(node)
        elem = None if domain else self._output_type(op_type, node.input, attrs)
        if elem is not None:
            self.types[outs[0]] = elem
        return outs[0] if n_out == 1 else outs

    def _output_type(self, op_type: str, inputs, attrs) -> int | None:
        if op_type in SAME_TYPE_OPS:
            return self.types.get(inputs[SAME_TYPE_OPS[op_type]]) if len(inputs) > SAME_TYPE_OPS[op_type] else None
        if op_type == "Cast":
            return attrs.get("to")
        if op_type in ("RandomNormalLike", "EyeLike"):
            return attrs.get("dtype", self.types.get(inputs[0]))
        if op_type == "ConstantOfShape":
            return attrs["value"].data_type if "value" in attrs else TensorProto.FLOAT
        if op_type in BOOL_OPS:
            return TensorProto.BOOL
        if op_type in ("Shape", "Size", "ArgMax", "ArgMin", "NonZero"):
            return TensorProto.INT64
        return None

    def const(self, value, dtype=np.float32, hint: str = "c") -> str:
        """An initializer holding ``value``; small constants are shared."""
        arr = np.asarray(value, dtype=dtype)
        key = None
        if arr.size <= 16:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._const_cache:
                return self._const_cache[key]
        name = self.fresh(hint)
        self.pending[name] = arr
        self.constants[name] = arr
        self.shapes[name] = list(arr.shape)
        self.types[name] = helper.np_dtype_to_tensor_dtype(arr.dtype)
        if key is not None:
            self._const_cache[key] = name
        return name

    def write_initializers(self, field, names=None) -> None:
        """Move our constants (those in ``names``; all by default) into ``field``, a graph's repeated
        initializer field, as TensorProtos with raw little-endian data. Each is written in place
        (field.add()), not built and then copied in: protobuf copies a message's bytes on every append."""
        for name in [n for n in self.pending if names is None or n in names]:
            write_tensor(field, name, self.pending.pop(name))

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1), np.int64, "i")

    def float_type(self, like: str | None) -> int:
        """The element type (TensorProto enum) of float tensor ``like``; float32 when unknown."""
        t = self.types.get(like) if like is not None else None
        return t if t in FLOAT_TYPES else TensorProto.FLOAT

    def float_dtype(self, like: str | None) -> np.dtype:
        """The numpy dtype of float tensor ``like``; float32 when unknown."""
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.float_type(like)))

    def fill_value(self, value: float, like: str | None) -> onnx.TensorProto:
        """ConstantOfShape's ``value`` attribute: ``value`` in the element type of ``like``."""
        return numpy_helper.from_array(np.full(1, value, self.float_dtype(like)))

    def scalar(self, value, like: str | None = None) -> str:
        """A 0-d float constant in the element type of tensor ``like`` (float32 by default)."""
        dtype = self.float_dtype(like)
        return self.const(np.asarray(value, dtype=dtype), dtype, "s")

    # ---- facts about tensors ---------------------------------------------------------------
    def value(self, name: str):
        """The compile-time value of ``name`` when it is an initializer, else None."""
        return self.constants.get(name)

    def shape(self, name: str):
        return self.shapes.get(name)

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    def static_shape(self, name: str):
        """The shape as a tuple of ints if every dim is known, else None."""
        s = self.shapes.get(name)
        if s is None or any(not isinstance(d, int) for d in s):
            return None
        return tuple(s)

    def is_float(self, name: str) -> bool:
        return self.types.get(name) in FLOAT_TYPES

    def set_info(self, name: str, like: str) -> None:
        """Record that ``name`` has the type and shape of ``like``; a float ``name`` keeps its type where ``like`` is
        an integer tensor (the gradient of a quantizer's codes, emitters/quantize.py)."""
        if like in self.types and not (name in self.types and self.types[like] not in FLOAT_TYPES):
            self.types[name] = self.types[like]
        if like in self.shapes:
            self.shapes[name] = self.shapes[like]

    # ---- common small graphs -----------------------------------------------------------------
    def shape_of(self, name: str) -> str:
        s = self.static_shape(name)
        if s is not None:
            return self.ints(s)
        return self.op("Shape", [name])

    def float_dim(self, name: str, axis: int, like: str) -> str:
        """Dimension ``axis`` of ``name`` as a 0-d float in the type of ``like`` (a constant when static)."""
        shape = self.shapes.get(name)
        if shape is not None and isinstance(shape[axis], int):
            return self.scalar(float(shape[axis]), like)
        dim = self.op("Gather", [self.op("Shape", [name]), self.const(axis, np.int64)])
        return self.op("Cast", [dim], to=self.float_type(like))

    def zeros_like(self, name: str) -> str:
        """Zeros of the shape and float type of ``name`` (never x*0, which keeps NaNs)."""
        return self.full_like(name, 0.0)

    def full_like(self, name: str, value: float) -> str:
        """``value`` everywhere, in the shape and float type of ``name``."""
        out = self.op("ConstantOfShape", [self.shape_of(name)], value=self.fill_value(value, name))
        self.set_info(out, name)
        return out

    def identity(self, side: str, like: str) -> str:
        """The identity matrix [n, n] in the float type of ``like``, n held by the int64 tensor ``side`` [1] (known at
        run time; onnxruntime's CPU EyeLike has no float16 kernel, so float16 is made as float32 and cast)."""
        square = self.op("ConstantOfShape", [self.op("Concat", [side, side], axis=0)])
        ftype = self.float_type(like)
        if ftype == TensorProto.FLOAT16:
            return self.op("Cast", [self.op("EyeLike", [square], dtype=TensorProto.FLOAT)], to=ftype)
        return self.op("EyeLike", [square], dtype=ftype)

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int = 1) -> str:
        """Reduce* with axes as an input (ReduceSum from opset 13, the others from 18) or attribute."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.ints(axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def add_all(self, names: list[str]) -> str:
        """Sum of tensors of one shape (fan-out accumulation). Products x * s_k of one x (LRP's x-times
        rules at a tensor read twice) are summed as x * (s_1 + ... + s_n): one Mul instead of n."""
        if len(names) == 1:
            return names[0]
        factored = self.factored_sum(names)
        if factored is not None:
            return factored
        out = self.op("Add" if len(names) == 2 else "Sum", names)
        where = {self.zero_where.get(n) for n in names}
        if len(where) == 1 and None not in where:
            self.zero_where[out] = where.pop()
        return out

    def factored_sum(self, names: list[str]) -> str | None:
        """x * (s_1 + ... + s_n) when every name is a recorded product x * s_k of one x, else None."""
        factors = [self.product_of.get(n) for n in names]
        if None in factors or len({x for x, _ in factors}) != 1:
            return None
        x = factors[0][0]
        total = self.op("Add" if len(names) == 2 else "Sum", [s for _, s in factors])
        out = self.op("Mul", [x, total])
        self.product_of[out] = (x, total)
        self.zero_where[out] = x
        return out

    def declared_shapes(self, names, rename: dict | None = None) -> list[onnx.ValueInfoProto]:
        """value_info for the tensors ``names`` whose type and whole shape are known (symbolic dims
        included; ``rename`` maps a symbol to another, e.g. the batch inside a sample Loop).
        onnxruntime's shape inference loses a symbolic batch dim at the seed (its ConstantOfShape and
        ScatterElements); declared, it lets the blocked layout (emitters/conv.py) prove that the two
        sides of a backward Mul or Add have one shape. The checker in assemble rejects a declared shape
        that disagrees with the inferred one (for models under 2 GB, the ones it can check)."""
        rename = rename or {}
        out = []
        for name in names:
            shape, elem = self.shapes.get(name), self.types.get(name)
            if name and shape is not None and elem is not None and all(d is not None for d in shape):
                out.append(helper.make_tensor_value_info(name, elem, [rename.get(d, d) for d in shape]))
        return out

    def replay(self, node: onnx.NodeProto, replace: dict[str, str]) -> list[str]:
        """Emit a copy of ``node`` with some inputs replaced and fresh outputs; returns them."""
        outs = [self.fresh(node.op_type.lower()) if o else "" for o in node.output]
        copy = helper.make_node(
            node.op_type, [replace.get(i, i) for i in node.input], outs,
            name=self.fresh(node.op_type), domain=node.domain or None,
        )
        copy.attribute.extend(node.attribute)
        self.nodes.append(copy)
        if outs and outs[0] and node.output[0] in self.types:
            self.types[outs[0]] = self.types[node.output[0]]
        return outs

    def child(self) -> "GraphBuilder":
        """A builder for a subgraph (Loop body): own node list, shared names, constants and facts.
        Its constants become initializers of the main graph, visible from the body."""
        c = GraphBuilder.__new__(GraphBuilder)
        c.__dict__.update(self.__dict__)
        c.nodes = []
        c.keep, c.kept = frozenset(), {}  # a Loop body's signals are per point, not the map's
        c.conditions, c.conditioned = {}, set()
        return c


def write_tensor(field, name: str, arr: np.ndarray) -> None:
    """Append ``arr`` to the repeated TensorProto ``field`` as tensor ``name``, built in place (raw
    little-endian data for numeric and bool arrays; numpy_helper otherwise)."""
    if arr.dtype.kind not in "fiub":
        field.append(numpy_helper.from_array(arr, name))
        return
    t = field.add()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
    t.dims.extend(arr.shape)
    t.raw_data = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()


def node_reads(node: onnx.NodeProto) -> list[str]:
    """The node's inputs plus every name its subgraphs' nodes read (If/Loop/Scan bodies read outer names)."""
    names = list(node.input)
    for attr in node.attribute:
        for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
            for inner in g.node:
                names.extend(node_reads(inner))
    return names


def outer_reads(node: onnx.NodeProto) -> list[str]:
    """The names ``node`` reads from its scope: its inputs, and what its subgraphs read but do not define."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for inner in g.node:
                names.extend(i for i in outer_reads(inner) if i not in local)
                local.update(inner.output)
            names.extend(o.name for o in g.output if o.name not in local)
    return names


def rename_reads(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    """Rename, in place, what ``node`` reads from its scope (outer_reads): its inputs, and the names its subgraphs
    (If branches, Loop bodies) read but do not define, their outputs too."""
    for k, name in enumerate(node.input):
        if name in rename:
            node.input[k] = rename[name]
    for attr in node.attribute:
        for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for inner in g.node:
                rename_reads(inner, {k: v for k, v in rename.items() if k not in local})
                local.update(inner.output)
            for out in g.output:
                if out.name not in local and out.name in rename:
                    out.name = rename[out.name]


def names_read(nodes) -> set:
    """Every tensor name read by ``nodes`` or by nodes of their subgraphs (node_reads over a node list)."""
    return {name for n in nodes for name in node_reads(n)}


def live_nodes(nodes, wanted) -> list:
    """``nodes`` (topologically sorted) without those no name in ``wanted`` depends on, in their order."""
    live, keep = set(wanted), []
    for n in reversed(nodes):
        if live.intersection(n.output):
            keep.append(n)
            live |= names_read([n])
    keep.reverse()
    return keep
