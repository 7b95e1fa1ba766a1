"""Run compiled models with onnxruntime: sessions, providers, and which provider really ran.

onnxruntime does not raise when CUDA is asked for and unavailable: it logs and runs on the CPU.
``Runner.providers`` reads what the session actually uses, so callers can report it.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings

import numpy as np
import onnx
import onnxruntime as ort

from onnxattr.errors import DataError, InvalidModelError, OnnxAttrWarning, UnsupportedModelError, UsageError, warn
from onnxattr.load import nodes_within

DEVICES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


def providers_for(device: str | None, providers=None) -> list:
    if providers:
        return list(providers)
    device = device or "cpu"
    if device not in DEVICES:
        raise UsageError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    wanted = DEVICES[device]
    if device != "cpu" and wanted[0] not in ort.get_available_providers():
        raise UsageError(
            f"device '{device}' asked for, but this onnxruntime offers only "
            f"{', '.join(ort.get_available_providers())}; replace onnxruntime by onnxruntime-gpu (never both: "
            "pip uninstall -y onnxruntime && pip install onnxruntime-gpu; see the README's GPU section)"
        )
    return wanted


def _provider_name(p) -> str:
    return p[0] if isinstance(p, (tuple, list)) else str(p)


class ProviderFallbackWarning(OnnxAttrWarning):
    """An execution provider that was asked for is not the one running the session."""

    exit_code = 5  # as an error: unsupported on the chosen device


# onnxruntime plans a memory pattern on a session's first run; its cost grows faster than the node count (an LSTM
# unrolled over 4000 steps, ~10^5 nodes: 58 s, against 0.3 s without; 14,000 nodes: 0.17 s, and 25 % faster runs
# after it), so graphs larger than this run without it
MEM_PATTERN_NODE_LIMIT = 50_000


class Runner:
    """One onnxruntime session over a compiled model, created once and reused for every call.

    ``requested`` are the providers asked for, ``providers`` those the session really uses (onnxruntime
    drops an unavailable or failing provider without raising); ``fallback`` is a one-line message naming
    what was dropped (None when everything asked for runs), also issued as a ProviderFallbackWarning.
    """

    def __init__(self, model: onnx.ModelProto, device: str | None = None, providers=None, threads: int = 0,
                 profile_prefix: str | None = None):
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if profile_prefix:  # onnxruntime's per-node profile (node_placement reads it)
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        opts.log_severity_level = 4  # errors reach the user as exceptions, turned into one line
        if sum(1 for top in model.graph.node for _ in nodes_within(top)) > MEM_PATTERN_NODE_LIMIT:  # If branches too
            opts.enable_mem_pattern = False
        self.options = opts
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4
        self.requested = providers_for(device, providers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # onnxruntime's own warning; ours below is clearer
            try:
                self.session = ort.InferenceSession(
                    model.SerializeToString(), sess_options=opts, providers=self.requested
                )
            except ort.capi.onnxruntime_pybind11_state.NotImplemented as e:
                raise UnsupportedModelError(
                    f"onnxruntime cannot run the model on {', '.join(map(_provider_name, self.requested))}: "
                    f"{str(e).splitlines()[0]} (no kernel for that op and element type there; onnxruntime's "
                    "CPU provider has no float64 Conv, for one: use --device cuda or a float32 model)"
                ) from None
            except (ort.capi.onnxruntime_pybind11_state.Fail,
                    ort.capi.onnxruntime_pybind11_state.InvalidGraph) as e:
                raise InvalidModelError(f"onnxruntime cannot load the compiled model: {str(e).splitlines()[0]}") \
                    from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers: list[str] = list(self.session.get_providers())
        dropped = [_provider_name(p) for p in self.requested if _provider_name(p) not in self.providers]
        self.fallback = None
        if dropped:
            self.fallback = (
                f"asked for {', '.join(dropped)} but onnxruntime runs this model on "
                f"{', '.join(self.providers)} (available here: {', '.join(ort.get_available_providers())})"
            )
            warn(self.fallback, ProviderFallbackWarning)

    def run(self, feeds: dict, names=None) -> list[np.ndarray]:
        """The outputs ``names`` (all by default) for ``feeds``; onnxruntime's failures on this input
        become DataErrors with its first line (and its own log stays quiet)."""
        state = ort.capi.onnxruntime_pybind11_state
        try:
            return self.session.run(names, feeds, self.run_options)
        except (state.InvalidArgument, state.Fail, state.RuntimeException) as e:
            text = str(e)
            if "out of data bounds" in text and "ScatterElements node. Name:'oa/" in text:
                # the seed's one-hot (an index given by a model's own Gather is the model's error)
                raise DataError("a target index is out of range for the explained output") from None
            what = {state.InvalidArgument: "onnxruntime rejected the input", state.Fail: "onnxruntime failed on "
                    "this input"}.get(type(e), "onnxruntime failed")
            raise DataError(f"{what}: {text.splitlines()[0]}") from None


def node_placement(model: onnx.ModelProto, feeds: dict, device: str | None = None, providers=None) -> list[dict]:
    """Where each node of ``model`` ran in one run on ``feeds``: one dict per node (inside a Loop's body once)
    with its name, op type, execution provider and output element types, read off onnxruntime's profile
    (onnxruntime places nodes when it makes a session and reports the placement nowhere else).

    A node that ran elsewhere than the first provider asked for also gets ``fallback`` (mark_fallbacks): True
    when that provider could not run it (an input was on the device, so only a missing kernel keeps the node
    off it; for CUDA also a ConvTranspose with asymmetric pads or auto_pad SAME, which cuDNN cannot pad), False
    when onnxruntime chose the CPU: a CUDA session keeps shape arithmetic (Shape and what it feeds) and every
    node whose inputs are all on the CPU already there, by design. Copies (Memcpy nodes) join the two sides."""
    requested = providers_for(device, providers)
    with tempfile.TemporaryDirectory() as folder:
        runner = Runner(model, device, providers, profile_prefix=os.path.join(folder, "placement"))
        runner.run(feeds)
        with open(runner.session.end_profiling()) as f:
            events = json.load(f)
    placed = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            args = e.get("args", {})
            name = e["name"][: -len("_kernel_time")]
            placed.setdefault(name, {"node": name, "op": args.get("op_name"), "provider": args.get("provider"),
                                     "outputs": [t for o in args.get("output_type_shape", []) for t in o],
                                     "input_shapes": [s for i in args.get("input_type_shape", []) for s in i.values()]})
    return mark_fallbacks(model, list(placed.values()), _provider_name(requested[0]))


SMALL_INITIALIZER = 100  # elements: onnxruntime counts such a constant as being on the CPU (fallback_cpu_capability.cc)


def mark_fallbacks(model: onnx.ModelProto, placed: list[dict], first: str) -> list[dict]:
    """Give each node of ``placed`` that ran elsewhere than ``first`` a ``fallback`` flag, by onnxruntime's own
    rule for keeping a node on the CPU (GetCpuPreferredNodes): every input already there (a graph input, the
    output of Shape or Size or of a node that ran there, a constant of at most 100 elements) means onnxruntime
    chose the CPU (False); an input on the device means the device could not run the node (True), as does a
    ConvTranspose cuDNN cannot pad. A node onnxruntime renamed past recognition gets no flag."""
    by_name = {n.name: n for top in model.graph.node for n in nodes_within(top)}
    producer = {o: n for n in by_name.values() for o in n.output}
    graph_inputs = {i.name for i in model.graph.input}
    where = {p["node"]: p["provider"] for p in placed}
    for p in placed:
        if p["provider"] == first or (p["op"] or "").startswith("Memcpy"):
            continue
        node = by_name.get(p["node"]) or by_name.get(p["node"].rsplit("/", 1)[0])  # a fusion's name/Suffix
        if node is None:
            continue
        if first == "CUDAExecutionProvider" and not cudnn_can_pad(node):
            p["fallback"] = True
            continue
        shapes = p.get("input_shapes", [])
        on_cpu = []
        for k, name in enumerate(node.input):
            src = producer.get(name)
            if not name or name in graph_inputs or (src is not None and src.op_type in ("Shape", "Size")):
                on_cpu.append(True)
            elif src is not None and src.name in where:
                on_cpu.append(where[src.name] != first)
            else:  # a constant (or a node folded into one): on the CPU when small
                on_cpu.append(k < len(shapes) and int(np.prod(shapes[k], dtype=np.int64)) <= SMALL_INITIALIZER)
        p["fallback"] = not all(on_cpu)
    return placed


def cudnn_can_pad(node: onnx.NodeProto) -> bool:
    """False for a ConvTranspose that onnxruntime's CUDA provider leaves to the CPU (cuDNN pads symmetrically:
    asymmetric pads, or auto_pad SAME that may need them)."""
    if node.op_type != "ConvTranspose":
        return True
    at = {a.name: a for a in node.attribute}
    if "auto_pad" in at and at["auto_pad"].s in (b"SAME_UPPER", b"SAME_LOWER"):
        return False
    pads = list(at["pads"].ints) if "pads" in at else []
    return pads[: len(pads) // 2] == pads[len(pads) // 2:]
