"""The LRP family, Deep Taylor and excitation backprop: every method is a preset in ``rules/*.toml``
(shipped as the package ``onnxattr.presets``), turned into a Composite and run through the reverse pass.

A user's own rule file is a method too: ``get_method("my_rules.toml")`` / ``--rules my_rules.toml``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from onnxattr.compiler import path_nodes, reverse_pass
from onnxattr.emitters.loss import LOSS_OPS
from onnxattr.errors import OnnxAttrWarning, UsageError, warn
from onnxattr.lrp.composite import Composite
from onnxattr.lrp.gates import broadcast_gate
from onnxattr.lrp.presets import Preset, PresetParam, load_preset, parse_preset
from onnxattr.lrp.specs import STYLES, make_rule
from onnxattr.methods.base import Method, Param, Target, as_carried, non_negative_int, register_method
from onnxattr.select import build_seed


class UnmatchedNodePatternWarning(OnnxAttrWarning):
    """A [nodes] pattern of a rule file takes no layer of the model: it matches none (a typo, or a file
    for another model), or an earlier pattern takes all it matches."""

    exit_code = 2  # usage, when a warnings filter makes it an error


def warn_on_loss(method: str, on_path) -> None:
    """An LRP method's path through a loss node (a model exported with its loss) crosses it by the gradient,
    which conserves nothing: warn, and point to the logits."""
    losses = [n for n in on_path if n.op_type in LOSS_OPS]
    if losses:
        warn(f"{method}: relevance crosses the loss {losses[0].op_type} node '{losses[0].name}' by its gradient, so "
             "it is not conserved there; for LRP, explain the logits: --output NAME (output=NAME in Python)",
             OnnxAttrWarning)


# normalizations over axes whose output does not change when a constant is added along them: their
# gradient sums to 0 over those axes, so relevance passed by it sums to 0
CENTRING_NORMS = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization"})


def warn_on_centring_norms(method: str, on_path, centrings) -> None:
    """A LayerNorm (or Instance/GroupNorm, or what the composite found among ``centrings``: a BatchNormalization
    of its input's own statistics, a centring a - mean(a) where a LayerNorm is written out) on the path passes
    relevance by its gradient, whose sum over the normalized axes is 0 (the norm ignores a shift along them):
    the map no longer sums to the logit. Warn, and point to attn_lrp, which holds the std constant."""
    found = {n.name for n in centrings}
    norms = [n for n in on_path if n.name in found or (n.op_type in CENTRING_NORMS and n.domain in ("", "ai.onnx"))]
    if norms:
        more = f" and {len(norms) - 1} more" if len(norms) > 1 else ""
        what = norms[0].op_type if norms[0].op_type in CENTRING_NORMS else (
            "BatchNormalization (of its input's own statistics)" if norms[0].op_type == "BatchNormalization"
            else f"centring {norms[0].op_type} (a LayerNorm written out)")
        warn(f"{method}: relevance crosses the {what} node '{norms[0].name}'{more} by its gradient, "
             "which sums to 0 over the normalized axes, so the map does not sum to the explained output; "
             "attn_lrp holds a norm's std constant and conserves relevance there", OnnxAttrWarning)


def warn_on_products(method: str, products, shape=lambda name: None, shipped: bool = False) -> None:
    """A Mul or Div of two activations (a squeeze-excitation's gate times its input) takes its gradient, as in
    Zennit and iNNvestigate, which conserves no relevance: warn, and point to the rule that holds the gate (a
    rule file's [nodes] entry, naming the operand that the other is broadcast over, as a gate is) and to
    attn_lrp, which splits the product."""
    if products:
        more = f" and {len(products) - 1} more" if len(products) > 1 else ""
        first = products[0]
        signal = broadcast_gate(shape, first)
        where = f"a rule file of base = \"{method}\" and " if shipped else ""
        entry = f"\"{first.name}\" = {{ rule = \"pass\", operand = {'K' if signal is None else signal} }}"
        if signal is None:
            hold = (f"{where}[nodes] {entry} holds the other operand constant and gives operand K all the "
                    "relevance")
        else:
            hold = (f"{where}gates = \"hold\" holds such a gate (here operand {1 - signal}, broadcast over operand "
                    f"{signal}) constant and gives the other operand all the relevance, as [nodes] {entry} does "
                    "for this node")
        warn(f"{method}: relevance crosses the {first.op_type} node '{first.name}'{more}, a product of two "
             "activations (such as a squeeze-excitation's gate times its input), by its gradient, as Zennit and "
             f"iNNvestigate do, so the map does not sum to the explained output; {hold}; attn_lrp splits such a "
             "product between its operands (with hold_gates=1 it holds such gates)", OnnxAttrWarning)


def _param(p: PresetParam) -> Param:
    if isinstance(p.default, int) and not isinstance(p.default, bool):
        return Param(p.name, p.default, p.doc, int, non_negative_int)
    return Param(p.name, float(p.default), p.doc, float)


def build_composite(preset: Preset, params: dict, name_selectors: bool = False) -> Composite:
    """The preset's rules for ``params``; ``name_selectors``: a bad rule value names its selector (a
    user's rule file, where the selector is what the user wrote)."""
    style = STYLES[preset.style]
    rules = {}
    for table in ("layers", "nodes"):
        for sel, spec in preset.resolve_layers(params, table).items():
            try:
                rules[table, sel] = make_rule(spec, style)
            except UsageError as e:
                if not name_selectors:
                    raise
                raise UsageError(f"'{sel}': {e}") from None
    selectors = {sel: rule for (table, sel), rule in rules.items() if table == "layers"}
    nodes = tuple((sel, rule) for (table, sel), rule in rules.items() if table == "nodes")
    return Composite(selectors, preset.add, style, until_index=params.get("until_layer_idx"),
                     activation=preset.activation, nodes=nodes, gates=preset.gates, scales=preset.scales)


def preset_method(preset: Preset, label: str | None = None) -> Method:
    """A Method whose graph builder applies ``preset`` (``label``: its name in messages, the file's path
    for a user's rule file)."""

    def build(t: Target, p: dict) -> str:
        try:
            composite = build_composite(preset, p, name_selectors=label is not None)
        except UsageError as e:
            raise UsageError(f"{label or preset.name}: {e}") from None
        on_path, _ = path_nodes(t.nodes, t.x, t.y, t.b)
        try:
            rule_for = composite.lookup(t.b, on_path, t.x, t.y)
        except UsageError as e:
            raise UsageError(f"{label or preset.name}: {e}") from None
        for patterns, what in ((composite.unmatched, "no node on the explained path"),
                               (composite.untaken, "only nodes that do not take its rule (layer rules take "
                                "layers; pass and gradient also activations and element-wise ops; z, epsilon and "
                                "pass with an operand Adds of activations; gradient and pass with an operand "
                                "products of two; nodes fused into a layer and data movement take none)"),
                               (composite.shadowed, "only nodes an earlier pattern takes")):
            if patterns:
                verb = "matches" if len(patterns) == 1 else "match"
                warn(f"{label or preset.name}: [nodes] {', '.join(repr(p) for p in patterns)} {verb} {what} "
                     "(`onnxattr inspect` lists the node names and their rules)", UnmatchedNodePatternWarning)
        warn_on_loss(label or preset.name, on_path)
        warn_on_centring_norms(label or preset.name, on_path, composite.centrings)
        warn_on_products(label or preset.name, composite.products, t.b.shape, shipped=label is None)
        seed = build_seed(t.b, t.y, t.neuron, preset.seed, t.index)
        r = reverse_pass(t.b, t.nodes, t.x, t.y, seed, rule_for)
        t.assignment.update(composite.assignment)
        return r if r is not None else t.b.zeros_like(t.x)

    return Method(preset.name, preset.doc, build, tuple(_param(p) for p in preset.params), family="lrp",
                  at_layer=as_carried, conditional=True)


SHIPPED: dict = {}  # name -> Preset: the methods of rules/*.toml, which a user's file may name as its base


def method_from_file(path) -> Method:
    return preset_method(load_preset(path, SHIPPED), label=str(path))


def preset_folder():
    """The shipped presets: package data ``onnxattr.presets`` when installed, else the source tree's
    top-level rules/ (running from a checkout, where the package-dir mapping does not apply)."""
    try:
        return resources.files("onnxattr.presets")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "rules"


def _register_shipped():
    folder = preset_folder()
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            preset = parse_preset(entry.read_text(encoding="utf-8"), entry.name)
            SHIPPED[preset.name] = preset
            register_method(preset_method(preset))


_register_shipped()
