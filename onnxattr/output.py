"""Write results without ever losing data: refuse to overwrite the input, write to a temporary file in
the destination folder and rename it into place (atomic on POSIX), remove the temporary on any error
or Ctrl-C. Models over 2 GB are written with their tensors in an external data file beside them."""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np
import onnx

from onnxattr.errors import OutputFileError

TWO_GB = 2**31


def refuse_overwriting_input(out_path: str, *inputs) -> None:
    out_real = os.path.realpath(out_path)
    for p in inputs:
        if p is not None and os.path.exists(p) and os.path.realpath(p) == out_real:
            raise OutputFileError(f"{out_path}: the output would overwrite the input {p}; choose another -o")


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise OutputFileError(f"{path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".onnxattr-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_model(model: onnx.ModelProto, path: str, source: str | None = None) -> None:
    refuse_overwriting_input(path, source)
    try:
        if model.ByteSize() < TWO_GB:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    f.write(model.SerializeToString())
            return
        data_name = os.path.basename(path) + ".data"
        data_path = os.path.join(os.path.dirname(os.path.abspath(path)), data_name)
        refuse_overwriting_input(data_path, source)
        with atomic_path(data_path) as tmp_data:
            onnx.external_data_helper.convert_model_to_external_data(
                model, all_tensors_to_one_file=True, location=os.path.basename(tmp_data), size_threshold=1024)
            with atomic_path(path) as tmp:
                onnx.save_model(model, tmp)  # writes the tensors into tmp_data (same folder)
                for t in onnx.external_data_helper._get_all_tensors(model):
                    for e in t.external_data:
                        if e.key == "location":
                            e.value = data_name
                onnx.save_model(model, tmp, save_as_external_data=False)
    except OSError as e:
        raise OutputFileError(f"{path}: cannot write ({e.strerror})") from None


def save_array(arr: np.ndarray, path: str, *inputs) -> None:
    refuse_overwriting_input(path, *inputs)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
    except OSError as e:
        raise OutputFileError(f"{path}: cannot write ({e.strerror})") from None
