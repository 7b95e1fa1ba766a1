"""Canonicalize, recurrent ops: LSTM, GRU and RNN unrolled over a fixed sequence length into the standard ops
the reverse pass differentiates (Gemm, MatMul, Add, Mul, Split, the activations), with the same outputs.
ONNX's gate orders: LSTM i, o, f, c; GRU z, r, h.

- LSTM and RNN: each step is one linear layer, the gates' pre-activations [x_t, h_{t-1}]·[W R]ᵀ + b (a Gemm
  over a Concat), so the LRP rules see the cell's one layer and stabilize its whole z, as Arras et al. do.
- LSTM: c_t = c_{t-1}·f + g(c~)·i and h_t = h(c_t)·o, peepholes P added to the i and f gates (of c_{t-1}) and
  the o gate (of c_t). The sum c_t is a Sum node named with CELL_SUM, which the LRP rules treat as a layer of
  identity weights with the dense layers' stabilizer, as Arras et al. do (lrp/composite.py).
- GRU: x·Wᵀ + b is one MatMul over every step; h_t = h~·(1 − z) + h_{t-1}·z with
  h~ = g(x W_h + (h_{t-1}·r) R_hᵀ + b), or with linear_before_reset g(x W_h + (h_{t-1} R_hᵀ + Rb_h)·r + Wb_h).
  At a zero state the first step's Rb_h·r has no signal but the constant, so LRP passes its share to r (no
  reference implementation says else).
- RNN: h_t = f(x_t W + h_{t-1} R + b).

Every product of a signal and a gate is written Mul(signal, gate) and named with SIGNAL_GATE: the LRP rules
pass its relevance to the signal, so the gates take none, the "signal-take-all" rule of LRP for LSTMs (Arras et al.
2017). A zero initial state (absent, or zeros of the input's batch size as torch writes it) leaves
out the first step's recurrent terms.

A node is left as it is (and a gradient method then names it) when its sequence length is not fixed, its
weights are computed at run time, it has per-sample sequence lengths, or an activation has no backward here
(recurrent_nodes.why_not_unrolled). With ``fused``, the LSTM and GRU nodes that emitters/recurrent.py differentiates
as they are stay too (recurrent_nodes.why_not_fused).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxattr.recurrent_nodes import (
    DEFAULT_ACTIVATIONS, GATES, RECURRENT_OPS, activation_specs, decode, node_attrs, sequence_length, why_not_fused,
    why_not_unrolled,
)

CELL_SUM = "/cell_sum_"  # in the name of an LSTM cell's sum c_t: the LRP rules treat it as a layer (lrp/composite.py)
SIGNAL_GATE = "/signal_gate_"  # in the name of a cell's Mul(signal, gate): the LRP rules give the signal all


class _Emitter:
    """Nodes and initializers of one unrolled node, named after it."""

    def __init__(self, prefix: str, dtype: np.dtype):
        self.prefix, self.dtype = prefix, dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0
        self.cached: dict = {}

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}/{hint}_{self.count}"

    def const(self, value, hint: str = "c", dtype=None, key=None) -> str:
        """A constant; with ``key``, one initializer per key however often it is asked for."""
        if key is not None and key in self.cached:
            return self.cached[key]
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype or self.dtype), name))
        if key is not None:
            self.cached[key] = name
        return name

    def once(self, key, make):
        """The output of make(), made once per key (a node both directions read)."""
        if key not in self.cached:
            self.cached[key] = make()
        return self.cached[key]

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, out: list[str] | None = None,
           node_hint: str | None = None, **attrs):
        outs = out or [self.name(op_type.lower()) for _ in range(n_out)]
        name = self.name(op_type) if node_hint is None else f"{self.prefix}{node_hint}{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    def activation(self, spec: tuple, x: str) -> str:
        op, _, alpha, beta = spec
        if op == "Affine":  # alpha x + beta
            return self.op("Add", [self.op("Mul", [x, self.const(alpha, key=("alpha", alpha))]),
                                   self.const(beta, key=("beta", beta))])
        if op == "ScaledTanh":  # alpha tanh(beta x)
            return self.op("Mul", [self.op("Tanh", [self.op("Mul", [x, self.const(beta, key=("beta", beta))])]),
                                   self.const(alpha, key=("alpha", alpha))])
        attrs = {k: v for k, v in (("alpha", alpha), ("beta", beta)) if v is not None}
        return self.op(op, [x], **attrs)

    def gate(self, signal: str, gate: str) -> str:
        """signal * gate, named with SIGNAL_GATE."""
        return self.op("Mul", [signal, gate], node_hint=SIGNAL_GATE)

    def add(self, a: str | None, b: str | None) -> str | None:
        return b if a is None else a if b is None else self.op("Add", [a, b])


def _is_zero(name: str, producers: dict, consts: dict) -> bool:
    """A state that is zero whatever the input: absent, an all-zero constant, or ConstantOfShape of 0."""
    if not name:
        return True
    if name in consts:
        return not np.any(consts[name])
    node = producers.get(name)
    if node is None or node.op_type != "ConstantOfShape":
        return False
    value = node_attrs(node).get("value")
    return value is None or not np.any(numpy_helper.to_array(value))


def is_cell_sum(name: str) -> bool:
    return CELL_SUM in name


def is_signal_gate(name: str) -> bool:
    return SIGNAL_GATE in name


def unroll_node(node: onnx.NodeProto, steps: int, consts: dict, producers: dict, used: set,
                prefix: str) -> _Emitter:
    """The unrolled form of one LSTM, GRU or RNN node whose sequence length is ``steps``; its nodes are named
    ``prefix``/...."""
    op_type, attrs = node.op_type, node_attrs(node)
    ins = list(node.input) + [""] * (8 - len(node.input))
    W, R = consts[ins[1]], consts[ins[2]]
    gates, hidden = GATES[op_type], R.shape[-1]
    B = consts[ins[3]] if ins[3] else np.zeros((W.shape[0], 2 * gates * hidden), W.dtype)
    P = consts[ins[7]] if op_type == "LSTM" and ins[7] else None
    direction = decode(attrs.get("direction", b"forward"))
    dirs = 2 if direction == "bidirectional" else 1
    layout = attrs.get("layout", 0)
    clip = attrs.get("clip")
    specs = activation_specs(op_type, attrs, dirs)
    per = len(DEFAULT_ACTIVATIONS[op_type])
    e = _Emitter(prefix, W.dtype)
    seq_axis, state_axis = (1, 1) if layout else (0, 0)
    # the steps are read from x; a Transpose swapping the first two axes in front of the node (torch's batch_first
    # export) is read through, so that no transpose per step appears (onnxruntime pushes one through the Split)
    source, in_axis = ins[0], seq_axis
    before = producers.get(ins[0])
    if before is not None and before.op_type == "Transpose" and list(node_attrs(before).get("perm", [])) == [1, 0, 2]:
        source, in_axis = before.input[0], 1 - seq_axis
    h0 = None if _is_zero(ins[5], producers, consts) else ins[5]
    c0 = None if op_type != "LSTM" or _is_zero(ins[6], producers, consts) else ins[6]

    def state(name, d):  # direction d's [N, H] slice of an initial state
        if name is None:
            return None
        return e.op("Gather", [name, e.const(np.int64(d), "dir", np.int64)], axis=state_axis)

    split_cache: dict = {}

    def split_steps(t):  # [x_1, ..., x_T] along the input's sequence axis, each kept 1 there
        if t not in split_cache:
            parts = e.op("Split", [t, e.const(np.ones(steps, np.int64), "split", np.int64, key="split_steps")],
                         n_out=steps, axis=in_axis) if steps > 1 else [t]
            split_cache[t] = parts if isinstance(parts, list) else [parts]
        return split_cache[t]

    def clipped(x):
        return x if clip is None else e.op("Clip", [x, e.const(-clip, key="-clip"), e.const(clip, key="clip")])

    hs_all, last_h, last_c = [], [], []
    for d in range(dirs):
        act = specs[d * per:(d + 1) * per]
        bias = B[d, :gates * hidden] + B[d, gates * hidden:]
        if op_type == "GRU" and attrs.get("linear_before_reset", 0):
            bias[2 * hidden:] = B[d, 2 * hidden:3 * hidden]  # Rb_h goes inside the reset gate's product
        if op_type == "GRU":  # x W + b of every step at once; the steps add their h R terms
            seq = e.op("Add", [e.op("MatMul", [source, e.const(W[d].T, "W")]), e.const(bias, "b")])
        else:
            seq = source
        parts = split_steps(seq)  # LSTM, RNN: x's steps, the same for both directions
        axes = e.const(np.array([in_axis], np.int64), "axes", np.int64, key="in_axis")
        h, c = state(h0, d), state(c0, d)
        reverse = direction == "reverse" or d == 1
        hs = [None] * steps
        for t in (reversed(range(steps)) if reverse else range(steps)):
            x_t = e.once(("x_t", parts[t]), lambda: e.op("Squeeze", [parts[t], axes]))  # LSTM, RNN: one per step
            if op_type == "GRU":
                hs[t] = h = _gru_step(e, d, x_t, h, R[d], B[d, 5 * hidden:], act, clipped, hidden,
                                      attrs.get("linear_before_reset", 0))
                continue
            # LSTM, RNN: one linear layer [x_t, h_{t-1}] [W R]^T + b per step, as LRP sees the cell
            if h is None:
                pre = e.op("Gemm", [x_t, e.const(W[d], "W", key=("W", d)), e.const(bias, "b", key=("b", d))],
                           transB=1)
            else:
                pre = e.op("Gemm", [e.op("Concat", [x_t, h], axis=1),
                                    e.const(np.concatenate([W[d], R[d]], axis=1), "WR", key=("WR", d)),
                                    e.const(bias, "b", key=("b", d))], transB=1)
            if op_type == "LSTM":
                h, c = _lstm_step(e, d, pre, c, P[d] if P is not None else None, act, clipped,
                                  attrs.get("input_forget", 0), hidden)
            else:
                h = e.activation(act[0], clipped(pre))
            hs[t] = h
        hs_all.append(hs)
        last_h.append(h)
        last_c.append(c)
    outs = list(node.output) + [""] * (3 - len(node.output))
    if outs[0] and outs[0] in used:  # Y: [T, dirs, N, H] (layout 1: [N, T, dirs, H])
        dir_axis = 2 if layout else 1
        stacked = [_stack(e, hs, seq_axis, dir_axis) for hs in hs_all]
        _concat(e, stacked, dir_axis, outs[0])
    for name, values in ((outs[1], last_h), (outs[2], last_c)):
        if name and name in used:  # Y_h, Y_c: [dirs, N, H] (layout 1: [N, dirs, H])
            one = e.const(np.array([state_axis], np.int64), "axes", np.int64)
            _concat(e, [e.op("Unsqueeze", [v, one]) for v in values], state_axis, name)
    return e


def _stack(e: _Emitter, values: list[str], seq_axis: int, dir_axis: int) -> str:
    """[T, 1, N, H] (layout 1: [N, T, 1, H]) from T tensors [N, H]."""
    axes = e.const(np.array(sorted({seq_axis, dir_axis}), np.int64), "axes", np.int64)
    return e.op("Concat", [e.op("Unsqueeze", [v, axes]) for v in values], axis=seq_axis) \
        if len(values) > 1 else e.op("Unsqueeze", [values[0], axes])


def _concat(e: _Emitter, parts: list[str], axis: int, out: str) -> None:
    if len(parts) == 1:
        e.op("Identity", parts, out=[out])
    else:
        e.op("Concat", parts, out=[out], axis=axis)


def _lstm_step(e, d, pre, c, P, act, clipped, input_forget, hidden):
    """One LSTM step from the pre-activations of the gates i, o, f, c; returns h_t, c_t. Without peepholes the
    gates i, o, f (adjacent, one activation) take one activation node and one Split."""
    split = e.const(np.full(3, hidden, np.int64), "split", np.int64, key="split3")
    if P is None:
        ifo, pc = e.op("Split", [clipped(pre), e.const(np.array([3 * hidden, hidden], np.int64), "split", np.int64,
                                                           key="split31")], n_out=2, axis=1)
        i, o, f = e.op("Split", [e.activation(act[0], ifo), split], n_out=3, axis=1)
        cand = e.activation(act[1], pc)
    else:
        pi, po, pf, pc = e.op("Split", [pre, e.const(np.full(4, hidden, np.int64), "split", np.int64, key="split4")],
                              n_out=4, axis=1)
        if c is not None:
            pi = e.op("Add", [pi, e.op("Mul", [c, e.const(P[:hidden], "P", key=("Pi", d))])])
            pf = e.op("Add", [pf, e.op("Mul", [c, e.const(P[2 * hidden:], "P", key=("Pf", d))])])
        i, f = e.activation(act[0], clipped(pi)), e.activation(act[0], clipped(pf))
        cand = e.activation(act[1], clipped(pc))
    if input_forget:
        f = e.op("Sub", [e.const(1.0, key="one"), i])
    # c_t = Sum(c_{t-1} f, g i), a Sum of one term at a zero state: the cell's sum, which LRP treats as a layer
    c_new = e.op("Sum", ([] if c is None else [e.gate(c, f)]) + [e.gate(cand, i)],
                 node_hint=CELL_SUM)
    if P is not None:
        po = e.op("Add", [po, e.op("Mul", [c_new, e.const(P[hidden:2 * hidden], "P", key=("Po", d))])])
        o = e.activation(act[0], clipped(po))
    return e.gate(e.activation(act[2], c_new), o), c_new


def _gru_step(e, d, x_t, h, R, Rb_h, act, clipped, hidden, linear_before_reset):
    """One GRU step: gates z, r from x_t + h R_zr, then h~ and h_t = h~ (1 - z) + h z."""
    xzr, xh = e.op("Split", [x_t, e.const(np.array([2 * hidden, hidden], np.int64), "split", np.int64, key="split21")],
                   n_out=2, axis=1)
    rzr = e.const(R[:2 * hidden].T, "R", key=("Rzr", d))
    pre = e.add(xzr, None if h is None else e.op("MatMul", [h, rzr]))
    z, r = e.op("Split", [e.activation(act[0], clipped(pre)), e.const(np.full(2, hidden, np.int64), "split", np.int64,
                                                                      key="split2")], n_out=2, axis=1)
    Rh = e.const(R[2 * hidden:].T, "R", key=("Rh", d))
    if linear_before_reset:
        rb = e.const(Rb_h, "b", key=("Rbh", d))
        lin = rb if h is None else e.op("Add", [e.op("MatMul", [h, Rh]), rb])
        cand = e.activation(act[1], clipped(e.op("Add", [xh, e.gate(lin, r)])))
    else:
        cand = e.activation(act[1], clipped(xh if h is None else e.op(
            "Add", [xh, e.op("MatMul", [e.gate(h, r), Rh])])))
    out = e.gate(cand, e.op("Sub", [e.const(1.0, key="one"), z]))
    return out if h is None else e.op("Add", [out, e.gate(h, z)])


def unroll_recurrent(model: onnx.ModelProto, shapes: dict, fused: bool = False) -> onnx.ModelProto:
    """``model`` with every LSTM, GRU and RNN node that can be unrolled replaced by its unrolled form (in
    place); ``shapes``: tensor name -> list of ints or None per axis. ``fused``: keep the nodes the exact-gradient
    methods differentiate as they are (why_not_fused), each with its output Y named, which their backward reads."""
    g = model.graph
    wanted = {i for n in g.node if n.op_type in RECURRENT_OPS for i in n.input[1:]}
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer if t.name in wanted}
    producers = {o: n for n in g.node for o in n.output}
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    new_nodes, inits = [], []
    taken = {n.name for n in g.node}
    for position, node in enumerate(g.node):
        steps = sequence_length(shapes, node) if node.op_type in RECURRENT_OPS and node.domain in ("", "ai.onnx") \
            else None
        if node.op_type not in RECURRENT_OPS or why_not_unrolled(node, steps, consts.get) is not None:
            new_nodes.append(node)
            continue
        if fused and why_not_fused(node, steps, consts.get) is None:
            for k in (5, 6):  # a state known to be zero is left out: the kernel takes zeros, the backward skips it
                if k < len(node.input) and node.input[k] and _is_zero(node.input[k], producers, consts):
                    node.input[k] = ""
            if not node.output[0]:
                names = used | {o for n in g.node for o in n.output} | {t.name for t in g.initializer}
                node.output[0] = next(n for k in range(len(names) + 1)
                                      if (n := f"{node.name or node.op_type}/Y" + (f"_{k}" if k else "")) not in names)
            new_nodes.append(node)
            continue
        prefix = node.name or next(p for k in range(len(taken) + 1)
                                   if (p := f"{node.op_type}_{position}" + (f"_{k}" if k else "")) not in taken)
        e = unroll_node(node, steps, consts, producers, used, prefix)
        new_nodes.extend(e.nodes)
        inits.extend(e.inits)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(inits)
    return model
