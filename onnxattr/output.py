"""Write results without ever losing data: refuse to overwrite the input, write to a temporary file in
the destination folder and rename it into place (atomic on POSIX), remove the temporary on any error
or Ctrl-C. Models over 2 GB are written with their tensors in an external data file beside them."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile

import numpy as np
import onnx

from onnxattr.errors import OutputFileError
from onnxattr.light import TWO_GB

EXTERNAL_MIN_BYTES = 1024  # tensors this small stay inside the .onnx file


def refuse_overwriting_input(out_path: str, *inputs) -> None:
    out_real = os.path.realpath(out_path)
    for p in inputs:
        if p is not None and os.path.exists(p) and os.path.realpath(p) == out_real:
            raise OutputFileError(f"{out_path}: the output would overwrite the input {p}; choose another -o")


def destination_folder(path: str) -> str:
    """The existing folder ``path`` will be written into."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise OutputFileError(f"{path}: folder {folder} does not exist")
    return folder


def _new_file_mode(path: str) -> int:
    """The mode ``path`` keeps (when it exists) or a new file gets (0666 less the umask); mkstemp's
    temporaries are 0600, which a rename would otherwise hand on to the result."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside ``path``; on success give it the mode of a normally created file
    and rename it to ``path``, else delete it."""
    folder = destination_folder(path)
    fd, tmp = tempfile.mkstemp(prefix=".onnxattr-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _new_file_mode(path))
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
        _save_external(model, path, source)
    except OSError as e:
        raise OutputFileError(f"{path}: cannot write ({e.strerror})") from None


def _save_external(model: onnx.ModelProto, path: str, source: str | None) -> None:
    """Write ``path`` and its tensors in ``path``.data: both go to a temporary folder beside ``path``,
    are checked there by path, then renamed into place (data first); the folder goes on any error."""
    folder = destination_folder(path)
    data_name = os.path.basename(path) + ".data"
    data_path = os.path.join(folder, data_name)
    refuse_overwriting_input(data_path, source)
    work = tempfile.mkdtemp(prefix=".onnxattr-", dir=folder)
    try:
        onnx.external_data_helper.convert_model_to_external_data(
            model, all_tensors_to_one_file=True, location=data_name, size_threshold=EXTERNAL_MIN_BYTES)
        staged = os.path.join(work, os.path.basename(path))
        onnx.save_model(model, staged)
        _check_by_path(staged, path)
        if os.path.exists(os.path.join(work, data_name)):
            os.replace(os.path.join(work, data_name), data_path)
        os.replace(staged, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_by_path(tmp: str, path: str) -> None:
    """A model over 2 GB cannot be checked in memory: check the written file, data included."""
    try:
        onnx.checker.check_model(tmp, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OutputFileError(f"{path}: the written model fails onnx.checker: {first}") from None


def save_array(arr: np.ndarray, path: str, *inputs) -> None:
    refuse_overwriting_input(path, *inputs)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
    except OSError as e:
        raise OutputFileError(f"{path}: cannot write ({e.strerror})") from None


def save_image(rgb: np.ndarray, path: str, *inputs) -> None:
    """An RGB uint8 array as an image file; the format follows the extension (Pillow's)."""
    from PIL import Image

    refuse_overwriting_input(path, *inputs)
    try:
        with atomic_path(path) as tmp:
            Image.fromarray(rgb).save(tmp, format=Image.registered_extensions().get(
                os.path.splitext(path)[1].lower()))
    except OSError as e:
        raise OutputFileError(f"{path}: cannot write ({e.strerror or e})") from None
    except (ValueError, KeyError) as e:
        raise OutputFileError(f"{path}: cannot write an image of this type ({e}); "
                              "use one of .bmp, .gif, .jpg, .png, .tif, .webp") from None
