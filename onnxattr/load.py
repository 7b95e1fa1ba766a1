"""Load a model safely: clear errors for missing, unreadable, non-ONNX or truncated files.

External data is loaded relative to the model's own folder only: onnx refuses locations that escape
it (``..``, absolute paths) and we additionally refuse symbolic links that point outside it.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from onnxattr.errors import InvalidModelError, ModelFileError, UsageError
from onnxattr.light import checkable_copy

_PACKED = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "INT2", "UINT2", "FLOAT4E2M1", "FLOAT6E2M3",
                                                  "FLOAT6E3M2") if hasattr(onnx.TensorProto, n)}


def _external_locations(model: onnx.ModelProto) -> list[tuple[onnx.TensorProto, str]]:
    """(tensor, location) for every tensor stored in an external data file, subgraphs included."""
    return [(t, next((e.value for e in t.external_data if e.key == "location"), ""))
            for t in onnx.external_data_helper._get_all_tensors(model)
            if t.data_location == onnx.TensorProto.EXTERNAL]


def _check_external_locations(model: onnx.ModelProto, folder: str, path: str) -> None:
    real_folder = os.path.realpath(folder)
    for tensor, loc in _external_locations(model):
        if os.path.isabs(loc) or ".." in loc.replace("\\", "/").split("/"):
            raise ModelFileError(
                f"{path}: tensor '{tensor.name}' stores its data at '{loc}', outside the model's folder; refused"
            )
        target = os.path.realpath(os.path.join(folder, loc))
        if os.path.commonpath([real_folder, target]) != real_folder:
            raise ModelFileError(
                f"{path}: tensor '{tensor.name}' external data '{loc}' resolves outside the model's folder "
                f"(symbolic link to {target}); refused"
            )
        if not os.path.isfile(target):
            raise ModelFileError(f"{path}: external data file '{loc}' of tensor '{tensor.name}' is missing")


_TEXT_FIELDS: dict = {}


def _text_fields(descriptor) -> list[tuple[str, bool, bool]]:
    """(name, repeated, is_message) of a message type's string and message fields, cached per type.
    Bytes fields (a tensor's raw_data) are never read: reading one copies the weights into Python."""
    fields = _TEXT_FIELDS.get(descriptor)
    if fields is None:
        fields = []
        for f in descriptor.fields:
            if f.type in (f.TYPE_STRING, f.TYPE_MESSAGE):
                repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED
                fields.append((f.name, repeated, f.type == f.TYPE_MESSAGE))
        _TEXT_FIELDS[descriptor] = fields
    return fields


def _non_utf8_field(msg, prefix: str = "") -> str | None:
    """Path of the first text field whose bytes are not UTF-8 (protobuf then hands back bytes, not str)."""
    for name, repeated, is_message in _text_fields(msg.DESCRIPTOR):
        if repeated:
            values = getattr(msg, name)
        elif msg.HasField(name):
            values = (getattr(msg, name),)
        else:
            continue
        for v in values:
            if not is_message:
                if isinstance(v, bytes):
                    return prefix + name
            else:
                found = _non_utf8_field(v, f"{prefix}{name}.")
                if found:
                    return found
    return None


def _check_text(proto: onnx.ModelProto, label: str) -> None:
    bad = _non_utf8_field(proto)
    if bad:
        raise ModelFileError(f"{label}: not a valid ONNX model: field {bad} is not UTF-8 text (damaged file?)")


def _check_tensor_sizes(model: onnx.ModelProto, label: str) -> None:
    """Every stored tensor holds as many values as its dims say (onnx.checker does not look)."""
    for t in onnx.external_data_helper._get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type in (0, onnx.TensorProto.STRING):
            continue
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            field = onnx.helper.tensor_dtype_to_field(t.data_type)
        except (KeyError, ValueError, TypeError):
            continue  # a packed (sub-byte) or unknown type: left to onnx
        want = int(np.prod(t.dims, dtype=np.int64))
        if t.HasField("raw_data"):
            if t.data_type in _PACKED or len(t.raw_data) == want * itemsize:
                continue
            have = f"{len(t.raw_data)} bytes"
            need = f"{want * itemsize}"
        else:
            per = 2 if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
            if t.data_type in _PACKED or len(getattr(t, field)) == want * per:
                continue
            have = f"{len(getattr(t, field))} values"
            need = f"{want * per}"
        raise InvalidModelError(
            f"{label}: tensor '{t.name}' holds {have} but its shape {list(t.dims)} needs {need}; damaged file?"
        )


def model_label(model) -> str:
    """A model's name in messages: its path, or "model" for an in-memory ModelProto."""
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else "model"


def load_model(model) -> onnx.ModelProto:
    """A ModelProto from a path or a ModelProto (copied, so the caller's object is never changed)."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        _check_text(copy, "model")
        _check_tensor_sizes(copy, "model")
        return copy
    if not isinstance(model, (str, os.PathLike)):
        hint = " (parse bytes with onnx.load_from_string first)" if isinstance(model, (bytes, bytearray)) else ""
        raise UsageError(f"the model must be a file path or an onnx.ModelProto, got {type(model).__name__}{hint}")
    path = os.fspath(model)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a folder, not an ONNX model file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror})") from None
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise ModelFileError(f"{path}: not an ONNX model (protobuf parse failed: {e}); truncated or another format?") from None
    if not proto.graph.node or proto.ir_version == 0:
        raise ModelFileError(f"{path}: not an ONNX model (no graph or no IR version)")
    _check_text(proto, path)
    folder = data_folder(proto, path)
    _check_external_locations(proto, folder, path)
    try:
        onnx.load_external_data_for_model(proto, folder)
    except Exception as e:  # noqa: BLE001 - onnx raises several types here
        raise ModelFileError(f"{path}: cannot load external data: {e}") from None
    _check_tensor_sizes(proto, path)
    return proto


def data_folder(proto: onnx.ModelProto, path: str) -> str:
    """Where the external data of the model file ``path`` lies: beside the file it names (a symbolic link
    followed), or else beside the link itself when every data file is there."""
    real = os.path.dirname(os.path.realpath(path))
    beside = os.path.dirname(os.path.abspath(path))
    if real == beside:
        return real
    locations = [loc for _, loc in _external_locations(proto)]
    if locations and not all(os.path.isfile(os.path.join(real, loc)) for loc in locations) \
            and all(os.path.isfile(os.path.join(beside, loc)) for loc in locations):
        return beside
    return real


def model_files(path) -> list[str]:
    """The files reading the model at ``path`` uses: the model file and its external data files (their
    real paths; nothing for a path that is not a readable ONNX file). Parses the file without its data,
    once per version of the file (a command checks each of its outputs against the model)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError:
        return []
    # keyed by where the path is (a link's folder holds its data files), the file it reaches and the file's
    # version (a rewrite changes ctime even when it keeps size and mtime)
    return list(_model_files(os.path.abspath(path), os.path.realpath(path), st.st_ino, st.st_size,
                             st.st_mtime_ns, st.st_ctime_ns))


@functools.lru_cache(maxsize=8)
def _model_files(path, real, inode, size, mtime_ns, ctime_ns) -> tuple[str, ...]:
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model: load_model reports that, here nothing more is read
        return (real,) if os.path.isfile(path) else ()
    folder = data_folder(proto, path)
    files = [real] + [os.path.realpath(os.path.join(folder, loc)) for _, loc in _external_locations(proto)]
    return tuple(dict.fromkeys(files))


def _subgraphs(node: onnx.NodeProto) -> list:
    """The node's subgraphs (If branches, Loop/Scan bodies)."""
    return [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)]


def nodes_within(node: onnx.NodeProto):
    """The node and the nodes of its subgraphs, at any depth."""
    yield node
    for g in _subgraphs(node):
        for n in g.node:
            yield from nodes_within(n)


def _all_nodes(model: onnx.ModelProto):
    """Every node: the graph's, those of model-local functions, then those of subgraphs (at any depth)."""
    queue = [model.graph.node] + [f.node for f in model.functions]
    while queue:
        for n in queue.pop(0):
            yield n
            queue.extend(g.node for g in _subgraphs(n))


def check_input_model(model: onnx.ModelProto, label: str) -> None:
    """onnx.checker on the user's model without its weights (light.light_model; their sizes are
    _check_tensor_sizes's job), skipped over 2 GB as protobuf cannot serialize more."""
    unknown = [n for n in _all_nodes(model) if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    if unknown:  # onnx.checker would only print a warning to stdout for the early experimental ops
        listed = ", ".join(f"{n.op_type} ({f'node {n.name!r}' if n.name else 'an unnamed node'})"
                           for n in unknown[:5])
        if model.producer_name == "tf2onnx":  # TensorFlow ops it could not convert stay in the graph as they were
            why = ("a TensorFlow op that tf2onnx left unconverted (its log lists it under 'Unsupported ops'; "
                   "tf2onnx 1.17 leaves a Keras Conv2D with groups > 1 as PartitionedCall); rewrite that layer "
                   "with ops tf2onnx converts, such as one Conv2D per group on a channel slice, and convert again")
        else:
            why = "an experimental op of early ONNX since removed, or a misspelt op; replace it with standard ops " \
                  "and export again"
        raise InvalidModelError(
            f"{label}: {listed} {'is' if len(unknown) == 1 else 'are'} not an ONNX op that onnx "
            f"{onnx.__version__} knows: {why}")
    light = checkable_copy(model)
    if light is None:
        return
    try:
        onnx.checker.check_model(light)
    except onnx.checker.ValidationError as e:
        text = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()) or "invalid model"
        raise InvalidModelError(f"{label}: the model fails onnx.checker: {text}") from None


def check_input_shapes(model: onnx.ModelProto, label: str) -> None:
    """Strict shape and type inference on the user's model (without its weights); raises naming its
    first inconsistency."""
    light = checkable_copy(model)
    if light is None:
        return
    try:
        onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if ln.startswith("(op_type")), lines[0] if lines else "inference failed")
        raise InvalidModelError(f"{label}: the model's shapes or types are inconsistent: {detail}") from None


def default_opset(model: onnx.ModelProto) -> int:
    """The model's version of the standard (ai.onnx) opset; 0 when it imports none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
