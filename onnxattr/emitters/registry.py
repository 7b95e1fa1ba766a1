"""The table from op type to backward emitter."""

from typing import Callable

VJPS: dict[str, Callable] = {}

# Ops whose derivative is zero almost everywhere: relevance stops there, no error.
ZERO_GRAD_OPS = frozenset({"Floor", "Ceil", "Round", "Sign"})


def register(*op_types: str):
    """Decorator: ``@register("Relu")`` makes the function the VJP emitter of Relu."""

    def deco(fn):
        for t in op_types:
            VJPS[t] = fn
        return fn

    return deco
