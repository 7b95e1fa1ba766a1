"""LRP rules as declarations over a unit's two linear maps (the modified-gradient form).

A rule is a list of groups. Each group has terms (input modifier m_k, weight modifier p_k, bias
modifier q_k, sign s_k) and a coefficient c:

    z      = sum_k s_k * forward(m_k(x), p_k(W), q_k(b))
    R_in  += c * sum_k s_k * m_k(x) * VJP_{p_k(W)}( R_out / stab(z) )

Input modifiers: x, pos = max(x, 0), neg = min(x, 0), ones, low, high (the bounds as tensors of x's
shape). Weight modifiers: w, pos, neg, square, ones, gamma_pos = W + g W+, gamma_neg = W + g W-; bias
modifiers: b, pos, neg, none. Weight modifiers of constant weights are computed at compile time.
Stabilizers: ``safe`` (iNNvestigate's SafeDivide: z + eps [z = 0], eps = 1e-7) and ``signed``
(z + eps sign(z), sign(0) = +1: iNNvestigate's Epsilon and Zennit's stabilize).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from onnxattr.emitters.activations import positive_flag
from onnxattr.lrp.units import Unit


@dataclass(frozen=True)
class Term:
    inp: str = "x"
    par: str = "w"
    bias: str = "b"
    sign: float = 1.0


@dataclass(frozen=True)
class Group:
    """Terms sharing one denominator; ``mask`` keeps only outputs whose forward value is > 0 ("pos")
    or < 0 ("neg") (Zennit's generalized gamma)."""

    terms: tuple
    coef: float = 1.0
    mask: str | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    groups: tuple
    stabilizer: str = "safe"
    epsilon: float = 1e-7
    gamma: float = 0.25
    low: float = 0.0
    high: float = 1.0


def z_rule(bias=True, **kw):
    return Rule("z" if bias else "z_IB", (Group((Term(bias="b" if bias else "none"),)),), **kw)


def epsilon_rule(epsilon=1e-7, bias=True, **kw):
    return Rule("epsilon", (Group((Term(bias="b" if bias else "none"),)),), stabilizer="signed",
                epsilon=epsilon, **kw)


def w_square_rule(bias=False, **kw):
    """z = 1 W^2 (+ b^2: Zennit squares the bias too; iNNvestigate drops it)."""
    return Rule("w_square", (Group((Term("ones", "square", "square" if bias else "none"),)),), **kw)


def flat_rule(**kw):
    return Rule("flat", (Group((Term("ones", "ones", "none"),)),), **kw)


def alpha_beta_rule(alpha=2.0, beta=1.0, bias=True, bias_style="innvestigate", **kw):
    """Activator x+W+ + x-W-, inhibitor x+W- + x-W+. iNNvestigate puts b+ in the positive and b- in
    the negative layer (both appear in each sum); Zennit adds the clamped bias to the x+ term only."""
    if not bias:
        pp, nn, pn, np_ = "none", "none", "none", "none"
    elif bias_style == "zennit":
        pp, nn, pn, np_ = "pos", "none", "neg", "none"
    else:
        pp, nn, pn, np_ = "pos", "neg", "neg", "pos"
    groups = [Group((Term("pos", "pos", pp), Term("neg", "neg", nn)), alpha)]
    if beta:
        groups.append(Group((Term("pos", "neg", pn), Term("neg", "pos", np_)), -beta))
    return Rule(f"alpha_{alpha:g}_beta_{beta:g}" + ("" if bias else "_IB"), tuple(groups), **kw)


def z_plus_fast_rule(**kw):
    return Rule("z_plus_fast", (Group((Term("x", "pos", "none"),)),), **kw)


def gamma_rule(gamma=0.25, **kw):
    """Generalized gamma (Zennit): where z > 0, x+ (W + g W+) [+ b + g b+] + x- (W + g W-); where z < 0,
    x+ (W + g W-) [+ b + g b-] + x- (W + g W+); each part with its own denominator."""
    pos = Group((Term("pos", "gamma_pos", "gamma_pos"), Term("neg", "gamma_neg", "none")), mask="pos")
    neg = Group((Term("pos", "gamma_neg", "gamma_neg"), Term("neg", "gamma_pos", "none")), mask="neg")
    return Rule("gamma", (pos, neg), gamma=gamma, **kw)


def zbox_rule(low=0.0, high=1.0, **kw):
    """z = xW - low W+ - high W- (the bias cancels, as in both references)."""
    terms = (Term("x", "w", "none"), Term("low", "pos", "none", -1.0), Term("high", "neg", "none", -1.0))
    return Rule("zbox", (Group(terms),), low=low, high=high, **kw)


# ---- application ---------------------------------------------------------------------------------

def _param(b, unit: Unit, which: str, rule: Rule, kind: str):
    """Modified weight ("w") or bias ("b") tensor name; None when the bias is dropped."""
    name = unit.w if kind == "w" else unit.bias
    if name is None or which in ("none",):
        return None
    if which in ("w", "b"):
        return name
    key = (kind, which, rule.gamma)
    if key in unit.cache:
        return unit.cache[key]
    v = b.value(name)
    if v is not None:
        mods = {
            "pos": lambda a: np.maximum(a, 0), "neg": lambda a: np.minimum(a, 0), "square": lambda a: a * a,
            "ones": np.ones_like, "gamma_pos": lambda a: a + rule.gamma * np.maximum(a, 0),
            "gamma_neg": lambda a: a + rule.gamma * np.minimum(a, 0),
        }
        out = b.const(mods[which](v), v.dtype, f"{kind}_{which}")  # const converts only if needed
    else:
        zero = b.scalar(0.0, name)
        pos = lambda: b.op("Max", [name, zero])  # noqa: E731
        neg = lambda: b.op("Min", [name, zero])  # noqa: E731
        if which == "pos":
            out = pos()
        elif which == "neg":
            out = neg()
        elif which == "square":
            out = b.op("Mul", [name, name])
        elif which == "ones":
            out = b.op("ConstantOfShape", [b.op("Shape", [name])], value=b.fill_value(1.0, name))
        else:
            part = pos() if which == "gamma_pos" else neg()
            out = b.op("Add", [name, b.op("Mul", [part, b.scalar(rule.gamma, name)])])
        b.set_info(out, name)  # the weight's shape and type, for the VJP emitters
    unit.cache[key] = out
    return out


def _hashable(bound):
    """A z-box bound as part of a cache key (bounds may be arrays)."""
    return (np.shape(bound), np.asarray(bound, np.float64).tobytes()) if np.ndim(bound) else float(bound)


def _input(b, unit: Unit, which: str, rule: Rule):
    """Modified input: x, max(x,0), min(x,0), ones, or the low/high bound broadcast to x's shape."""
    x = unit.x
    if which == "x" or (which == "pos" and unit.nonneg):
        return x
    key = ("in", which, _hashable(rule.low), _hashable(rule.high))
    if key not in unit.cache:
        if which == "pos":
            out = b.op("Relu", [x])
        elif which == "neg":
            out = b.op("Min", [x, b.scalar(0.0, x)])
        else:
            fill = 1.0 if which == "ones" else 0.0
            bound = rule.low if which == "low" else rule.high
            padded = which in ("low", "high") and _bounds_of_the_input(b, unit, bound)
            source = unit.pads[0].input[0] if padded else x
            out = b.op("ConstantOfShape", [b.op("Shape", [source])], value=b.fill_value(fill, x))
            if which in ("low", "high"):
                out = b.op("Add", [out, b.const(np.asarray(bound), b.float_dtype(x), which)])
            for pad in unit.pads if padded else ():  # then padded as the input was on its way to the layer
                out = b.replay(pad, {pad.input[0]: out})[0]
        unit.cache[key] = out
    return unit.cache[key]


def _bounds_of_the_input(b, unit: Unit, bound) -> bool:
    """Whether z-box bounds given as an array are the explained input's, which Pads stand between it and the layer
    (unit.pads): the array does not broadcast to the layer's input but does to the explained input's. Scalars, and
    arrays of the layer input's shape, cover the layer input as they are, padded entries included, as in Zennit."""
    if not unit.pads or np.ndim(bound) == 0:
        return False

    def fits(shape):
        return shape is not None and len(shape) >= np.ndim(bound) and all(
            d == 1 or s == d or not isinstance(s, int) for d, s in zip(np.shape(bound)[::-1], shape[::-1]))

    return not fits(b.shape(unit.x)) and fits(b.shape(unit.pads[0].input[0]))


def _stabilize(b, z, rule: Rule):
    if rule.stabilizer == "signed":
        # eps * sign(z), sign(0) = +1, as 2 eps [z >= 0] - eps (exact: scaling by 2 and eps - 0 are exact);
        # element-wise Cast/Mul/Add run much faster in onnxruntime than a Where of two scalars
        nonneg = b.op("Cast", [b.op("GreaterOrEqual", [z, b.scalar(0.0, z)])], to=b.float_type(z))
        sign = b.op("Add", [b.op("Mul", [nonneg, b.scalar(2 * rule.epsilon, z)]), b.scalar(-rule.epsilon, z)])
        return b.op("Add", [z, sign])
    is_zero = b.op("Cast", [b.op("Equal", [z, b.scalar(0.0, z)])], to=b.float_type(z))
    return b.op("Add", [z, b.op("Mul", [is_zero, b.scalar(rule.epsilon, z)])])


# HardSigmoid(v, alpha, beta) = clamp(alpha v + beta, 0, 1). With alpha = -2^127, every v > 0 (at least
# 2^-149) has alpha v <= -2^-22, so for 0 < beta < 2^-22 the result is beta [v = 0] exactly, for v >= 0.
_ZERO_SLOPE = -(2.0**127)
_ZERO_FLAG_MAX = 2.0**-22


def _nonnegative_stabilize(b, z, rule: Rule):
    """stab(z) for z known >= 0: signed -> z + eps (the sign is +1); safe -> z + eps [z = 0] with the
    indicator term as one HardSigmoid (two ops instead of Equal/Cast/Mul/Add) when eps < 2^-22 and z is
    float32 (the slope is a float32 number; onnxruntime's CPU HardSigmoid is float32 only)."""
    if rule.stabilizer == "signed":
        return b.op("Add", [z, b.scalar(rule.epsilon, z)])
    if 0 < rule.epsilon < _ZERO_FLAG_MAX and b.types.get(z) == TensorProto.FLOAT:
        return b.op("Add", [z, b.op("HardSigmoid", [z], alpha=_ZERO_SLOPE, beta=rule.epsilon)])
    return _stabilize(b, z, rule)


def _denominator(b, z, rule: Rule, positive: str | None):
    """stab(z); with ``positive`` = Relu(z) and a relevance known to be 0 wherever Relu(z) = 0 (z <= 0), the
    same quotient R / stab(z) comes from the Relu output: where z > 0, Relu(z) = z, so stab(Relu(z)) is
    stab(z) (both stabilizers agree on z > 0); where z <= 0 the relevance is 0 and any non-zero
    denominator gives 0 (eps > 0 keeps stab(0) = eps non-zero). The Relu output is >= 0, so its
    stabilizer needs no sign, and z has no reader but the Relu: onnxruntime fuses it into the Conv/Gemm."""
    if positive is None or rule.epsilon <= 0:
        return _stabilize(b, z, rule)
    return _nonnegative_stabilize(b, positive, rule)


def own_factor(b, relevance: str, z: str) -> str | None:
    """s when ``relevance`` was emitted as z * s (b.product_of: a residual z split, or an x-times rule
    above whose input is z), else None."""
    x, s = b.product_of.get(relevance, (None, None))
    return s if x == z else None


def _ratio(b, a, rule: Rule) -> str:
    """a / stab(a) for a >= 0: signed a / (a + eps); safe 1 where a > 0 and 0 at a = 0 (the positive flag)."""
    if rule.stabilizer == "signed":
        return b.op("Div", [a, b.op("Add", [a, b.scalar(rule.epsilon, a)])])
    return positive_flag(b, a)


def quotient(b, relevance: str, z: str, rule: Rule, positive: str | None = None) -> str:
    """s = R / stab(z) for the relevance R arriving at the forward tensor z (``positive``: Relu(z), see
    ``_denominator``). When R was emitted as a product a * c of the tensor it divides by, s = c * a / stab(a)
    with no product R and no sign computation, and a sum of such products (a read twice) costs one Add of
    the c's:
    - a = Relu(z), R = 0 wherever a = 0: c * a / stab(a), as in ``_denominator``;
    - a = z (a residual operand, or a layer read by an x-times rule with no Relu between):
      z / stab(z) = |z| / stab(|z|) (signed: numerator and denominator change sign together; safe: both
      are 1 where z != 0 and 0 at z = 0)."""
    if rule.epsilon > 0:
        a = z if positive is None else positive
        factor = own_factor(b, relevance, a)
        if factor is not None:
            magnitude = a if positive is not None else b.op("Abs", [z])
            return b.op("Mul", [factor, _ratio(b, magnitude, rule)])
    return b.op("Div", [relevance, _denominator(b, z, rule, positive)])


# sign of each modifier's values: +1 (>= 0), -1 (<= 0), 0 (absent), None (either)
_INPUT_SIGN = {"pos": 1, "neg": -1, "ones": 1}
_PARAM_SIGN = {"pos": 1, "neg": -1, "square": 1, "ones": 1, "none": 0}


def known_nonnegative(unit, terms) -> bool:
    """Every term's sign * m(x) p(W) and sign * q(b) is >= 0, so z >= 0 in any float arithmetic (a sum of
    products of non-negative factors never rounds below 0): e.g. x+W+ + x-W- + b+ of alpha-beta's activator."""
    for t in terms:
        xs = 1 if (t.inp == "x" and unit.nonneg) else _INPUT_SIGN.get(t.inp)
        ws = _PARAM_SIGN.get(t.par)
        bs = 0 if unit.bias is None else _PARAM_SIGN.get(t.bias)
        if xs is None or ws is None or bs is None or t.sign * xs * ws < 0 or t.sign * bs < 0:
            return False
    return True


X_TIMES = frozenset({"x", "pos", "neg"})  # input modifiers m with m(0) = 0: R_in = m(x) * (...) is 0 where x is


def _reuses_forward(unit, term):
    """The term is the unit's own forward: its output tensor already holds z."""
    if unit.bias is not None and not unit.out_has_bias:
        return term.inp == "x" and term.par == "w" and term.bias == "none"
    return term.inp == "x" and term.par == "w" and (unit.bias is None or term.bias == "b")


def unit_output(b, unit: Unit) -> str:
    """z = W x + b of the unit (its output tensor, unless the bias is added after a reshape)."""
    if unit.bias is None or unit.out_has_bias:
        return unit.out
    key = ("z", "x", "w", "b", None, None, None)
    if key not in unit.cache:
        unit.cache[key] = unit.forward(b, unit.x, unit.w, unit.bias)
    return unit.cache[key]


def _vanishes(unit, term):
    """The term is exactly zero: the input part min(x, 0) of an x >= 0 with no bias adds nothing to z,
    and m(x) = 0 multiplies its backward away."""
    return unit.nonneg and term.inp == "neg" and (term.bias == "none" or unit.bias is None)


def apply_rule(b, unit: Unit, rule: Rule, relevance: str, positive: str | None = None) -> str:
    """R_in of ``unit`` under ``rule`` for relevance arriving at unit.out. ``positive``: Relu(unit.out),
    given when the relevance is known to be 0 wherever that Relu is 0 (see ``_denominator``)."""
    total, x_times = None, True
    for group in rule.groups:
        zs = []
        terms = tuple(t for t in group.terms if not _vanishes(unit, t)) or group.terms[:1]
        for t in terms:
            key = ("z", t.inp, t.par, t.bias, rule.gamma, _hashable(rule.low), _hashable(rule.high))
            if key not in unit.cache:
                if _reuses_forward(unit, t):
                    unit.cache[key] = unit.out  # reuse the forward activation
                else:
                    xin = _input(b, unit, t.inp, rule)
                    unit.cache[key] = unit.forward(b, xin, _param(b, unit, t.par, rule, "w"),
                                                   _param(b, unit, t.bias, rule, "b"))
            zs.append((t.sign, unit.cache[key]))
        z = zs[0][1] if zs[0][0] > 0 else b.op("Neg", [zs[0][1]])
        for sign, zk in zs[1:]:
            z = b.op("Add" if sign > 0 else "Sub", [z, zk])
        if z == unit.out:
            s = quotient(b, relevance, z, rule, positive)
        elif known_nonnegative(unit, terms):
            s = b.op("Div", [relevance, _nonnegative_stabilize(b, z, rule)])
        else:
            s = b.op("Div", [relevance, _stabilize(b, z, rule)])
        if group.mask:
            z_out = unit_output(b, unit)
            sel = b.op("Greater" if group.mask == "pos" else "Less", [z_out, b.scalar(0.0, z_out)])
            s = b.op("Where", [sel, s, b.scalar(0.0, z_out)])
        for t in terms:
            x_times = x_times and t.inp in X_TIMES
            back = unit.vjp(b, s, _param(b, unit, t.par, rule, "w"))
            factors = None
            if t.inp != "ones":
                factors = (_input(b, unit, t.inp, rule), back)
                back = b.op("Mul", list(factors))
            coef = group.coef * t.sign
            if coef != 1.0:
                back = b.op("Mul", [back, b.scalar(coef, unit.x)])
            elif total is None and len(rule.groups) == len(terms) == 1 and factors and factors[0] == unit.x:
                b.product_of[back] = factors  # R_in = x * VJP(s): x's own rule divides by x, see quotient
            total = back if total is None else b.op("Add", [total, back])
    b.set_info(total, unit.x)
    if x_times:
        b.zero_where[total] = unit.x
    return total
