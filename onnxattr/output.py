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
from onnxattr.load import model_files

EXTERNAL_MIN_BYTES = 1024  # tensors this small stay inside the .onnx file
IMAGE_TYPES = ".bmp, .gif, .jpg, .png, .tif, .webp"  # named in errors; Pillow writes more
PNG_LEVEL = 1  # relevance maps are noise-like: more zlib effort makes them slower to write and no smaller


def refuse_overwriting_input(out_path: str, *inputs, models=()) -> None:
    """Raise if writing ``out_path`` would replace one of the ``inputs`` files or a file of the ONNX
    models ``models`` (the model file or one of its external data files, load.model_files); an input may be a
    ReadFiles, whose files are found once for many outputs."""
    known = [p for p in inputs if isinstance(p, ReadFiles)]
    for read in known + [ReadFiles([p for p in inputs if not isinstance(p, ReadFiles)], models)]:
        read.refuse(out_path)


class ReadFiles:
    """The files a run reads: ``inputs`` (paths; others, such as arrays, are left out) and the ONNX ``models``
    with their external data, their real paths found once, so that checking each of many outputs against them
    (a heatmap per sample of a folder of thousands) costs one look-up, not one per input."""

    def __init__(self, inputs=(), models=()):
        paths = [p for p in inputs if isinstance(p, (str, os.PathLike))]
        self.models = [m for m in models if isinstance(m, (str, os.PathLike))]  # not a ModelProto
        self.real = {}  # real path -> the path as given (named in the error)
        for p in paths + self.models:
            if os.path.exists(p):
                self.real.setdefault(os.path.realpath(p), p)

    def refuse(self, out_path: str) -> None:
        out_real = os.path.realpath(out_path)
        if out_real in self.real:
            raise OutputFileError(f"{out_path}: the output would overwrite the input {self.real[out_real]}; choose "
                                  "another output path")
        if not os.path.exists(out_real):
            return
        for m in self.models:  # only an existing file can be an external data file of an input model
            if out_real in model_files(m)[1:]:
                raise OutputFileError(f"{out_path}: the output would overwrite the external data of the input "
                                      f"{m}; choose another output path")


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


def check_destination(path: str, image: bool = False) -> None:
    """Fail now, before a long compile or run, if ``path`` could not be written: a missing folder, a
    device or folder in its place, or (``image``) an extension Pillow cannot write."""
    resolve_destination(path)
    if image and not _writable_image_type(path):
        raise OutputFileError(f"{path}: cannot write an RGB image of this type; use one of {IMAGE_TYPES}")


def _writable_image_type(path: str) -> bool:
    """Pillow writes an RGB image in the format of ``path``'s extension (tried on a 1x1 image)."""
    import io

    from PIL import Image

    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
    if fmt is None:
        return False
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except (OSError, ValueError, KeyError):
        return False
    return True


def resolve_destination(path: str) -> str:
    """The file ``path`` names, symbolic links followed (a link is written through, not replaced), in an
    existing folder; a missing folder, or an existing device, pipe, socket or folder, is refused."""
    destination_folder(path)
    real = regular_destination(path)
    if not os.path.isdir(os.path.dirname(real)):
        raise OutputFileError(f"{path}: links to {real}, whose folder does not exist")
    return real


def regular_destination(path: str) -> str:
    """os.path.realpath(path), refused when it is an existing device, pipe, socket or folder."""
    real = os.path.realpath(path)
    if os.path.exists(real) and not os.path.isfile(real):
        kind = "a folder" if os.path.isdir(real) else "not a regular file (a device, pipe or socket)"
        raise OutputFileError(f"{path}: is {kind}; name a file to write")
    return real


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside ``path`` (the file it names, links followed); on success give it
    the mode of a normally created file and rename it to that file, else delete it."""
    path = resolve_destination(path)
    folder = os.path.dirname(path)
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
    if model.ByteSize() < TWO_GB:
        _save_file(path, (), [source], lambda f: f.write(model.SerializeToString()))
        return
    refuse_overwriting_input(path, models=[source])
    try:
        _save_external(model, path, source)
    except OSError as e:
        raise OutputFileError(f"{path}: cannot write ({e.strerror})") from None


def _save_external(model: onnx.ModelProto, path: str, source: str | None) -> None:
    """Write ``path`` and its tensors in ``path``.data: both go to a temporary folder beside ``path``,
    are checked there by path, then renamed into place (data first); the folder goes on any error."""
    path = resolve_destination(path)
    folder = os.path.dirname(path)
    data_name = os.path.basename(path) + ".data"
    data_path = os.path.join(folder, data_name)
    refuse_overwriting_input(data_path, models=[source])
    regular_destination(data_path)
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


def _save_file(path: str, inputs, models, write) -> None:
    """``write(f)`` into ``path`` opened for binary writing, atomically, never over an input."""
    refuse_overwriting_input(path, *inputs, models=models)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                write(f)
    except OSError as e:
        raise OutputFileError(f"{path}: cannot write ({e.strerror})") from None


def save_array(arr: np.ndarray, path: str, *inputs, models=()) -> None:
    _save_file(path, inputs, models, lambda f: np.save(f, arr))


@contextlib.contextmanager
def staged_folder(folder: str):
    """Files for ``folder`` written first into a hidden folder inside it, then moved into place, each by a rename,
    once the block ends without an error; on an error none is moved (what the folder held stays as it was), the
    hidden folder goes, and so does ``folder`` where the block made it and it is empty. Yields ``stage(path)``: where
    the file ``path`` (in ``folder``) is written meanwhile."""
    made = not os.path.isdir(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        hidden = tempfile.mkdtemp(prefix=".onnxattr-", dir=folder)
    except OSError as e:
        raise OutputFileError(f"{folder}: cannot write ({e.strerror or e})") from None
    staged = {}

    def stage(path: str) -> str:
        staged[path] = os.path.join(hidden, os.path.basename(path))
        return staged[path]
    try:
        yield stage
        for path, tmp in staged.items():
            os.replace(tmp, resolve_destination(path))
    except BaseException:
        shutil.rmtree(hidden, ignore_errors=True)
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    shutil.rmtree(hidden, ignore_errors=True)


@contextlib.contextmanager
def array_rows(path: str, shape: tuple, dtype, *inputs, models=()):
    """A .npy array of ``shape`` and ``dtype`` written a slice of rows at a time: yields ``write(rows)``, which
    appends rows in order to a temporary beside ``path``; renamed into place when the block ends with every row
    written, deleted on any error (nothing half-written, never over an input)."""
    refuse_overwriting_input(path, *inputs, models=models)
    dtype = np.dtype(dtype)
    header = np.lib.format.header_data_from_array_1_0(np.empty((0, *shape[1:]), dtype))
    header["shape"] = tuple(int(d) for d in shape)
    written = 0

    def write(rows: np.ndarray) -> None:
        nonlocal written
        rows = np.ascontiguousarray(rows, dtype)
        if rows.shape[1:] != tuple(shape[1:]) or written + len(rows) > shape[0]:
            raise ValueError(f"{path}: rows of shape {list(rows.shape)} do not continue an array {list(shape)} "
                             f"after {written} rows")
        try:
            f.write(rows.data)
        except OSError as e:
            raise OutputFileError(f"{path}: cannot write ({e.strerror})") from None
        written += len(rows)

    stack = contextlib.ExitStack()
    try:
        f = stack.enter_context(open(stack.enter_context(atomic_path(path)), "wb"))
        np.lib.format.write_array_header_1_0(f, header)
    except OSError as e:
        stack.close()
        raise OutputFileError(f"{path}: cannot write ({e.strerror})") from None
    block_done = False
    try:
        with stack:  # closes the file, then renames it into place (or deletes it on an error)
            yield write
            if written != shape[0]:
                raise ValueError(f"{path}: {written} of the array's {shape[0]} rows were written")
            block_done = True
    except OSError as e:
        if not block_done:  # the block's own error
            raise
        raise OutputFileError(f"{path}: cannot write ({e.strerror})") from None


def save_arrays(arrays: dict, path: str, *inputs, models=()) -> None:
    """Named arrays as one .npz (numpy's format, names as given)."""
    _save_file(path, inputs, models, lambda f: np.savez(f, **arrays))


def save_text(text: str, path: str, *inputs, models=()) -> None:
    """``text`` (UTF-8) to ``path``."""
    _save_file(path, inputs, models, lambda f: f.write(text.encode("utf-8")))


def save_image(rgb: np.ndarray, path: str, *inputs, models=()) -> None:
    """An RGB uint8 array as an image file; the format follows the extension (Pillow's)."""
    from PIL import Image

    refuse_overwriting_input(path, *inputs, models=models)
    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
    # zlib level 1: a 224 x 224 heatmap in 4.5 ms and 90 kB, against 18 ms and 104 kB at Pillow's default 6
    params = {"compress_level": PNG_LEVEL} if fmt == "PNG" else {}
    try:
        with atomic_path(path) as tmp:
            Image.fromarray(rgb).save(tmp, format=fmt, **params)
    except OSError as e:
        raise OutputFileError(f"{path}: cannot write ({e.strerror or e})") from None
    except (ValueError, KeyError) as e:
        raise OutputFileError(f"{path}: cannot write an image of this type ({e}); use one of {IMAGE_TYPES}") \
            from None
