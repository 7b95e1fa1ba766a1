"""The table from op type to backward emitter."""

from typing import Callable

from onnxattr.errors import UnsupportedModelError

VJPS: dict[str, Callable] = {}

# Ops whose derivative is zero almost everywhere: relevance stops there, no error.
ZERO_GRAD_OPS = frozenset({"Floor", "Ceil", "Round", "Sign", "Hardmax"})


def node_attr(node, name: str, default=None):
    """The value of ``node``'s attribute ``name`` (ints as a list, a string decoded), or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else (a.i if a.type == a.INT else a.s.decode() if a.s else a.f)
    return default


def known_rank(b, node, tensor: str | None = None) -> int:
    """The rank of ``tensor`` (the node's first input by default), for a backward that needs it; refused naming the
    node and the tensor where shape inference could not tell it."""
    tensor = node.input[0] if tensor is None else tensor
    rank = b.rank(tensor)
    if rank is None:
        raise UnsupportedModelError(
            f"{node.op_type} node '{node.name}': the rank of its input '{tensor}' is unknown (shape inference could "
            "not tell), and its backward needs it; give the model's tensors declared shapes")
    return rank


def register(*op_types: str):
    """Decorator: ``@register("Relu")`` makes the function the VJP emitter of Relu."""

    def deco(fn):
        for t in op_types:
            VJPS[t] = fn
        return fn

    return deco
