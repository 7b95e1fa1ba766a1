"""Property tests: random small graphs from the supported op set, compiled for ``gradient``.

Hypothesis builds a chain of random ops (Conv 1D/2D with random strides, pads, dilations, groups and
auto_pad; Gemm; MatMul with a constant on either side; Add/Sub/Mul/Div broadcasting against constants
and against a second branch; Relu, LeakyRelu, Sigmoid, Tanh, Elu, Softplus, Clip; MaxPool, AveragePool,
GlobalAveragePool; Reshape, Flatten, Transpose, Concat, Slice, Pad; ReduceMean, ReduceSum; Softmax;
BatchNormalization) on an input whose batch dim is the symbol "N" (in 30% of the graphs a fixed number,
since static shapes take other emitter paths). Structure, weights and data come from one seed per
example (derandomized, so CI runs the same 300 graphs every time). For every graph:

- ``relevance`` equals the float64 central finite-difference gradient of the seeded output (the sum of
  all outputs for ``neuron="all"``, the ``target`` logit for ``neuron="index"``), computed by onnx's
  reference evaluator, an implementation independent of onnxruntime;
- the original outputs are unchanged (compiled vs original model, both on onnxruntime);
- relevance is finite and has the input's shape;
- the compiled model passes ``onnx.checker`` with ``full_check`` and its batch dim is still "N".

The finite differences of every coordinate of every sample run as ONE batched reference evaluation:
no op in these graphs mixes samples, so row k of a batch of perturbed copies is f(copy k). MaxPool,
AveragePool and Pad are evaluated by numpy code below (onnx's reference pools mishandle asymmetric 1-D
pads; its Pad refuses negative pads). Not generated: ceil_mode where a window would start in the right
padding (onnx's shape inference and onnxruntime disagree on the output size), and dilations with
SAME padding (onnxruntime refuses them).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import onnxattr

OPSET = 17
MAX_ELEMENTS = 192  # per sample, for every intermediate tensor: keeps the reference evaluation fast
H = 1e-6  # finite-difference step (float64)

# Tolerance. relevance comes from onnxruntime in float32, the reference from float64 central differences
# (truncation H^2 * f''' ~ 1e-12, rounding 1e-16 * |F| / H ~ 1e-10). What is left is float32 rounding
# of the forward and backward graphs, relative to the sample's largest |gradient|: mostly ~1e-6, at worst
# ~3e-5 on these 300 graphs (Softmax/Div chains). RTOL = 2e-4 of the sample's largest |gradient| is 6x
# that worst case, while a wrong VJP (a missed crop, a wrong divisor, a wrong sign, a broadcast not
# summed back) is off by O(1) of a typical entry: each such deliberate mutation of onnxattr/emitters/
# (conv crop, AveragePool divisor, Softmax, Div, unbroadcast, Slice) made this test fail.
RTOL, ATOL = 2e-4, 1e-6

# Kinks (Relu/LeakyRelu/Elu at 0, Clip at its bounds, MaxPool ties) are never assumed away: a coordinate
# whose one-sided differences (F(x+h)-F(x))/h and (F(x)-F(x-h))/h disagree by more than the tolerance has
# a kink within H of x; there the gradient must equal the one-sided difference that does not cross the
# kink (the side x lies on). Elsewhere a kink shifts the central difference by at most half the tolerance.


class RandomNet:
    """Grows a random graph op by op; tracks each tensor's per-sample shape with shape inference."""

    def __init__(self, rng, x_shape, batch_dim="N"):
        self.rng = rng
        self.batch_dim = batch_dim  # "N", or a fixed batch size (static shapes take other emitter paths)
        self.nodes, self.inits = [], []
        self.count = 0
        self.x_shape = list(x_shape)
        self.shapes = {"x": list(x_shape)}
        self.kinds = []  # op kinds used (for hypothesis' statistics)

    def __repr__(self):
        return "\n".join([f"x: [N, {self.x_shape}]"] + [
            f"{n.op_type}({', '.join(n.input)}) -> {n.output[0]} "
            + str({a.name: helper.get_attribute_value(a) for a in n.attribute}) for n in self.nodes])

    # ---- drawing helpers -------------------------------------------------------------------------
    def int(self, lo, hi):
        return int(self.rng.integers(lo, hi + 1))

    def pick(self, seq):
        seq = list(seq)
        return seq[self.int(0, len(seq) - 1)]

    def flag(self):
        return self.int(0, 1) == 1

    def weights(self, shape, scale=1.0):
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    # ---- graph helpers ---------------------------------------------------------------------------
    def fresh(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, arr, hint="c"):
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op, inputs, n_out=1, **attrs):
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh("n_" + op), **attrs))
        shapes = infer_shapes(self, outs[0])
        self.shapes[outs[0]] = shapes
        return outs[0]

    # ---- ops -------------------------------------------------------------------------------------
    def activation(self, x):
        op = self.pick(["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Softplus", "Clip"])
        self.kinds.append(op)
        if op == "LeakyRelu":
            return self.node(op, [x], alpha=self.pick([0.01, 0.1, 0.3]))
        if op == "Elu":
            return self.node(op, [x], alpha=self.pick([1.0, 0.5, 2.0]))
        if op == "Clip":
            lo = self.pick([None, -1.0, -0.25])
            hi = self.pick([None, 0.5, 1.5]) if lo is not None else self.pick([0.5, 1.5])
            ins = [x, "" if lo is None else self.const(np.float32(lo)),
                   *([] if hi is None else [self.const(np.float32(hi))])]
            return self.node(op, ins)
        return self.node(op, [x])

    def broadcast_constant(self, x):
        """x (op) c or c (op) x with c of a shape that broadcasts against [N, *shape]."""
        op = self.pick(["Add", "Sub", "Mul", "Div"])
        self.kinds.append(op + "_const")
        s = self.shapes[x]
        rank = self.int(0, len(s) + 1)
        cshape = [self.pick([1, d]) for d in s[len(s) - min(rank, len(s)):]]
        if rank == len(s) + 1:
            cshape = [1] + cshape
        c = self.weights(cshape)
        if op == "Div":  # keep the divisor away from 0
            c = (np.sign(c) + (c == 0)) * (0.5 + np.abs(c)).astype(np.float32)
            return self.node(op, [x, self.const(c.astype(np.float32))])
        ins = [x, self.const(c)]
        return self.node(op, ins if self.flag() else ins[::-1])

    def branch_binary(self, x):
        """Fan-out: x combined with a function of itself (gates, residuals, centring, a bounded divisor)."""
        op = self.pick(["Add", "Sub", "Mul", "Div"])
        self.kinds.append(op + "_branch")
        r = len(self.shapes[x])
        if op != "Div" and self.flag():  # x (op) a mean of x kept as [N, 1, ...]: a broadcast operand
            self.kinds.append("broadcast_branch")
            axes = sorted(int(a) for a in self.rng.choice(np.arange(1, r + 1), self.int(1, r), replace=False))
            other = self.node("ReduceMean", [x], axes=axes, keepdims=1)
            ins = [x, other]
            return self.node(op, ins if self.flag() else ins[::-1])
        other = self.node(self.pick(["Sigmoid", "Tanh"]), [x])
        if op == "Div":  # x / (1 + sigmoid-or-tanh(x)^2) keeps the divisor in [1, 2]
            other = self.node("Add", [self.node("Mul", [other, other]), self.const(np.float32(1.0))])
            return self.node(op, [x, other])
        ins = [x, other]
        return self.node(op, ins if self.flag() else ins[::-1])

    def conv(self, x):
        c_in, *spatial = self.shapes[x]
        nsp = len(spatial)
        group = self.pick([g for g in range(1, c_in + 1) if c_in % g == 0])
        c_out = group * self.int(1, max(1, 4 // group))
        kernel, strides, dil, begin, end = [], [], [], [], []
        for L in spatial:
            k, d = self.int(1, 3), self.int(1, 2)
            pb, pe = self.int(0, 2), self.int(0, 2)
            if L + pb + pe < d * (k - 1) + 1:
                k, d = 1, 1
            kernel.append(k), dil.append(d), begin.append(pb), end.append(pe)
            strides.append(self.int(1, 2))
        attrs = dict(kernel_shape=kernel, strides=strides, dilations=dil)
        auto = self.pick(["NOTSET"] * 3 + ["SAME_UPPER", "SAME_LOWER", "VALID"])
        if auto.startswith("SAME") and any(d > 1 for d in dil):
            auto = "NOTSET"  # onnxruntime's Conv refuses dilations with SAME padding
        if auto == "NOTSET":
            attrs["pads"] = begin + end
        elif auto == "VALID" and any(L < d * (k - 1) + 1 for L, k, d in zip(spatial, kernel, dil)):
            attrs["pads"] = begin + end
        else:
            attrs["auto_pad"] = auto
        if group > 1:
            attrs["group"] = group
        fan_in = c_in // group * int(np.prod(kernel))
        w = self.weights([c_out, c_in // group] + kernel, 1 / np.sqrt(fan_in))
        ins = [x, self.const(w, "W")]
        if self.flag():
            ins.append(self.const(self.weights([c_out], 0.5), "B"))
        self.kinds.append(f"Conv{nsp}d" + ("_grouped" if group > 1 else "") + ("_" + auto if auto != "NOTSET" else ""))
        return self.node("Conv", ins, **attrs)

    def pool(self, x):
        op = self.pick(["MaxPool", "AveragePool", "GlobalAveragePool"])
        self.kinds.append(op)
        if op == "GlobalAveragePool":
            return self.node(op, [x])
        spatial = self.shapes[x][1:]
        kernel = [self.int(1, min(3, L)) for L in spatial]
        if all(k == 1 for k in kernel):
            kernel[-1] = min(2, spatial[-1])
        strides, begin, end, dil = [], [], [], []
        for L, k in zip(spatial, kernel):
            dil.append(self.int(1, 2) if op == "MaxPool" and L >= 2 * (k - 1) + 1 else 1)
            strides.append(self.int(1, 2))
            begin.append(self.int(0, k - 1)), end.append(self.int(0, k - 1))
        attrs = dict(kernel_shape=kernel, strides=strides, pads=begin + end)
        if op == "MaxPool" and any(d > 1 for d in dil):
            attrs["dilations"] = dil
        if self.flag() and all(
            (_out_len(L, k, s, d, b, e, ceil=True) - 1) * s < L + b
            for L, k, s, d, b, e in zip(spatial, kernel, strides, dil, begin, end)
        ):
            # ceil_mode only where no window starts in the right padding: there onnx's shape inference
            # counts that window and onnxruntime drops it, so the model itself is ambiguous
            attrs["ceil_mode"] = 1
        if op == "AveragePool":
            attrs["count_include_pad"] = self.int(0, 1)
        return self.node(op, [x], **attrs)

    def batchnorm(self, x):
        self.kinds.append("BatchNormalization")
        c = self.shapes[x][0]
        scale, bias, mean = self.weights([c]), self.weights([c]), self.weights([c], 0.5)
        var = (0.5 + np.abs(self.weights([c]))).astype(np.float32)
        ins = [x] + [self.const(a, "bn") for a in (scale, bias, mean, var)]
        return self.node("BatchNormalization", ins, epsilon=self.pick([1e-5, 1e-3]))

    def dense(self, x):
        """Gemm or MatMul with a constant right operand on [N, K]."""
        k = self.shapes[x][0]
        m = self.int(1, 8)
        if self.flag():
            self.kinds.append("Gemm")
            trans_b = self.int(0, 1)
            w = self.weights([m, k] if trans_b else [k, m], 1 / np.sqrt(k))
            ins = [x, self.const(w, "W")]
            bias = self.pick(["none", "vector", "row"])
            if bias != "none":
                ins.append(self.const(self.weights([m] if bias == "vector" else [1, m]), "C"))
            return self.node("Gemm", ins, transB=trans_b, alpha=self.pick([1.0, 0.5]),
                             beta=self.pick([1.0, 2.0]))
        self.kinds.append("MatMul_right")
        return self.node("MatMul", [x, self.const(self.weights([k, m], 1 / np.sqrt(k)), "W")])

    def matmul3(self, x):
        """[N, A, K]: x @ W[K, M] or W[M, A] @ x (a constant left operand, broadcast over N)."""
        a, k = self.shapes[x]
        if self.flag():
            self.kinds.append("MatMul_right")
            return self.node("MatMul", [x, self.const(self.weights([k, self.int(1, 5)], 1 / np.sqrt(k)), "W")])
        self.kinds.append("MatMul_left")
        return self.node("MatMul", [self.const(self.weights([self.int(1, 5), a], 1 / np.sqrt(a)), "W"), x])

    def transpose(self, x):
        self.kinds.append("Transpose")
        r = len(self.shapes[x])
        perm = self.rng.permutation(np.arange(1, r + 1))
        return self.node("Transpose", [x], perm=[0] + [int(p) for p in perm])

    def reshape(self, x):
        s = self.shapes[x]
        size = int(np.prod(s))
        choice = self.pick(["Flatten", "flat", "split"])
        self.kinds.append("Flatten" if choice == "Flatten" else "Reshape")
        if choice == "Flatten":
            return self.node("Flatten", [x], axis=1)
        if choice == "flat":
            return self.node("Reshape", [x, self.const(np.array(self.pick([[0, -1], [0, size]]), np.int64))])
        divisors = [d for d in range(1, size + 1) if size % d == 0]
        a = self.pick(divisors)
        shape = self.pick([[0, a, -1], [0, a, size // a], [0, -1, size // a]])
        return self.node("Reshape", [x, self.const(np.array(shape, np.int64))])

    def slice(self, x):
        self.kinds.append("Slice")
        s = self.shapes[x]
        axes = [a for a in range(len(s)) if s[a] >= 2] or [0]
        axis = self.pick(axes)
        L = s[axis]
        step = self.pick([1, 1, 2, -1])
        if step > 0:
            start = self.int(0, L - 1)
            stop = self.pick([self.int(start + 1, L), 2**62, -1 if start < L - 1 else L])
        else:
            start = self.pick([self.int(0, L - 1), -1])
            stop = self.pick([-(L + 1), 0 if (start % L) > 0 else -(L + 1)])
        ins = [x] + [self.const(np.array([v], np.int64)) for v in (start, stop, axis + 1, step)]
        return self.node("Slice", ins)

    def pad(self, x):
        self.kinds.append("Pad")
        s = self.shapes[x]
        begin = [0] + [self.int(-1 if d >= 3 else 0, 2) for d in s]
        end = [0] + [self.int(-1 if d >= 3 else 0, 2) for d in s]
        value = self.pick([None, 0.0, 0.7])
        ins = [x, self.const(np.array(begin + end, np.int64))]
        if value is not None:
            ins.append(self.const(np.float32(value)))
        return self.node("Pad", ins, mode="constant")

    def concat(self, x):
        self.kinds.append("Concat")
        r = len(self.shapes[x])
        other = self.activation(x) if self.flag() else self.broadcast_constant(x)
        ins = [x, other] if self.flag() else [other, x]
        return self.node("Concat", ins, axis=self.pick(list(range(1, r + 1)) + [-1]))

    def reduce(self, x):
        op = self.pick(["ReduceMean", "ReduceSum"])
        self.kinds.append(op)
        r = len(self.shapes[x])
        axes = sorted(int(a) for a in self.rng.choice(np.arange(1, r + 1), self.int(1, r), replace=False))
        keep = self.int(0, 1) if len(axes) < r else 1
        axes = [a if self.flag() else a - r - 1 for a in axes]  # positive or negative spelling
        if op == "ReduceSum":  # axes are an input since opset 13
            return self.node(op, [x, self.const(np.array(axes, np.int64))], keepdims=keep)
        return self.node(op, [x], axes=axes, keepdims=keep)

    def softmax(self, x):
        self.kinds.append("Softmax")
        r = len(self.shapes[x])
        return self.node("Softmax", [x], axis=self.pick(list(range(1, r + 1)) + [-1]))

    def step(self, x):
        """One random op on x. Layer ops come first in the list: hypothesis favours early entries."""
        s = self.shapes[x]
        choices = []
        if len(s) in (2, 3) and s[0] <= 4:
            choices += [self.conv, self.pool, self.conv, self.batchnorm, self.pool]
        if len(s) == 1:
            choices += [self.dense, self.dense]
        if len(s) == 2:
            choices.append(self.matmul3)
        choices += [self.activation, self.broadcast_constant, self.branch_binary, self.reshape, self.slice,
                    self.pad, self.concat, self.reduce, self.softmax]
        if len(s) >= 2:
            choices.append(self.transpose)
        return self.pick(choices)(x)


def _out_len(L, k, s, d, begin, end, ceil):
    span = (L + begin + end - d * (k - 1) - 1) / s
    return int(np.ceil(span) if ceil else np.floor(span)) + 1


def _pool64(x, node, kind):
    """Float64 MaxPool/AveragePool in numpy (onnx's reference pools mishandle asymmetric 1-D pads)."""
    kernel = list(node.kernel_shape)
    nsp = len(kernel)
    strides = list(node.strides or [1] * nsp)
    dil = list(getattr(node, "dilations", None) or [1] * nsp)
    pads = list(node.pads or [0] * (2 * nsp))
    ceil = bool(node.ceil_mode)
    spatial = x.shape[2:]
    out = []
    for i, L in enumerate(spatial):
        o = _out_len(L, kernel[i], strides[i], dil[i], pads[i], pads[nsp + i], ceil)
        if ceil and (o - 1) * strides[i] >= L + pads[i]:
            o -= 1  # onnxruntime ignores windows that start in the right padding
        out.append(o)
    extra = [max((o - 1) * s + d * (k - 1) + 1 - (L + b + e), 0) for o, s, d, k, L, b, e
             in zip(out, strides, dil, kernel, spatial, pads[:nsp], pads[nsp:])]
    size = [L + b + e + r for L, b, e, r in zip(spatial, pads[:nsp], pads[nsp:], extra)]
    inside = np.zeros(size, bool)  # a real input position
    inside[tuple(slice(b, b + L) for b, L in zip(pads[:nsp], spatial))] = True
    in_pad = np.zeros(size, bool)  # inside the padded input (count_include_pad counts these)
    in_pad[tuple(slice(0, L + b + e) for L, b, e in zip(spatial, pads[:nsp], pads[nsp:]))] = True
    xp = np.zeros(x.shape[:2] + tuple(size))
    xp[(...,) + tuple(slice(b, b + L) for b, L in zip(pads[:nsp], spatial))] = x
    y = np.zeros(x.shape[:2] + tuple(out))
    axes = tuple(range(2, 2 + nsp))
    for pos in itertools.product(*map(range, out)):
        win = tuple(slice(p * s, p * s + d * (k - 1) + 1, d) for p, s, d, k in zip(pos, strides, dil, kernel))
        vals, mask = xp[(...,) + win], inside[win]
        if kind == "max":
            y[(...,) + pos] = np.where(mask, vals, -np.inf).max(axis=axes)
        else:
            count = in_pad[win].sum() if node.count_include_pad else mask.sum()
            y[(...,) + pos] = vals.sum(axis=axes) / count
    return y


class MaxPool(OpRun):
    op_domain = ""

    def _run(self, x, **kwargs):
        return (_pool64(x, self, "max"),)


class AveragePool(OpRun):
    op_domain = ""

    def _run(self, x, **kwargs):
        return (_pool64(x, self, "avg"),)


class Pad(OpRun):
    """Constant Pad that also crops (negative pads), which onnx's reference Pad refuses."""

    op_domain = ""

    def _run(self, x, pads, value=None, axes=None, mode=None):
        r = x.ndim
        crop = tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(zip(pads[:r], pads[r:])))
        widths = [(max(b, 0), max(e, 0)) for b, e in zip(pads[:r], pads[r:])]
        return (np.pad(x[crop], widths, constant_values=0.0 if value is None else value),)


def infer_shapes(net, name):
    m = build_model(net, [name], typed=False)
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    vi = next(v for v in list(inferred.graph.value_info) + list(inferred.graph.output) if v.name == name)
    dims = vi.type.tensor_type.shape.dim
    assert (dims[0].dim_param or dims[0].dim_value) == net.batch_dim, f"batch dim lost at {name}"
    return [d.dim_value for d in dims[1:]]


def build_model(net, outputs, typed=True, dtype=TensorProto.FLOAT):
    """The model (float32; float64 with a dynamic batch for the reference) with the given outputs."""
    inits, batch = net.inits, net.batch_dim
    if dtype == TensorProto.DOUBLE:
        batch = "N"
        inits = [numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name)
                 if t.data_type == TensorProto.FLOAT else t for t in inits]
    outs = [helper.make_tensor_value_info(o, dtype, [batch] + net.shapes[o]) if typed
            else helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs]
    graph = helper.make_graph(net.nodes, "random", [helper.make_tensor_value_info("x", dtype, [batch] + net.x_shape)],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def random_graph(seed):
    """(net, graph outputs, batch, neuron mode, data seed), all from one seed.

    A seed drives numpy's generator rather than one hypothesis draw per choice: hypothesis favours the
    first entry of every choice list, which made Conv and Gemm rare; a seed spreads the ops evenly."""
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(1, 4))  # per-sample rank: features, [C, L], [C, H, W]
    if rank == 1:
        x_shape = [int(rng.integers(2, 13))]
    elif rank == 2:
        x_shape = [int(rng.integers(1, 5)), int(rng.integers(3, 13))]
    else:
        x_shape = [int(rng.integers(1, 4)), int(rng.integers(3, 7)), int(rng.integers(3, 7))]
    batch = int(rng.integers(1, 4))
    net = RandomNet(rng, x_shape, "N" if rng.random() < 0.7 else batch)
    x, depth = "x", int(rng.integers(2, 7))
    intermediates = []
    for _ in range(depth):
        y = net.step(x)
        if int(np.prod(net.shapes[y])) > MAX_ELEMENTS:
            break  # too large: stop growing (x stays the last accepted tensor)
        intermediates.append(y)
        x = y
    if not intermediates:
        x = net.activation("x")
        intermediates.append(x)
    # drop the nodes of a rejected step; never end on Softmax (it would be looked through)
    keep = {x}
    for node in reversed(net.nodes):
        if any(o in keep for o in node.output):
            keep.update(node.input)
    net.nodes = [n for n in net.nodes if any(o in keep for o in n.output)]
    if net.nodes[-1].op_type == "Softmax":
        x = net.node("Mul", [x, net.const(np.float32(2.0))])
    outputs = [x]
    extra = [t for t in intermediates[:-1] if t != x]
    if extra and net.flag():
        outputs.append(net.pick(extra))  # a second original output that must survive
    return net, outputs, batch, net.pick(["all", "index"]), int(rng.integers(2**31))


def _session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def fd_gradient(model64, x, objective):
    """Central, forward and backward differences of objective(y_row, sample) for every coordinate."""
    batch, d = x.shape[0], int(np.prod(x.shape[1:]))
    flat = x.reshape(batch, d).astype(np.float64)
    eye = np.eye(d) * H
    rows = np.concatenate([np.concatenate([f[None], f + eye, f - eye]) for f in flat])
    reference = ReferenceEvaluator(model64, new_ops=[MaxPool, AveragePool, Pad])
    y = reference.run(None, {"x": rows.reshape((-1,) + x.shape[1:])})[0]
    y = y.reshape(batch, 2 * d + 1, -1)
    f = np.stack([objective(y[b], b) for b in range(batch)])  # [batch, 2d+1]
    f0, fp, fm = f[:, :1], f[:, 1:d + 1], f[:, d + 1:]
    central = (fp - fm) / (2 * H)
    return central, (fp - f0) / H, (f0 - fm) / H, y[:, 0]


def mismatches(r, central, fwd, bwd):
    """(mask of coordinates where r disagrees with the differences, tolerance per sample).

    Where the one-sided differences disagree a kink lies within H: r must equal the one that does not
    cross it (the side x lies on), so r is compared with the closer of the two."""
    tol = RTOL * np.abs(central).max(axis=1, keepdims=True) + ATOL
    kink = np.abs(fwd - bwd) > tol
    err = np.where(kink, np.minimum(np.abs(r - fwd), np.abs(r - bwd)), np.abs(r - central))
    return err > tol, tol


def test_kinks_are_compared_with_one_sided_derivatives():
    """Relu(x) summed, with x[0] a hair above the kink: the central difference there is 5/8, and only
    the one-sided comparison accepts the true gradient 1, while still rejecting wrong values."""
    net = RandomNet(np.random.default_rng(0), [3])
    net.node("Relu", ["x"])
    x = np.array([[H / 4, 1.0, -1.0]], np.float32)
    central, fwd, bwd, _ = fd_gradient(build_model(net, [net.nodes[-1].output[0]], dtype=TensorProto.DOUBLE),
                                       x, lambda y, b: y.sum(axis=1))
    assert abs(central[0, 0] - 0.625) < 1e-6  # (H/4 + H - 0) / 2H: the backward step crosses the kink
    assert not mismatches(np.array([[1.0, 1.0, 0.0]]), central, fwd, bwd)[0].any()
    assert mismatches(np.array([[0.5, 1.0, 0.0]]), central, fwd, bwd)[0][0].tolist() == [True, False, False]
    assert mismatches(np.array([[1.0, 1.0, 0.1]]), central, fwd, bwd)[0][0].tolist() == [False, False, True]


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.integers(0, 2**32 - 1))
def test_gradient_of_random_graphs_matches_finite_differences(graph_seed):
    net, outputs, batch, neuron, seed = random_graph(graph_seed)
    note(repr(net))
    for kind in set(net.kinds):
        event(kind)
    model = build_model(net, outputs)
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal([batch] + net.x_shape).astype(np.float32)

    compiled = onnxattr.compile(model, "gradient", neuron=neuron)
    onnx.checker.check_model(compiled, full_check=True)
    rel_vi = compiled.graph.output[-1]
    assert rel_vi.name == "relevance"
    for vi in (compiled.graph.input[0], rel_vi):  # the batch dim stays as declared: "N" stays symbolic
        dim = vi.type.tensor_type.shape.dim[0]
        assert (dim.dim_param or dim.dim_value) == net.batch_dim
    assert [o.name for o in compiled.graph.output] == outputs + ["relevance"]

    feeds = {"x": x}
    n_out = int(np.prod(net.shapes[outputs[0]]))
    target = rng.integers(0, n_out, batch)
    if neuron == "index":
        feeds["target"] = target.astype(np.int64)
    got = _session(compiled).run(None, feeds)
    want = _session(model).run(None, {"x": x})
    for g, w in zip(got[:-1], want):  # original outputs unchanged
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * (1 + np.abs(w).max()))
    relevance = got[-1]
    assert relevance.shape == x.shape and relevance.dtype == np.float32
    assert np.isfinite(relevance).all()

    def objective(y, b):
        return y.sum(axis=1) if neuron == "all" else y[:, target[b]]

    model64 = build_model(net, outputs[:1], dtype=TensorProto.DOUBLE)
    central, fwd, bwd, y64 = fd_gradient(model64, x, objective)
    # the reference agrees with onnxruntime on the forward pass (else its differences mean nothing)
    np.testing.assert_allclose(want[0].reshape(batch, -1), y64, rtol=1e-4, atol=1e-5 * (1 + np.abs(y64).max()))

    r = relevance.reshape(batch, -1).astype(np.float64)
    bad, tol = mismatches(r, central, fwd, bwd)
    assert not bad.any(), (
        f"relevance differs from finite differences at {np.argwhere(bad)[:5].tolist()} "
        f"(ops {net.kinds}, neuron={neuron}): got {r[bad][:5]}, want {central[bad][:5]}, tol {tol.ravel()}"
    )
