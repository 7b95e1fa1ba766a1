"""The reverse pass: from a seed at the explained output to relevance at the explained input.

Nodes on a path from the input to the output are visited in reverse topological order; each node's
emitter (or the rule the method assigns to it) turns what arrived at its outputs into contributions
at its inputs; contributions to a tensor used several times are summed. Nodes off the path (shape
arithmetic, constants) are left alone. Only float tensors carry gradient.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

import onnx

from onnxattr.control_flow import why_control_flow_kept
from onnxattr.emitters import VJPS, ZERO_GRAD_OPS
from onnxattr.emitters.quantize import CODE_READERS, HELD_CONSTANT, QOPERATOR_OPS, STRAIGHT_THROUGH
from onnxattr.errors import UnsupportedModelError
from onnxattr.expand import EXPANDED_OPS
from onnxattr.graph import GraphBuilder, node_reads
from onnxattr.qoperator import QOPERATOR_AS_FLOAT
from onnxattr.recurrent_nodes import RECURRENT_OPS, sequence_length, why_not_fused, why_not_unrolled

CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})

# A rule may take over the backward step of a node: rule(b, node, grads, need) -> list | None.
RuleLookup = Callable[[onnx.NodeProto], Callable | None]


def path_nodes(nodes: list[onnx.NodeProto], source: str, target: str, b: GraphBuilder, backward: bool = False):
    """Nodes (in their given topological order) lying on a float path from source to target,
    and the set of tensors on such paths. A quantizer's integer codes count as float (emitters/quantize.py);
    ``backward``: refuse, by name, an op on the path that reads codes and cannot pass their gradient."""
    reads = {id(node): node_reads(node) for node in nodes}
    reach = {source}
    codes = set()  # integer tensors that carry gradient: a quantizer's codes (emitters/quantize.py)
    for node in nodes:
        if any(i in reach for i in reads[id(node)]):
            # outputs of non-standard ops (ai.onnx.ml, custom domains such as onnxruntime's com.microsoft
            # fusions) often have no inferred type, nor have the ops after them: count such outputs as
            # reachable so the op is reported, never silently skipped
            untyped = node.domain not in ("", "ai.onnx") or any(
                i in reach and i not in b.types for i in reads[id(node)])
            code_types = {b.types.get(i) for i in reads[id(node)] if i in codes}
            held = HELD_CONSTANT.get(node.op_type, ())
            for k, o in enumerate(node.output):
                if k in held:
                    continue
                if o and (b.is_float(o) or (untyped and o not in b.types)):
                    reach.add(o)
                elif o and ((k == 0 and node.op_type in STRAIGHT_THROUGH) or b.types.get(o) in code_types):
                    reach.add(o)
                    codes.add(o)
    if target not in reach:
        return [], set()
    back = {target}
    on_path = []
    for node in reversed(nodes):
        if any(o in back for o in node.output) and any(i in reach for i in reads[id(node)]):
            on_path.append(node)
            for i in reads[id(node)]:
                if i in reach:
                    back.add(i)
    on_path.reverse()
    misread = [n for n in on_path if n.op_type not in CODE_READERS and any(i in codes for i in reads[id(n)])]
    if misread and backward:
        n = misread[0]
        hint = (f"{n.op_type} is onnxruntime's QOperator format; canonicalize writes "
                f"{', '.join(sorted(QOPERATOR_AS_FLOAT))} as float ops between DequantizeLinear and QuantizeLinear "
                "(qoperator.py), but not a channels_last node, one whose codes' type no zero point gives, nor other "
                "ops: quantize with quant_format=QuantFormat.QDQ (quantize_static's default) to explain the model"
                if n.op_type in QOPERATOR_OPS else "dequantize before this op")
        raise UnsupportedModelError(
            f"{n.op_type} node '{n.name}' reads the quantized codes "
            f"'{next(i for i in reads[id(n)] if i in codes)}' on the explained path; gradient passes through codes "
            f"(straight through) into {', '.join(sorted(CODE_READERS))} only: {hint}")
    return on_path, reach & back


def check_supported(on_path: Iterable[onnx.NodeProto], rule_for: RuleLookup | None = None,
                    b: GraphBuilder | None = None) -> None:
    """Raise one error naming every op on the path that cannot be differentiated."""
    on_path = list(on_path)
    recurrent = [n for n in on_path if n.op_type in RECURRENT_OPS and n.domain in ("", "ai.onnx") and not (
        b is not None and why_not_fused(n, sequence_length(b.shapes, n), b.value) is None)]  # emitters/recurrent.py
    if recurrent:  # canonicalize unrolls the ones it can (recurrent.py); say why these were not
        why = [f"{n.op_type} '{n.name}': " + ((why_not_unrolled(n, sequence_length(b.shapes, n), b.value)
                                                if b is not None else None) or "not unrolled") for n in recurrent[:5]]
        raise UnsupportedModelError(
            "recurrent nodes on the explained path are differentiated by unrolling them over their steps, and "
            f"these could not be: {'; '.join(why)}")
    missing: dict[str, list[str]] = defaultdict(list)
    control = []
    training = [n.name for n in on_path if n.op_type == "BatchNormalization"
                and any(a.name == "training_mode" and a.i for a in n.attribute)]
    if training:  # every VJP and LRP fold uses the running statistics, which such a node ignores
        raise UnsupportedModelError(
            f"BatchNormalization {', '.join(repr(n) for n in training[:5])} in training mode (it normalizes with "
            "the batch's own statistics): export the model in eval mode")
    for node in on_path:
        if node.op_type in CONTROL_FLOW:
            control.append((f"{node.op_type} '{node.name}'", why_control_flow_kept(node)))
            continue
        if node.domain not in ("", "ai.onnx") or (
            node.op_type not in VJPS and node.op_type not in ZERO_GRAD_OPS
            and not (rule_for and rule_for(node))
        ):
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            missing[key].append(node.name or "(unnamed)")
    if control:  # grouped by canonicalize's reason for leaving them (control_flow.py)
        groups: dict = defaultdict(list)
        for label, why in control[:10]:
            groups[why].append(label)
        raise UnsupportedModelError("control flow on the explained path is not supported: " + "; ".join(
            ", ".join(labels) + (f" ({why})" if why else "") for why, labels in groups.items()))
    if missing:
        listing = "; ".join(
            f"{op} ({len(names)}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
            for op, names in sorted(missing.items())
        )
        if all(op.startswith("ai.onnx.ml.") for op in missing):
            raise UnsupportedModelError(
                f"the explained output is not differentiable: it is computed by traditional-ML "
                f"operators (ai.onnx.ml), which have no gradient here: {listing}. The methods that run forward "
                "passes only explain any model: occlusion, feature_ablation, feature_permutation, shapley_values, "
                "shapley_value_sampling, kernel_shap, lime; "
                "the others need a path of standard ONNX ops (skl2onnx writes MLPClassifier/MLPRegressor that way)"
            )
        supported = ", ".join(sorted(VJPS))
        fused = any(op.startswith("com.microsoft.") for op in missing)
        defined = sorted(op for op in missing if op in EXPANDED_OPS)  # canonicalize could not expand these
        raise UnsupportedModelError(
            f"no backward rule for these ops on the explained path: {listing}. "
            + ("The com.microsoft ops are onnxruntime's fusions (its transformer optimizer writes them): explain "
               "the model as exported, before that optimizer. " if fused else "")
            + (f"{', '.join(defined)} {'is' if len(defined) == 1 else 'are'} differentiated through its ONNX "
               "definition, which onnx could not build for the types and shapes of its inputs here (declare the "
               "channel and weight dims as numbers). " if defined else "")
            + f"Supported: {supported}"
        )


def reverse_pass(
    b: GraphBuilder,
    nodes: list[onnx.NodeProto],
    source: str,
    target: str,
    seed: str,
    rule_for: RuleLookup | None = None,
) -> str | None:
    """Emit the backward of ``nodes`` from ``seed`` at ``target`` to ``source``; returns the name of
    the tensor arriving at ``source`` (None if nothing reaches it)."""
    on_path, live = path_nodes(nodes, source, target, b, backward=True)
    check_supported(on_path, rule_for, b)
    arrived: dict[str, list[str]] = defaultdict(list)
    arrived[target].append(seed)
    for node in reversed(on_path):
        grads = []
        for o in node.output:
            parts = arrived.pop(o, None)
            grads.append(b.add_all(parts) if parts else None)
        for g, o in zip(grads, node.output):
            if g is not None:
                b.set_info(g, o)
                if o in b.keep:
                    b.kept[o] = g
        if any(o in b.conditions for o in node.output):
            # a conditioned tensor: its relevance is masked, and what reached other tensors so far went around it
            # (a parallel branch, the node's other outputs) and is dropped: the map is what passes through it
            grads = [condition(b, g, o) if o in b.conditions else None for g, o in zip(grads, node.output)]
            arrived.clear()
        if all(g is None for g in grads):
            continue
        if node.op_type in ZERO_GRAD_OPS:
            continue
        need = [bool(i) and i in live for i in node.input]
        rule = rule_for(node) if rule_for else None
        step = rule if rule is not None else VJPS[node.op_type]
        results = step(b, node, grads, need)
        dropped = [name for name, r, n in zip(node.input, results, need) if n and r is None]
        if dropped and rule is None:
            raise UnsupportedModelError(
                f"{node.op_type} node '{node.name}': no gradient for its input {', '.join(dropped)}, which varies "
                "with the explained input (only its first input is differentiated)")
        for i, (name, r) in enumerate(zip(node.input, results)):
            if r is not None and need[i]:
                b.set_info(r, name)
                arrived[name].append(r)
    parts = arrived.get(source)
    arrived_at_source = b.add_all(parts) if parts else None
    if source in b.keep and arrived_at_source is not None:
        b.kept[source] = arrived_at_source
    if source in b.conditions:
        arrived_at_source = condition(b, arrived_at_source, source)
    return arrived_at_source


def condition(b: GraphBuilder, relevance: str | None, tensor: str) -> str | None:
    """R * m: the relevance at a conditioned ``tensor`` times its mask m (the graph input b.conditions names,
    broadcasting to the tensor: Concept Relevance Propagation's channel masks, or any mask). The facts the LRP
    rules read stay true: R * m is 0 wherever R was, and a product x * s stays one, x * (s * m)."""
    b.conditioned.add(tensor)
    if relevance is None:
        return None
    mask = b.conditions[tensor]
    if b.types.get(relevance) not in (None, onnx.TensorProto.FLOAT):
        mask = b.op("Cast", [mask], to=b.types[relevance])
    x, s = b.product_of.get(relevance, (None, None))
    if x is not None:
        s = b.op("Mul", [s, mask])
        out = b.op("Mul", [x, s])
        b.product_of[out] = (x, s)
    else:
        out = b.op("Mul", [relevance, mask])
    if relevance in b.zero_where:
        b.zero_where[out] = b.zero_where[relevance]
    b.set_info(out, relevance)
    return out
