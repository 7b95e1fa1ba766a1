"""What a method is: a name, parameters with iNNvestigate's defaults, and a graph builder."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import onnx

from onnxattr.errors import UsageError
from onnxattr.graph import GraphBuilder


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    doc: str
    parse: Callable[[str], Any] = float
    check: Callable[[Any], str | None] | None = None  # returns an error text or None


@dataclass
class Target:
    """What the builder explains: y w.r.t. x in the node list, seeded per ``neuron``."""

    b: GraphBuilder
    nodes: list[onnx.NodeProto]
    x: str
    y: str
    neuron: str
    index: str | None  # int64 [N, 1] chosen neuron per sample (None in mode "all")
    static_batch: bool = False
    assignment: dict = field(default_factory=dict)  # node name -> (rule, why), for `inspect`


@dataclass(frozen=True)
class Method:
    name: str
    doc: str
    build: Callable[[Target, dict], str]
    params: tuple[Param, ...] = ()
    family: str = "gradient"
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def resolve(self, given: dict) -> dict:
        """Defaults overridden by ``given``; unknown names and bad values raise UsageError."""
        known = {p.name: p for p in self.params}
        out = {p.name: p.default for p in self.params}
        for key, value in given.items():
            if key not in known:
                hint = difflib.get_close_matches(key, list(known), n=1)
                names = ", ".join(known) or "none"
                raise UsageError(
                    f"method '{self.name}' has no parameter '{key}'"
                    + (f" (did you mean '{hint[0]}'?)" if hint else "")
                    + f"; its parameters: {names}"
                )
            p = known[key]
            if isinstance(value, str):
                try:
                    value = None if value.lower() in ("none", "null") else p.parse(value)
                except (TypeError, ValueError):
                    raise UsageError(f"{self.name}: parameter {key}={value!r} is not a valid value") from None
            if p.check is not None:
                err = p.check(value)
                if err:
                    raise UsageError(f"{self.name}: parameter {key}={value!r}: {err}")
            out[key] = value
        return out


REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    REGISTRY[method.name] = method
    for alias in method.aliases:
        REGISTRY[alias] = method
    return method


def get_method(name: str) -> Method:
    """A registered method, or the preset defined by a rule file (a name ending in .toml)."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.endswith(".toml"):
        from onnxattr.methods.lrp import method_from_file

        return method_from_file(name)
    hint = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.5)
    raise UsageError(
        f"unknown method '{name}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
        + "; `onnxattr methods` lists them all"
    )


def positive_int(v):
    return None if isinstance(v, int) and not isinstance(v, bool) and v > 0 else "must be a positive integer"


def non_negative(v):
    return None if isinstance(v, (int, float)) and v >= 0 else "must be a number >= 0"


def one_of(*choices):
    def check(v):
        return None if v in choices else f"must be one of {', '.join(map(str, choices))}"

    return check


def parse_int(s: str) -> int:
    return int(s)
