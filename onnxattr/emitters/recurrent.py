"""LSTM and GRU differentiated as they are: onnxruntime's kernel runs the forward, and the backward recomputes what it
needs from the node's output Y (every h_t) in batched ops, then runs the recurrence backward in a few ops per step
(LSTM eight, GRU six) instead of the unrolled graph's thirty-odd. The one-pass gradient methods use it
(canonicalize(fused_recurrent=True)) for the nodes recurrent_nodes.why_not_fused accepts, at batches up to
recurrent_nodes.FUSED_BATCH_LIMIT (a dynamic batch gets this form and the unrolled one, batch_switch.py); the rules
need the unrolled steps.

LSTM, per direction, layout 0 (x [T, N, I], Y [T, D, N, H]); gates i, o, f, c; t - 1 the previous step in the
direction's order. Forward: a_t = x_t Wᵀ + h_{t-1} Rᵀ + b (two MatMuls over all steps, from x and Y), i, o, f = σ(a),
g = tanh(a_c), c_t = f c_{t-1} + i g (one Mul and one Add per step), h_t = o tanh(c_t). Backward, with
dh_t = dY_t + δ_{t+1} R and dc_t = dc_{t+1} f_{t+1} + dh_t o (1 − tanh² c_t):
    δ_t = [dc_t g σ'_i, dh_t tanh(c_t) σ'_o, dc_t c_{t-1} σ'_f, dc_t i (1 − g²)],   dx_t = δ_t W (one MatMul).
dY_h and dY_c enter at the direction's last step; the initial states' gradients are what the recurrence leaves after
its first step. The GRU's formulas are gru_vjp's.
"""

from __future__ import annotations

import numpy as np

from onnxattr.emitters.registry import register
from onnxattr.errors import UnsupportedModelError
from onnxattr.recurrent_nodes import GATES, decode, node_attrs, why_not_fused


class _Cell:
    """What one node's backward shares: its weights, sizes, and small graph helpers over the builder."""

    def __init__(self, b, node):
        ins = list(node.input) + [""] * (8 - len(node.input))
        self.b, self.node, self.ins = b, node, ins
        shape = b.shape(ins[0])
        steps = shape[0] if shape is not None and len(shape) == 3 else None
        why = why_not_fused(node, steps, b.value)
        if why is not None or not node.output[0]:
            raise UnsupportedModelError(f"{node.op_type} '{node.name}' cannot be differentiated as it is "
                                        f"({why or 'its output Y is not named'}); it should have been unrolled")
        self.W, self.R = np.asarray(b.value(ins[1])), np.asarray(b.value(ins[2]))
        self.dtype = self.W.dtype
        self.T, self.H, self.D = steps, self.R.shape[-1], self.W.shape[0]
        gates = GATES[node.op_type]
        self.B = np.asarray(b.value(ins[3])) if ins[3] else np.zeros((self.D, 2 * gates * self.H), self.dtype)
        self.direction = decode(node_attrs(node).get("direction", b"forward"))
        self._split = b.ints([1] * steps)

    def reverse(self, d: int) -> bool:
        return self.direction == "reverse" or d == 1

    def const(self, value, hint="w"):
        return self.b.const(np.asarray(value, self.dtype), self.dtype, hint)

    def one(self):
        return self.b.scalar(1.0, self.ins[0])

    def per_direction(self, t: str | None, axis: int) -> list:
        """[t's slice for each direction], the direction axis dropped; Nones when t is None."""
        b = self.b
        if t is None:
            return [None] * self.D
        if self.D == 1:
            return [b.op("Squeeze", [t, b.ints([axis])])]
        return [b.op("Gather", [t, b.const(np.int64(d), np.int64, "dir")], axis=axis) for d in range(self.D)]

    def steps(self, t: str, axis: int = 0) -> list[str]:
        """t split into its T steps along ``axis`` (each keeps the axis, of size 1)."""
        if self.T == 1:
            return [t]
        return self.b.op("Split", [t, self._split], n_out=self.T, axis=axis)

    def previous(self, Yd: str, h0: str | None, d: int) -> str | None:
        """h_{t-1} for every step [T, N, H] in the direction's order, or None when every one is zero (T = 1 without
        an initial state); a missing initial state is zero."""
        b = self.b
        T = self.T
        if T == 1:
            return None if h0 is None else b.op("Unsqueeze", [h0, b.ints([0])])
        rev = self.reverse(d)
        shifted = b.op("Slice", [Yd, b.ints([1 if rev else 0]), b.ints([T if rev else T - 1]), b.ints([0])])
        if h0 is None:
            pads = [0, 0, 0, 1, 0, 0] if rev else [1, 0, 0, 0, 0, 0]
            return b.op("Pad", [shifted, b.ints(pads)])
        first = b.op("Unsqueeze", [h0, b.ints([0])])
        return b.op("Concat", [shifted, first] if rev else [first, shifted], axis=0)

    def inputs_gradient(self, deltas: list[str], gates: int) -> str:
        """dx [T, N, I] = Σ_d δ_d W_d, each δ_d [T, N, gates, H] (a list per direction, None for no signal)."""
        b = self.b
        parts = [b.op("MatMul", [b.op("Reshape", [delta, b.ints([self.T, -1, gates * self.H])]),
                                 self.const(self.W[d], "W")])
                 for d, delta in enumerate(deltas) if delta is not None]
        return b.add_all(parts) if parts else None

    def stack_steps(self, values: list[str | None]) -> str | None:
        """The per-step tensors [1, ...] concatenated along the steps; zeros for steps nothing reached."""
        b = self.b
        present = [v for v in values if v is not None]
        if not present:
            return None
        if len(present) < len(values):
            zero = b.zeros_like(present[0])
            values = [zero if v is None else v for v in values]
        return values[0] if len(values) == 1 else b.op("Concat", values, axis=0)

    def results(self, need: list, deltas: list, gates: int, states: dict) -> list:
        """The emitter's answer: x's gradient from the deltas, and each needed initial state's ({input index: its
        per-direction gradients})."""
        out = [None] * len(self.node.input)
        if need[0]:
            out[0] = self.inputs_gradient(deltas, gates)
        for k, per_dir in states.items():
            if k < len(out) and need[k]:
                out[k] = self.state_gradient(per_dir, self.ins[k])
        return out

    def state_gradient(self, per_dir: list[str | None], shape_like: str) -> str | None:
        """[D, N, H] from each direction's [1, N, 1, H] (zeros where None), or None if none arrived."""
        b = self.b
        if all(v is None for v in per_dir):
            return None
        flat = [None if v is None else b.op("Reshape", [v, b.ints([1, -1, self.H])]) for v in per_dir]
        present = next(v for v in flat if v is not None)
        flat = [b.zeros_like(present) if v is None else v for v in flat]
        out = flat[0] if len(flat) == 1 else b.op("Concat", flat, axis=0)
        b.set_info(out, shape_like)
        return out


def _sum(b, terms: list[str | None]) -> str | None:
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else b.op("Add" if len(terms) == 2 else "Sum", terms)


def _mul(b, a: str | None, c: str) -> str | None:
    return None if a is None else b.op("Mul", [a, c])


def _step_form(b, t: str) -> str:
    """[..., H] -> [..., 1, H]: a state in the gates' stacked layout."""
    return b.op("Unsqueeze", [t, b.ints([-2])])


def _stacked(b, parts: list[str]) -> str:
    """[T, N, G, H] from G tensors [T, N, H]."""
    return b.op("Concat", [_step_form(b, p) for p in parts], axis=-2)


@register("LSTM")
def lstm_vjp(b, node, grads, need):
    cell = _Cell(b, node)
    T, H, ins = cell.T, cell.H, cell.ins
    one = cell.one()
    dY, dYh, dYc = (list(grads) + [None] * 3)[:3]
    Ys = cell.per_direction(node.output[0], 1)
    dYs, dYhs, dYcs = cell.per_direction(dY, 1), cell.per_direction(dYh, 0), cell.per_direction(dYc, 0)
    h0s = cell.per_direction(ins[5] or None, 0)
    c0s = cell.per_direction(ins[6] or None, 0)
    deltas, dh0, dc0 = [], [], []
    for d in range(cell.D):
        W, R, B = cell.W[d], cell.R[d], cell.B[d]
        order = list(reversed(range(T))) if cell.reverse(d) else list(range(T))
        # forward: the gates' pre-activations of every step from x and Y, then c_t step by step
        pre = [b.op("MatMul", [ins[0], cell.const(W.T, "W")]), cell.const(B[:4 * H] + B[4 * H:], "b")]
        prev = cell.previous(Ys[d], h0s[d], d)
        if prev is not None:
            pre.append(b.op("MatMul", [prev, cell.const(R.T, "R")]))
        sig_in, tanh_in = b.op("Split", [_sum(b, pre), b.ints([3 * H, H])], n_out=2, axis=-1)
        s = b.op("Sigmoid", [sig_in])
        g = b.op("Tanh", [tanh_in])
        i, o, f = b.op("Split", [s, b.ints([H, H, H])], n_out=3, axis=-1)
        ig_steps, f_steps = cell.steps(b.op("Mul", [i, g])), cell.steps(f)
        c0 = None if c0s[d] is None else b.op("Unsqueeze", [c0s[d], b.ints([0])])
        cs, prevs, c = [None] * T, [None] * T, c0
        for t in order:
            prevs[t] = c
            cs[t] = c = ig_steps[t] if c is None else b.op("Add", [b.op("Mul", [f_steps[t], c]), ig_steps[t]])
        tc = b.op("Tanh", [cell.stack_steps(cs)])
        # the backward's factors of every step, gates stacked [T, N, 4, H] in ONNX's order i, o, f, c
        ds = b.op("Mul", [s, b.op("Sub", [one, s])])  # σ' of i, o, f
        di, do, df = b.op("Split", [ds, b.ints([H, H, H])], n_out=3, axis=-1)
        K = b.op("Mul", [o, b.op("Sub", [one, b.op("Mul", [tc, tc])])])  # dc_t / dh_t
        Bi = b.op("Mul", [g, di])
        Bg = b.op("Mul", [i, b.op("Sub", [one, b.op("Mul", [g, g])])])
        c_prev = cell.stack_steps(prevs)  # a zero initial state is zeros
        Bf = None if c_prev is None else b.op("Mul", [c_prev, df])
        Ao = b.op("Mul", [tc, do])
        zero = b.zeros_like(Bi)
        A = _stacked(b, [b.op("Mul", [K, Bi]), Ao, zero if Bf is None else b.op("Mul", [K, Bf]),
                         b.op("Mul", [K, Bg])])  # δ_t / dh_t, with dc_t's dh_t term
        Bs = _stacked(b, [Bi, zero, zero if Bf is None else Bf, Bg])  # δ_t / (dc_{t+1} f_{t+1})
        A_s, B_s = cell.steps(A), cell.steps(Bs)
        K_s, f_s = cell.steps(_step_form(b, K)), cell.steps(_step_form(b, f))
        dY_s = None if dYs[d] is None else cell.steps(_step_form(b, dYs[d]))
        want_h0, want_c0 = bool(ins[5]) and need[5], bool(ins[6]) and need[6]
        R_flat = cell.const(R, "R") if T > 1 or want_h0 else None  # dh_{t-1} = δ_t R
        dh = None if dYhs[d] is None else b.op("Reshape", [dYhs[d], b.ints([1, -1, 1, H])])
        dc = None if dYcs[d] is None else b.op("Reshape", [dYcs[d], b.ints([1, -1, 1, H])])
        steps = [None] * T
        for k, t in enumerate(reversed(order)):  # the backward runs the steps in the opposite order
            last = k == T - 1
            dh = _sum(b, [dY_s[t] if dY_s else None, dh])
            steps[t] = delta = _sum(b, [_mul(b, dh, A_s[t]), _mul(b, dc, B_s[t])])
            if last and not (want_h0 or want_c0):
                break
            dc = _mul(b, _sum(b, [dc, _mul(b, dh, K_s[t])]), f_s[t])
            dh = None if delta is None or (last and not want_h0) else b.op(
                "MatMul", [b.op("Reshape", [delta, b.ints([1, -1, 1, 4 * H])]), R_flat])
        deltas.append(cell.stack_steps(steps))
        dh0.append(dh if want_h0 else None)
        dc0.append(dc if want_c0 else None)
    return cell.results(need, deltas, 4, {5: dh0, 6: dc0})


@register("GRU")
def gru_vjp(b, node, grads, need):
    """GRU with linear_before_reset (gates z, r, h): z, r = σ(x W_zrᵀ + h_{t-1} R_zrᵀ + b), q = h_{t-1} R_hᵀ + Rb_h,
    n = tanh(x W_hᵀ + Wb_h + r q), h_t = (1 − z) n + z h_{t-1}: all from x and Y in batched ops. Backward, with
    dh_t = dY_t + dh_{t+1}' and u = (1 − z)(1 − n²): δ_t = dh_t [(h_{t-1} − n) σ'_z, u q σ'_r, u] (dx_t = δ_t W) and
    dh_{t-1}' = dh_t z + dh_t [(h_{t-1} − n) σ'_z, u q σ'_r, u r] R: six ops per step."""
    cell = _Cell(b, node)
    T, H, ins = cell.T, cell.H, cell.ins
    one = cell.one()
    dY, dYh = (list(grads) + [None] * 2)[:2]
    Ys, dYs, dYhs = cell.per_direction(node.output[0], 1), cell.per_direction(dY, 1), cell.per_direction(dYh, 0)
    h0s = cell.per_direction(ins[5] or None, 0)
    deltas, dh0 = [], []
    want_h0 = bool(ins[5]) and need[5]
    for d in range(cell.D):
        W, R, B = cell.W[d], cell.R[d], cell.B[d]
        order = list(reversed(range(T))) if cell.reverse(d) else list(range(T))
        xb = np.concatenate([B[:2 * H] + B[3 * H:5 * H], B[2 * H:3 * H]])  # Wb_zr + Rb_zr, Wb_h
        xw = b.op("Add", [b.op("MatMul", [ins[0], cell.const(W.T, "W")]), cell.const(xb, "b")])
        prev = cell.previous(Ys[d], h0s[d], d)
        x_zr, x_h = b.op("Split", [xw, b.ints([2 * H, H])], n_out=2, axis=-1)
        Rb_h = cell.const(B[5 * H:], "b")
        if prev is None:  # T = 1 from a zero state
            zr, q = b.op("Sigmoid", [x_zr]), Rb_h
        else:
            h_zr, h_h = b.op("Split", [b.op("MatMul", [prev, cell.const(R.T, "R")]), b.ints([2 * H, H])],
                             n_out=2, axis=-1)
            zr, q = b.op("Sigmoid", [b.op("Add", [x_zr, h_zr])]), b.op("Add", [h_h, Rb_h])
        z, r = b.op("Split", [zr, b.ints([H, H])], n_out=2, axis=-1)
        n = b.op("Tanh", [b.op("Add", [x_h, b.op("Mul", [r, q])])])
        dzr = b.op("Mul", [zr, b.op("Sub", [one, zr])])  # σ' of z, r
        dz, dr = b.op("Split", [dzr, b.ints([H, H])], n_out=2, axis=-1)
        u = b.op("Mul", [b.op("Sub", [one, z]), b.op("Sub", [one, b.op("Mul", [n, n])])])
        Gz = b.op("Mul", [b.op("Neg", [n]) if prev is None else b.op("Sub", [prev, n]), dz])
        Gr = b.op("Mul", [b.op("Mul", [u, q]), dr])
        Gx = _stacked(b, [Gz, Gr, u])  # δ_t / dh_t
        dY_s = None if dYs[d] is None else cell.steps(_step_form(b, dYs[d]))
        dh = None if dYhs[d] is None else b.op("Reshape", [dYhs[d], b.ints([1, -1, 1, H])])
        if T > 1 or want_h0:
            Gh_s = cell.steps(_stacked(b, [Gz, Gr, b.op("Mul", [u, r])]))
            z_s = cell.steps(_step_form(b, z))
            R_flat = cell.const(R, "R")
        dhs = [None] * T
        for k, t in enumerate(reversed(order)):
            dhs[t] = dh = _sum(b, [dY_s[t] if dY_s else None, dh])
            if dh is None or (k == T - 1 and not want_h0):
                continue
            rec = b.op("MatMul", [b.op("Reshape", [b.op("Mul", [dh, Gh_s[t]]), b.ints([1, -1, 1, 3 * H])]), R_flat])
            dh = b.op("Add", [rec, b.op("Mul", [dh, z_s[t]])])
        dh_all = cell.stack_steps(dhs)
        deltas.append(None if dh_all is None else b.op("Mul", [dh_all, Gx]))
        dh0.append(dh if want_h0 else None)
    return cell.results(need, deltas, 3, {5: dh0})

