"""Structure of products of two activations: which operand is a gate computed from the other, which
subtraction is a norm's centring, and which nodes compute a norm's statistics from its input. Shared by the
LRP presets (lrp/composite.py) and AttnLRP (methods/attn_lrp.py); graph reading only, nothing is emitted here.

A gate: start = h(gate) with h made of element-wise ops (and, where ``norms``, of norms: sums of squares
or absolute values) alone, so that x * h(x) is an activation of x written out (SiLU, exported GELU,
RMSNorm's x * rsqrt(mean x^2), a LayerNorm's division by its std).
"""

from __future__ import annotations

from onnxattr.lrp.units import LAYOUT_OPS

# what a gate's branch may hold: element-wise ops (each output element from the same position of its
# inputs, or from a reduced tensor broadcast back). A pool, a ReduceMax, a Slice/Concat shift, a MatMul or
# a softmax mixes positions or features: a branch through one is an activation of its own.
ELEMENTWISE_GATE_OPS = frozenset({
    "Sigmoid", "Tanh", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Abs", "Neg", "Softplus", "Softsign",
    "HardSigmoid", "HardSwish", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Mish", "Clip",
    "Cast", "Identity", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Unsqueeze", "Squeeze", "Expand",
})
NORM_OPS = frozenset({"ReduceL2", "ReduceSumSquare", "ReduceL1"})
SUMS = frozenset({"ReduceSum", "ReduceMean"})  # norms when they sum squares or absolute values

GATE_LIMIT = 64  # tensors a gate's branch may hold (tanh-GELU's has 8, RMSNorm's 6): a bound keeps compiles linear


def is_square(producer: dict, t: str) -> bool:
    """t is a square (Pow, Mul(a, a)) or an absolute value, read through Casts: its sum is a norm's."""
    node = producer.get(t)
    while node is not None and node.op_type == "Cast":
        node = producer.get(node.input[0])
    return node is not None and (node.op_type in ("Pow", "Abs") or (node.op_type == "Mul" and
                                                                     node.input[0] == node.input[1]))


def held_branch(producer: dict, live: set, x: str, start: str, gate: str, norms: bool = True) -> list | None:
    """The nodes that compute start from gate alone, or None if start is not so computed: every path from the
    explained input x to start passes through gate, and every op on the way is element-wise (or, where
    ``norms``, a norm: a sum of squares, not a softmax's denominator or a pooling, whose centring
    a - mean(a) is part of it), within GATE_LIMIT tensors."""
    stack, seen, branch = [start], {gate}, []
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        node = producer.get(t)
        if t == x or node is None or len(seen) > GATE_LIMIT:
            return None
        op = node.op_type
        if not (op in ELEMENTWISE_GATE_OPS or (norms and (
                op in NORM_OPS or (op in SUMS and is_square(producer, node.input[0]))))):
            return None
        branch.append(node)
        stack.extend(i for i in node.input if i in live and not (norms and centring_mean(producer, node, i)))
    return branch


def held_by(producer: dict, live: set, x: str, start: str, gate: str, norms: bool = True) -> bool:
    """start is computed from gate alone (held_branch)."""
    return held_branch(producer, live, x, start, gate, norms) is not None


def mean_chain(producer: dict, t: str) -> list | None:
    """The nodes from a ReduceMean to t through reshapes (the ReduceMean first), if t is a mean so read."""
    chain, node = [], producer.get(t)
    while node is not None and node.op_type in LAYOUT_OPS and node.input:
        chain.append(node)
        node = producer.get(node.input[0])
    return [node] + chain[::-1] if node is not None and node.op_type == "ReduceMean" else None


def mean_of(producer: dict, t: str) -> str | None:
    """The tensor a whose ReduceMean t is, read through reshapes (tf2onnx reshapes a channel mean of an
    NCHW map before subtracting it), else None."""
    chain = mean_chain(producer, t)
    return chain[0].input[0] if chain else None


def centring_mean(producer: dict, node, t: str) -> bool:
    """t is the mean that node = Sub(a, mean(a)) subtracts from a (a variance's centring, as torch.var
    exports it): part of the norm, not a sum of the values."""
    return (node.op_type == "Sub" and len(node.input) == 2 and t == node.input[1]
            and mean_of(producer, t) == node.input[0])


def _through_shift(producer: dict, live: set, t: str) -> tuple:
    """(u, sign, nodes): t = sign * u + c read back through Neg and through Add/Sub of a constant (tf2onnx
    writes a LayerNorm's beta - mean * s, or Neg(mean * s) where beta is 0), and the nodes passed."""
    passed, sign = [], 1
    while True:
        node = producer.get(t)
        if node is None or not (node.op_type == "Neg" or (node.op_type in ("Add", "Sub") and len(node.input) == 2)):
            return t, sign, passed
        varying = [k for k, i in enumerate(node.input) if i in live]
        if len(varying) != 1:
            return t, sign, passed
        if node.op_type == "Neg" or (node.op_type == "Sub" and varying[0] == 1):
            sign = -sign
        passed.append(node)
        t = node.input[varying[0]]


def centring_parts(producer: dict, live: set, node) -> list | None:
    """If node subtracts a tensor's mean from it, the other nodes of that centring (the mean's ReduceMean and
    reshapes, the Neg or shift on the way, the products a s and m s), else None. The forms: a - m with
    m = mean(a) (a LayerNorm written out, torch's opset < 17 export), and a s - m s, a s + Neg(m s) and
    a s + (beta - m s) with a common factor s (tf2onnx's Keras LayerNormalization)."""
    if node.op_type not in ("Sub", "Add") or len(node.input) != 2 or not all(i in live for i in node.input):
        return None
    if node.op_type == "Sub" and centring_mean(producer, node, node.input[1]):
        return mean_chain(producer, node.input[1])
    terms = [_through_shift(producer, live, i) for i in node.input]
    if node.op_type == "Sub":
        terms[1] = (terms[1][0], -terms[1][1], terms[1][2])
    if terms[0][1] == terms[1][1]:
        return None  # a s + m s: no centring
    for (p, _, p_passed), (q, _, q_passed) in (terms, terms[::-1]):
        left, right = producer.get(p), producer.get(q)
        if left is None or right is None or left.op_type != "Mul" or right.op_type != "Mul":
            continue
        for k in (0, 1):
            for j in (0, 1):
                if left.input[1 - k] == right.input[1 - j] and mean_of(producer, right.input[j]) == left.input[k]:
                    return mean_chain(producer, right.input[j]) + p_passed + q_passed + [left, right]
    return None


def statistics_parts(producer: dict, live: set, x: str, node) -> list:
    """The nodes that compute a BatchNormalization's mean and variance from its own input (tf2onnx's fused form of
    Keras' LayerNormalization: ReduceMean, Squeeze; Sub, ReduceSumSquare, Div)."""
    parts = []
    chain = mean_chain(producer, node.input[3]) if len(node.input) > 4 else None
    if chain is not None and chain[0].input[0] == node.input[0]:
        parts += chain
    branch = held_branch(producer, live, x, node.input[4], node.input[0]) if len(node.input) > 4 else None
    return parts + (branch or [])


def scaled_from(producer: dict, live: set, t: str) -> str:
    """The tensor that t is a constant multiple (through Mul or Div by a constant, Neg, Cast) or the centring
    (a - mean(a)) of: GPT-2's 0.5 * x * (1 + tanh(...)) multiplies 0.5 x, not x, by the gate, and a LayerNorm
    spelled with torch.var divides one centring of x by a std computed from another."""
    while True:
        node = producer.get(t)
        if node is not None and node.op_type == "Sub" and centring_mean(producer, node, node.input[1]):
            t = node.input[0]
            continue
        varying = [i for i in node.input if i in live] if node is not None else []
        if len(varying) != 1 or not (node.op_type in ("Neg", "Cast", "Mul") or (
                node.op_type == "Div" and varying[0] == node.input[0])):
            return t
        t = varying[0]


def gate_branch(producer: dict, live: set, x: str, node, norms: bool = True):
    """(keep, branch) for node = Mul(a, b) or Div(a, b), both varying with x, when operand ``keep`` is the
    gate that the other is computed from alone by the nodes ``branch`` (a Div only ever holds its divisor);
    else None."""
    if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
        return None
    for keep in (0, 1) if node.op_type == "Mul" else (0,):
        held, gate = node.input[1 - keep], node.input[keep]
        for source in dict.fromkeys((gate, scaled_from(producer, live, gate))):
            branch = held_branch(producer, live, x, held, source, norms)
            if branch is not None:
                return keep, branch
    return None


def broadcast_over(small, large) -> bool:
    """Whether a tensor of shape ``small`` is broadcast over one of shape ``large`` in an element-wise op: the same
    rank, each dim 1 or equal (two symbolic dims count as equal: shape inference may name one batch twice), and at
    least one 1 where the other is not (a gate [N, C, 1, 1] over a map)."""
    if small is None or large is None or len(small) != len(large):
        return False
    symbolic = lambda d: not isinstance(d, int)  # noqa: E731  (a dim_param name, or None)
    return all(d == 1 or d == e or (symbolic(d) and symbolic(e)) for d, e in zip(small, large)) and \
        any(d == 1 and e != 1 for d, e in zip(small, large))


def broadcast_gate(shape, node) -> int | None:
    """For a Mul of two activations whose one operand is broadcast over the other (a squeeze-excitation's gate
    [N, C, 1, 1] times its input, a spatial gate [N, 1, H, W]): the index of the other, the signal; else None.
    ``shape``: tensor name -> its shape or None."""
    if node.op_type != "Mul" or len(node.input) != 2:
        return None
    shapes = [shape(i) for i in node.input]
    return next((k for k in (0, 1) if broadcast_over(shapes[1 - k], shapes[k])), None)

