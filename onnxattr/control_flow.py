"""Canonicalize, control flow: a Loop that runs a number of times known when compiling is unrolled into copies
of its body, one per trip, a Scan over scan inputs of a static length likewise, and an If whose condition is known
takes the place of the branch it runs. The reverse pass then differentiates the body's ops as any others, and the
LRP rules see its layers.

This is how tf2onnx writes Keras' ``SimpleRNN`` and ``GRU(reset_after=False)``: a Loop with no trip count,
stopped by a condition on a counter (time < steps), carrying the state, the weights and the steps, with the state
of every step as a scan output. The number of trips is found by running the part of the body that the condition
depends on (the "control slice": the counter and whatever it reads) in onnxruntime, from the Loop's constant
inputs; the control slice may not read the data.

Unrolling keeps ONNX's Loop semantics: trip k sees iteration_num = k and cond_in = true; a carried value takes
its initial value in trip 0 and the body's output of trip k − 1 after that; the Loop's carried outputs are the
last trip's; a scan output is the trips' values stacked on a new first axis. Carried values that the body passes
through unchanged (tf2onnx carries the weights) are read as their initial value in every trip, and body nodes
that read none of the trip's values are emitted once.

A node that cannot be unrolled stays, with the reason in its doc_string (``NOT_UNROLLED``), which the reverse
pass reports when the node lies on the explained path.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxattr.graph import live_nodes, names_read, outer_reads, rename_reads
from onnxattr.fold import NON_DETERMINISTIC
from onnxattr.light import infer_shapes, tensor_shapes
from onnxattr.recurrent_nodes import NOT_FIXED, node_attrs

CONTROL_OPS = frozenset({"If", "Loop", "Scan"})
NOT_UNROLLED = "onnxattr: not unrolled: "
MAX_TRIPS = 10_000  # the control slice runs at most this many trips (and one more, to tell a longer loop)
MAX_UNROLLED_NODES = 200_000  # trips × the body's per-trip nodes


def has_control_flow(model: onnx.ModelProto) -> bool:
    return any(n.op_type in CONTROL_OPS and n.domain in ("", "ai.onnx") for n in model.graph.node)


def why_control_flow_kept(node: onnx.NodeProto) -> str | None:
    """The reason canonicalize left this If, Loop or Scan in place (None if it did not look at it)."""
    return node.doc_string[len(NOT_UNROLLED):] if node.doc_string.startswith(NOT_UNROLLED) else None


def _graph_attr(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


class _Constants:
    """The main graph's initializers that no graph input overrides, as arrays on demand."""

    def __init__(self, graph: onnx.GraphProto):
        inputs = {i.name for i in graph.input}
        self.protos = {t.name: t for t in graph.initializer if t.name not in inputs}
        self.arrays: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.protos

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.protos[name])
        return self.arrays[name]


class _Copier:
    """Copies of a subgraph's nodes into the main graph, with the subgraph's own names under ``prefix``."""

    def __init__(self, prefix: str, out_nodes: list, out_inits: list):
        self.prefix, self.nodes, self.inits = prefix, out_nodes, out_inits
        self.count = 0

    def name(self, hint: str) -> str:
        """A new name; the dot keeps it apart from the copies of the subgraph's names."""
        self.count += 1
        return f"{self.prefix}.{hint}_{self.count}"

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def copy(self, node: onnx.NodeProto, rename: dict[str, str], tag: str) -> None:
        """``node`` with the names in ``rename`` replaced and its outputs renamed under ``tag``."""
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = f"{self.prefix}{tag}{node.name}" if node.name else self.name(f"{tag}{node.op_type}")
        rename_reads(new, rename)
        for k, o in enumerate(node.output):
            if o:
                rename[o] = new.output[k] = f"{self.prefix}{tag}{o}"
        self.nodes.append(new)

    def identity(self, src: str, dst: str) -> None:
        self.nodes.append(helper.make_node("Identity", [src], [dst], name=self.name("output")))

    def outputs(self, values: list[str], names) -> None:
        """The node's outputs ``names`` (those not left out) given the copies' ``values``."""
        for value, o in zip(values, names):
            if o:
                self.identity(value, o)

    def stack(self, values: list[str], axis: int, out: str) -> None:
        """``out`` = the trips' ``values`` stacked on a new ``axis`` (a scan output)."""
        axes = self.const(np.array([axis], np.int64), "axis")
        rows = []
        for v in values:
            rows.append(self.name("row"))
            self.nodes.append(helper.make_node("Unsqueeze", [v, axes], [rows[-1]], name=self.name("Unsqueeze")))
        self.nodes.append(helper.make_node("Concat", rows, [out], axis=axis, name=self.name("Concat")))


def _inline_if(node: onnx.NodeProto, constants: _Constants, prefix: str, nodes: list, inits: list) -> str | None:
    """The branch the If runs, in its place; or why not."""
    if node.input[0] not in constants:
        return "its condition is computed at run time"
    branch = _graph_attr(node, "then_branch" if bool(constants[node.input[0]]) else "else_branch")
    copier = _Copier(prefix, nodes, inits)
    rename: dict[str, str] = {}
    for t in branch.initializer:
        rename[t.name] = copier.const(numpy_helper.to_array(t), "init")
    for inner in branch.node:
        copier.copy(inner, rename, "")
    copier.outputs([rename.get(out.name, out.name) for out in branch.output], node.output)
    return None


def _control_slice(body: onnx.GraphProto, n_carried: int) -> tuple[list, set[int]]:
    """The body's nodes that its cond output depends on, through the carried values too, and those values'
    indices."""
    carried_in = {body.input[2 + j].name: j for j in range(n_carried)}
    wanted, carried = {body.output[0].name}, set()
    while True:
        nodes = live_nodes(body.node, wanted)
        read = {i for n in nodes for i in outer_reads(n)} | wanted
        more = {carried_in[i] for i in read if i in carried_in} - carried
        if not more:
            return nodes, carried
        carried |= more
        wanted |= {body.output[1 + j].name for j in more}


def _sizes_only(name: str, producers: dict, constants: _Constants) -> bool:
    """Whether ``name`` is computed from constants and the shapes (Shape, Size) of tensors only, not their data."""
    seen, todo = set(), [name]
    while todo:
        t = todo.pop()
        if t in seen or t in constants or not t:
            continue
        seen.add(t)
        node = producers.get(t)
        if node is None or node.op_type in NON_DETERMINISTIC:
            return False
        if node.op_type not in ("Shape", "Size"):
            todo.extend(outer_reads(node))
    return True


FIX_SIZES = "(export the model with fixed sizes; `onnxattr explain` and the Python Analyzer fix them from the data)"


def _run_time(name: str, what: str, producers: dict, constants: _Constants) -> str:
    if _sizes_only(name, producers, constants):
        return f"{NOT_FIXED}: {what} is read from an input's symbolic size {FIX_SIZES}"
    return f"{what} reads {name!r}, which is computed from the data at run time"


def _too_large(trips: int, per_trip: int) -> str | None:
    if trips * per_trip > MAX_UNROLLED_NODES:
        return f"unrolled, its {trips} trips would take {trips * per_trip} nodes (at most {MAX_UNROLLED_NODES})"
    return None


def _trip_count(node: onnx.NodeProto, constants: _Constants, producers: dict, opsets) -> int | str:
    """How many times the Loop runs, or why that is not known when compiling."""
    body = _graph_attr(node, "body")
    trips_in = node.input[0] if len(node.input) > 0 else ""
    cond_in = node.input[1] if len(node.input) > 1 else ""
    if trips_in and trips_in not in constants:
        return _run_time(trips_in, "its trip count", producers, constants)
    limit = max(int(constants[trips_in].reshape(-1)[0]), 0) if trips_in else None  # a scalar, or [1] (TorchScript)
    if not cond_in:
        return limit if limit is not None else "it has neither a trip count nor a condition"
    if cond_in not in constants:
        return _run_time(cond_in, "its first condition", producers, constants)
    if not bool(constants[cond_in]) or limit == 0:
        return 0
    n_carried = len(node.input) - 2
    nodes, carried = _control_slice(body, n_carried)
    local = ({i.name for i in body.input} | {t.name for t in body.initializer}
             | {o for n in nodes for o in n.output})
    outer = sorted({i for n in nodes for i in outer_reads(n) if i and i not in local})
    data = [i for i in outer if i not in constants] + [
        node.input[2 + j] for j in sorted(carried) if node.input[2 + j] not in constants]
    if data:
        return _run_time(data[0], "its stop condition", producers, constants)
    if any(n.op_type in NON_DETERMINISTIC for n in nodes):
        return "its stop condition draws random numbers"
    cap = MAX_TRIPS + 1 if limit is None else min(limit, MAX_TRIPS + 1)
    order = sorted(carried)
    sim_body = helper.make_graph(
        list(nodes) + [helper.make_node("Add", ["oa_count_in", "oa_one"], ["oa_count_out"])], "control",
        [body.input[0], body.input[1], helper.make_tensor_value_info("oa_count_in", onnx.TensorProto.INT64, [])]
        + [body.input[2 + j] for j in order],
        [body.output[0], helper.make_tensor_value_info("oa_count_out", onnx.TensorProto.INT64, [])]
        + [body.output[1 + j] for j in order],
        list(body.initializer) + [numpy_helper.from_array(np.array(1, np.int64), "oa_one")])
    inits = [numpy_helper.from_array(np.array(cap, np.int64), "oa_cap"),
             numpy_helper.from_array(np.array(0, np.int64), "oa_zero")]
    inits += [constants.protos[name] for name in {cond_in, *outer, *(node.input[2 + j] for j in order)}]
    loop = helper.make_node("Loop", ["oa_cap", cond_in, "oa_zero"] + [node.input[2 + j] for j in order],
                            ["oa_trips"] + [f"oa_final_{j}" for j in order], body=sim_body)
    graph = helper.make_graph([loop], "trips", [], [helper.make_tensor_value_info("oa_trips", onnx.TensorProto.INT64,
                                                                                  [])], inits)
    sim = helper.make_model(graph, opset_imports=list(opsets))
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        trips = int(ort.InferenceSession(sim.SerializeToString(), options,
                                         providers=["CPUExecutionProvider"]).run(["oa_trips"], {})[0])
    except Exception as e:  # noqa: BLE001 - any failure: the loop stays, with the reason
        return f"running its stop condition failed: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}"
    if trips > MAX_TRIPS:
        return f"it runs more than {MAX_TRIPS} times"
    return trips


def _declared_rank(value: onnx.ValueInfoProto) -> int:
    """The rank a graph input declares: 1 for a shape [1], 0 for a scalar or no shape."""
    t = value.type.tensor_type
    return len(t.shape.dim) if t.HasField("shape") else 0


def _unroll_loop(node: onnx.NodeProto, trips: int, read: set, prefix: str, nodes: list, inits: list) -> str | None:
    """``trips`` copies of the Loop's body in its place; or why not."""
    body = _graph_attr(node, "body")
    n_carried = len(node.input) - 2
    n_scan = len(body.output) - 1 - n_carried
    if trips == 0 and any(o in read for o in node.output[n_carried:]):
        return "it runs zero times and a scan output is read (its shape is not known)"
    carried_in = [body.input[2 + j].name for j in range(n_carried)]
    passed = {j for j in range(n_carried) if body.output[1 + j].name == carried_in[j]}
    trip_values = {body.input[0].name, body.input[1].name} | {carried_in[j] for j in range(n_carried)
                                                              if j not in passed}
    per_trip = []
    varying = set(trip_values)
    for inner in body.node:  # body nodes that read a trip's values run every trip; the others once
        if inner.op_type in NON_DETERMINISTIC or varying.intersection(outer_reads(inner)):
            per_trip.append(inner)
            varying.update(inner.output)
    if why := _too_large(trips, len(per_trip)):
        return why
    copier = _Copier(prefix, nodes, inits)
    shared: dict[str, str] = {carried_in[j]: node.input[2 + j] for j in passed}
    for t in body.initializer:
        shared[t.name] = copier.const(numpy_helper.to_array(t), "init")
    every_trip = {id(inner) for inner in per_trip}
    for inner in body.node:
        if id(inner) not in every_trip:
            copier.copy(inner, shared, "")
    # of the body's declared rank, as onnxruntime feeds them: TorchScript declares the iteration number [1], and
    # Gather(sizes, i) is then a 1-D slice bound (a scalar one onnxruntime's Slice refuses)
    shape_of = {k: [1] * _declared_rank(body.input[k]) for k in (0, 1)}
    true = copier.const(np.full(shape_of[1], True), "cond")
    state = [node.input[2 + j] for j in range(n_carried)]
    scans: list[list[str]] = [[] for _ in range(n_scan)]
    for k in range(trips):
        rename = dict(shared)
        rename[body.input[0].name] = copier.const(np.full(shape_of[0], k, np.int64), "iteration")
        rename[body.input[1].name] = true
        rename.update({carried_in[j]: state[j] for j in range(n_carried) if j not in passed})
        for inner in per_trip:
            copier.copy(inner, rename, f"{k}/")
        state = [state[j] if j in passed else rename.get(body.output[1 + j].name, body.output[1 + j].name)
                 for j in range(n_carried)]
        for s in range(n_scan):
            scans[s].append(rename.get(body.output[1 + n_carried + s].name, body.output[1 + n_carried + s].name))
    copier.outputs(state, node.output)
    for values, o in zip(scans, node.output[n_carried:]):
        if o and values:
            copier.stack(values, 0, o)
    return None


def _unroll_scan(node: onnx.NodeProto, shapes: dict, prefix: str, nodes: list, inits: list) -> str | None:
    """The Scan's body once per slice of its scan inputs, in its place; or why not. Trip t reads slice t (T − 1 − t
    for a reversed input) of every scan input and writes slice t (T − 1 − t reversed) of every scan output."""
    body = _graph_attr(node, "body")
    attrs = node_attrs(node)
    n_scan_in = attrs["num_scan_inputs"]
    n_state = len(node.input) - n_scan_in
    n_scan_out = len(body.output) - n_state
    scan_inputs = list(node.input[n_state:])
    in_axes = list(attrs.get("scan_input_axes", [0] * n_scan_in))
    in_reversed = list(attrs.get("scan_input_directions", [0] * n_scan_in))
    out_axes = list(attrs.get("scan_output_axes", [0] * n_scan_out))
    out_reversed = list(attrs.get("scan_output_directions", [0] * n_scan_out))
    lengths = set()
    for x, axis in zip(scan_inputs, in_axes):
        shape = shapes.get(x)
        if shape is None:
            return f"the length of its scan input {x!r} is not known"
        lengths.add(shape[axis])
    steps = lengths.pop() if len(lengths) == 1 else None
    if not isinstance(steps, int):
        return f"{NOT_FIXED}: its scan inputs' length is a symbolic size {FIX_SIZES}"
    if why := _too_large(steps, len(body.node)):
        return why
    if steps == 0:
        return "its scan inputs are empty"
    copier = _Copier(prefix, nodes, inits)
    shared = {t.name: copier.const(numpy_helper.to_array(t), "init") for t in body.initializer}
    state = list(node.input[:n_state])
    slices: list[list[str]] = [[] for _ in range(n_scan_out)]
    for t in range(steps):
        rename = dict(shared)
        rename.update({body.input[j].name: state[j] for j in range(n_state)})
        for j, (x, axis, back) in enumerate(zip(scan_inputs, in_axes, in_reversed)):
            row = copier.name(f"{t}/slice")
            index = copier.const(np.array(steps - 1 - t if back else t, np.int64), "index")
            nodes.append(helper.make_node("Gather", [x, index], [row], axis=axis, name=copier.name("Gather")))
            rename[body.input[n_state + j].name] = row
        for inner in body.node:
            copier.copy(inner, rename, f"{t}/")
        outs = [rename.get(o.name, o.name) for o in body.output]
        state = outs[:n_state]
        for k in range(n_scan_out):
            slices[k].append(outs[n_state + k])
    copier.outputs(state, node.output)
    for k, o in enumerate(node.output[n_state:]):
        if o:
            copier.stack(slices[k][::-1] if out_reversed[k] else slices[k], out_axes[k], o)
    return None


def unroll_control_flow(model: onnx.ModelProto) -> bool:
    """One pass over the main graph (in place): every If with a constant condition and every Loop with a known
    trip count replaced; returns whether anything changed. Run after constant folding, and again after folding
    what it wrote (an inner Loop's trip count may be an outer trip's iteration number)."""
    graph = model.graph
    constants = _Constants(graph)
    producers = {o: n for n in graph.node for o in n.output if o}
    read = names_read(graph.node) | {o.name for o in graph.output}
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    changed = False
    names = read | producers.keys() | {t.name for t in graph.initializer}
    used: set[str] = set()
    shapes = None
    for node in graph.node:
        if node.op_type not in CONTROL_OPS or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        prefix, k = node.name or node.op_type, 1  # the copies' names start with prefix/
        while prefix in used or any(n.startswith(prefix + "/") for n in names):
            prefix, k = f"{node.name or node.op_type}_{k}", k + 1
        used.add(prefix)
        if node.op_type == "If":
            why = _inline_if(node, constants, prefix + "/", nodes, inits)
        elif node.op_type == "Loop":
            trips = _trip_count(node, constants, producers, model.opset_import)
            why = trips if isinstance(trips, str) else _unroll_loop(node, trips, read, prefix + "/", nodes, inits)
        else:
            if shapes is None:
                shapes = tensor_shapes(infer_shapes(model))
            why = _unroll_scan(node, shapes, prefix + "/", nodes, inits)
        if why is None:
            changed = True
        else:
            node.doc_string = NOT_UNROLLED + why
            nodes.append(node)
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
    return changed
