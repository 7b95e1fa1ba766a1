"""The backward steps a composite hands the reverse pass (lrp/composite.py picks them): relevance passed on
unchanged (to the operand on the path, or to a chosen one), a data-movement op's own gradient keeping track of
where relevance is 0, the residual Add's proportional split, and a linear unit's rule.
"""

from __future__ import annotations

from onnxattr.emitters import VJPS
from onnxattr.emitters.broadcast import unbroadcast
from onnxattr.lrp import rules as R
from onnxattr.lrp.units import Unit


def pass_on(b, node, grads, need):
    """Relevance passes unchanged to the operand on the path (the first one that needs it), summed over the axes
    along which that operand was broadcast (a per-sample scale times a feature map gets the map's total); through a
    Cast it takes the operand's float type back (a float16 model's softmax computed in float32)."""
    out = [None] * len(node.input)
    for i, n in enumerate(need):
        if n:  # a one-input op (an activation) keeps the shape: no check, no ops
            out[i] = unbroadcast(b, grads[0], node.input[i], node.output[0]) if len(node.input) > 1 else grads[0]
            if b.is_float(node.input[i]) and b.types.get(node.input[i]) != b.types.get(node.output[0]):
                out[i] = b.op("Cast", [out[i]], to=b.types[node.input[i]])
            break
    return out


def pass_to(keep: int):
    """Relevance passes unchanged to operand ``keep`` (x of x * h(x)), summed over the axes it was broadcast
    along; the gate h(x) gets none."""
    def step(b, node, grads, need):
        out = [None] * len(node.input)
        if need[keep]:
            out[keep] = unbroadcast(b, grads[0], node.input[keep], node.output[0])
        return out

    return step


def zero_preserving(b, node, grads, need):
    """The op's own gradient; relevance 0 wherever the output is 0 stays 0 wherever each input is 0."""
    out = VJPS[node.op_type](b, node, grads, need)
    if b.zero_where.get(grads[0]) == node.output[0]:
        for x, r in zip(node.input, out):
            if r is not None:
                b.zero_where[r] = x
    return out


def positive_part(b, relevance, z, relu_of):
    """Relu(z) when the relevance arriving at z is known to be 0 wherever Relu(z) is (it passed unchanged
    through that Relu from x-times rules), else None."""
    where = b.zero_where.get(relevance)
    return where if where is not None and relu_of.get(z) == where else None


def add_split(style, relu_of):
    """R_i = x_i * R / stab(sum of the operands): the z rule of a residual Add (no weights); of a Mean of n operands,
    a layer of weights 1/n, R_i = (x_i / n) R / stab(mean)."""
    rule = R.Rule("add", (), stabilizer=style["stabilizer"], epsilon=style["epsilon"])

    def step(b, node, grads, need):
        y = node.output[0]
        s = R.quotient(b, grads[0], y, rule, positive_part(b, grads[0], y, relu_of))
        if node.op_type == "Mean":
            s = b.op("Mul", [s, b.scalar(1.0 / len(node.input), s)])
        out = []
        for x, n in zip(node.input, need):
            r = b.op("Mul", [x, s]) if n else None
            if r is not None:
                share = unbroadcast(b, r, x, y)
                if share == r:
                    b.zero_where[r] = x
                    b.product_of[r] = (x, s)
                r = share
            out.append(r)
        return out

    return step


def unit_step(unit: Unit, rule, relu_of):
    def step(b, node, grads, need):
        out = [None] * len(node.input)
        positive = positive_part(b, grads[0], unit.out, relu_of)
        out[list(node.input).index(unit.x)] = R.apply_rule(b, unit, rule, grads[0], positive)
        return out

    return step
