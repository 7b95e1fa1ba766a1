"""Load a model safely: clear errors for missing, unreadable, non-ONNX or truncated files.

External data is loaded relative to the model's own folder only: onnx refuses locations that escape
it (``..``, absolute paths) and we additionally refuse symbolic links that point outside it.
"""

from __future__ import annotations

import os

import onnx
from google.protobuf.message import DecodeError

from onnxattr.errors import InvalidModelError, ModelFileError

TWO_GB = 2**31


def _check_external_locations(model: onnx.ModelProto, folder: str, path: str) -> None:
    real_folder = os.path.realpath(folder)
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        loc = info.get("location", "")
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


def load_model(model) -> onnx.ModelProto:
    """A ModelProto from a path or a ModelProto (copied, so the caller's object is never changed)."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
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
    folder = os.path.dirname(os.path.abspath(path))
    _check_external_locations(proto, folder, path)
    try:
        onnx.load_external_data_for_model(proto, folder)
    except Exception as e:  # noqa: BLE001 - onnx raises several types here
        raise ModelFileError(f"{path}: cannot load external data: {e}") from None
    return proto


def check_input_model(model: onnx.ModelProto, label: str) -> None:
    """onnx.checker on the user's model (by size: protos over 2 GB cannot be checked in memory)."""
    if model.ByteSize() >= TWO_GB:
        return
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        raise InvalidModelError(f"{label}: the model fails onnx.checker: {first}") from None
