"""LRP presets as data: one TOML file per method (shipped from the top-level ``rules/`` folder, or a
user's own file). A preset says which rule each kind of layer gets; it holds no code.

    method = "lrp.sequential_preset_a"
    doc = "..."
    style = "innvestigate"     # stabilizer and bias conventions: innvestigate | zennit
    seed = "logit"             # output seed: logit | relu_logit | one
    add = "z"                  # residual Add/Sum of activations: z | gradient
    activation = "pass"        # element-wise activations: pass | gradient (the latter except right
                               # after a kernel layer, whose own activation always passes)
    gates = "gradient"         # a Mul of an activation by a gate broadcast over it (a squeeze-excitation):
                               # gradient (Zennit's, iNNvestigate's) | hold (the gate constant, all to the other)
    scales = "pass"            # a Mul or Div by a constant (an input normalization, a LayerScale): pass (the z
                               # rule of a diagonal layer) | gradient (Zennit's, iNNvestigate's)

    [params]                   # method parameters, referenced below as "$name"
    epsilon = { default = 0.1, doc = "epsilon of the dense layers" }

    [layers]                   # selector -> rule; first match wins in the order of SELECTORS
    dense = { rule = "epsilon", epsilon = "$epsilon" }
    conv  = { rule = "alpha_beta", alpha = 1, beta = 0 }

    [nodes]                    # optional: ONNX node name or glob pattern -> rule, before the rule of the node's
    "/features/0/Conv" = { rule = "flat" }   # kind; the first pattern (in file order) whose rule it takes wins
    "/features/*/Mul" = { rule = "pass", operand = 1 }   # a product's relevance all to operand 1 (lrp/named.py)

A user's file may start from a shipped preset, ``base = "lrp.epsilon_plus"``: it then takes the base's keys,
parameters and [layers] entries, and its own keys, parameters and [layers] entries replace or extend them (so a
file of only ``base`` and a [nodes] table changes a few nodes of a shipped method).

Every mistake is reported with the file, the line and the key.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from onnxattr.errors import UsageError
from onnxattr.lrp.composite import SELECTORS
from onnxattr.lrp.specs import RULE_NAMES, STYLES

RULE_KEYS = {
    "rule": str, "epsilon": float, "alpha": float, "beta": float, "bias": bool, "gamma": float,
    "low": float, "high": float, "operand": int,
}
# the top-level keys that pick one of a few values: key -> (the values, the default)
CHOICES = {
    "style": (tuple(STYLES), "innvestigate"), "seed": (("logit", "relu_logit", "one"), "logit"),
    "add": (("z", "gradient"), "z"), "activation": (("pass", "gradient"), "pass"),
    "gates": (("gradient", "hold"), "gradient"), "scales": (("pass", "gradient"), "pass"),
}
TOP_KEYS = ("method", "doc", "base", *CHOICES, "params", "layers", "nodes")
# the keys each rule reads besides "rule" (any other is a mistake, not an option silently dropped)
RULE_TAKES = {
    "epsilon": {"epsilon"}, "epsilon_IB": {"epsilon"}, "alpha_beta": {"alpha", "beta", "bias"},
    "alpha_beta_IB": {"alpha", "beta"}, "z_plus": set(), "gamma": {"gamma"}, "zbox": {"low", "high"},
    "pass": {"operand"},
}
PARAM_KEYS = ("default", "doc")


@dataclass
class PresetParam:
    name: str
    default: object
    doc: str


@dataclass
class Preset:
    name: str
    doc: str
    style: str
    seed: str
    add: str
    activation: str
    layers: dict                        # selector -> {key: value or "$param"}
    gates: str = "gradient"
    scales: str = "pass"
    params: list = field(default_factory=list)
    path: str = ""
    nodes: dict = field(default_factory=dict)  # node name or glob pattern -> {key: value or "$param"}

    def resolve_layers(self, values: dict, table: str = "layers") -> dict:
        """The [layers] (or [nodes]) table with every "$param" replaced by its value."""
        out = {}
        for sel, spec in getattr(self, table).items():
            out[sel] = {k: (values[v[1:]] if isinstance(v, str) and v.startswith("$") else v)
                        for k, v in spec.items()}
        return out


class PresetError(UsageError):
    pass


def _line_of(text: str, key: str, table: str | None = None) -> int:
    """1-based line where ``key`` is assigned (inside ``[table]`` when given); 1 if not found."""
    lines = text.splitlines()
    start = 0
    if table is not None:
        for i, line in enumerate(lines):
            if re.match(rf"\s*\[\s*{re.escape(table)}\s*\]", line):
                start = i + 1
                break
    pattern = re.compile(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=")  # bare, "quoted" or 'literal'
    for i in range(start, len(lines)):
        if table is not None and i > start and re.match(r"\s*\[", lines[i]):
            break
        if pattern.match(lines[i]):
            return i + 1
    return 1


def _check_rule(sel, spec, table, known_params, fail):
    """One entry of [layers] or [nodes]: known keys and types, declared parameters, the rule's own keys."""
    if not isinstance(spec, dict) or "rule" not in spec:
        fail(f"'{sel}' needs an inline table with a rule, e.g. {{ rule = \"epsilon\" }}", sel, table)
    for k, v in spec.items():
        if k not in RULE_KEYS:
            fail(f"'{sel}': unknown rule key '{k}' (known: {', '.join(RULE_KEYS)})", sel, table)
        if isinstance(v, str) and v.startswith("$"):
            if v[1:] not in known_params:
                fail(f"'{sel}': {k} refers to undeclared parameter '{v}'", sel, table)
            continue
        want = RULE_KEYS[k]
        ok = isinstance(v, (int, float) if want is float else want) and not (isinstance(v, bool) and want is not bool)
        if not ok:
            fail(f"'{sel}': {k} must be a {want.__name__}, got {v!r}", sel, table)
    if spec["rule"] not in RULE_NAMES:
        fail(f"'{sel}': unknown rule '{spec['rule']}' (known: {', '.join(RULE_NAMES)})", sel, table)
    unused = sorted(set(spec) - {"rule"} - RULE_TAKES.get(spec["rule"], set()))
    if unused:
        fail(f"'{sel}': rule {spec['rule']} takes no {unused[0]}", sel, table)
    if spec["rule"] == "zbox" and not {"low", "high"} <= set(spec):
        fail(f"'{sel}': rule zbox needs low and high", sel, table)
    if "operand" in spec and table != "nodes":
        fail(f"'{sel}': operand picks an operand of an Add or a product of two activations, which only [nodes] "
             "entries name", sel, table)


def parse_preset(text: str, path: str, bases: dict | None = None) -> Preset:
    """Parse and validate a preset; raise PresetError naming file, line and key. ``bases``: the presets a
    ``base`` key may name (name -> Preset)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{path}: not valid TOML: {e}") from None

    def fail(msg, key, table=None):
        raise PresetError(f"{path}:{_line_of(text, key, table)}: {msg}")

    for key in data:
        if key not in TOP_KEYS:
            fail(f"unknown key '{key}' (known: {', '.join(TOP_KEYS)})", key)
    for key in ("method", "doc", "base"):
        if key in data and not isinstance(data[key], str):
            fail(f"{key} must be a string, got {data[key]!r}", key)
    base = None
    if "base" in data:
        base = (bases or {}).get(data["base"])
        if base is None:
            fail(f"base = {data['base']!r} is not a shipped preset (known: {', '.join(sorted(bases or ()))})", "base")
    if "params" in data and not isinstance(data["params"], dict):
        fail("params must be a table of name = { default = ..., doc = \"...\" }", "params")
    for key, (choices, _) in CHOICES.items():
        if key in data and data[key] not in choices:
            fail(f"{key} = {data[key]!r} is not one of {', '.join(choices)}", key)
    params = []
    for name, spec in (data.get("params") or {}).items():
        if not isinstance(spec, dict) or "default" not in spec:
            fail(f"parameter '{name}' needs a table {{ default = ..., doc = \"...\" }}", name, "params")
        if not isinstance(spec["default"], (int, float)) or isinstance(spec["default"], bool):
            fail(f"parameter '{name}': default must be a number", name, "params")
        extra = sorted(set(spec) - set(PARAM_KEYS))
        if extra:
            fail(f"parameter '{name}': unknown key '{extra[0]}' (known: {', '.join(PARAM_KEYS)})", name, "params")
        if name == "until_layer_idx" and (not isinstance(spec["default"], int) or spec["default"] < 0):
            fail(f"parameter 'until_layer_idx': default must be an integer >= 0, got {spec['default']!r}",
                 name, "params")
        params.append(PresetParam(name, spec["default"], str(spec.get("doc", ""))))
    if base is not None:  # the base's parameters, those of the same name replaced by the file's
        own = {p.name for p in params}
        params = [p for p in base.params if p.name not in own] + params
    known_params = {p.name for p in params}
    layers = data.get("layers", {} if base is not None else None)
    if not isinstance(layers, dict) or not (layers or base is not None):
        fail("a preset needs a [layers] table mapping selectors to rules (or a base preset)", "layers")
    for sel, spec in layers.items():
        if sel not in SELECTORS:
            fail(f"unknown layer selector '{sel}' (known: {', '.join(SELECTORS)})", sel, "layers")
        _check_rule(sel, spec, "layers", known_params, fail)
    if base is not None:
        layers = {**base.layers, **layers}
    nodes = data.get("nodes", {})
    if not isinstance(nodes, dict):
        fail("nodes must be a table of \"node name or pattern\" = { rule = ... }", "nodes")
    for pattern, spec in nodes.items():
        _check_rule(pattern, spec, "nodes", known_params, fail)
    if "until" in layers and "until_layer_idx" not in known_params:
        fail("selector 'until' needs a parameter until_layer_idx in [params]", "until", "layers")
    name = data.get("method") or Path(path).stem
    if base is None:
        top = {key: data.get(key, default) for key, (_, default) in CHOICES.items()}
        doc = data.get("doc", f"LRP preset from {path}")
    else:
        top = {key: data.get(key, getattr(base, key)) for key in CHOICES}
        doc = data.get("doc", f"{base.name} with the changes of {path}")
    return Preset(name=name, doc=str(doc), layers=layers, params=params, path=str(path), nodes=nodes, **top)


def load_preset(path, bases: dict | None = None) -> Preset:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark is no TOML
    except (OSError, UnicodeDecodeError) as e:
        raise PresetError(f"{path}: cannot read the rule file ({e.__class__.__name__}: {e})") from None
    return parse_preset(text, str(path), bases)
