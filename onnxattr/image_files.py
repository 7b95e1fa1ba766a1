"""Image files as a batch of a model's input, read a slice at a time: folders listed by name, each file's header
read up front, its pixels when its slice is used (pixels.load_image, then the model's Preprocess)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from onnxattr.errors import DataError, UsageError
from onnxattr.pixels import PRESETS, Preprocess, load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def folder_images(path: str) -> list[str]:
    """The image files directly in folder ``path``, by name (plain files with an image suffix, not hidden);
    a folder that cannot be listed is a DataError."""
    try:
        names = os.listdir(path)
    except OSError as e:
        raise DataError(f"{path}: cannot list the folder ({e.strerror or e})") from None
    return sorted(os.path.join(path, f) for f in names if f.lower().endswith(IMAGE_SUFFIXES)
                  and not f.startswith(".") and os.path.isfile(os.path.join(path, f)))


def read_images(paths, shape, preprocess: Preprocess | str | None = None) -> "ImageFiles":
    """Image files, and folders of them (their images by name), one sample each in the order given, as a batch
    for a model input declared ``shape`` (NCHW or NHWC; resized to its height and width where they are fixed),
    read a slice at a time: pass it to Analyzer.analyze_slices. ``preprocess``: a pixels.Preprocess, or a preset's
    name (none, torch, tf, caffe)."""
    paths = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = folder_images(path)
            if not found:
                raise DataError(f"{path}: a folder without images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(path)
    if isinstance(preprocess, str):
        if preprocess not in PRESETS:
            raise UsageError(f"preprocess must be a Preprocess or one of {', '.join(PRESETS)}, got {preprocess!r}")
        preprocess = PRESETS[preprocess]
    return ImageFiles(files, shape, preprocess)


class ImageFiles:
    """Image files as a batch [N, ...] of an input declared ``shape``, read a slice at a time: ``x[a:b]`` (or
    ``x[[i, j]]``) reads and stacks those files, and np.asarray(x) all of them. Every file's header is read when it
    is made, and the first image (and the first of another size in pixels): a file Pillow cannot read, or images
    that come out in different sizes (a model whose input size is not fixed), fail then, before any run."""

    def __init__(self, files: list, shape, preprocess: Preprocess | None = None):
        if not files:
            raise DataError("no image files to read")
        self.files, self._input_shape, self._preprocess = list(files), list(shape), preprocess
        sizes = [image_size(f) for f in self.files]
        self._read = {0: self._load(0)}  # read once, used by the first slice
        first = self._read[0]
        self.shape = (len(self.files), *first.shape[1:])
        self.dtype = first.dtype
        self._last = (None, None)  # the last slice read
        other = next((i for i, size in enumerate(sizes) if size != sizes[0]), None)
        if other is not None:  # images of other sizes: the same shape once resized to a fixed input size
            self._read[other] = self._checked(other, self._load(other))

    ndim = property(lambda self: len(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            picked = tuple(range(*rows.indices(len(self))))
        else:
            index = np.asarray(rows)
            if index.ndim != 1 or index.dtype.kind not in "iu":
                raise TypeError(f"ImageFiles reads a slice or a list of sample numbers, not {rows!r}")
            picked = tuple(int(i) for i in np.arange(len(self))[index])  # (an index beyond the files: IndexError)
        if self._last[0] == picked:  # (read again: an overlay, concepts' activations)
            return self._last[1]
        samples = [self._read.pop(i, None) for i in picked]
        samples = [s if s is not None else self._checked(i, self._load(i)) for i, s in zip(picked, samples)]
        self._last = (picked, np.concatenate(samples) if samples else np.empty((0, *self.shape[1:]), self.dtype))
        return self._last[1]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def _load(self, i: int) -> np.ndarray:
        return read_image(self.files[i], self._input_shape, self._preprocess)

    def _checked(self, i: int, sample: np.ndarray) -> np.ndarray:
        """Image ``i``'s sample, refused where its shape is not the first image's."""
        if sample.shape[1:] != self.shape[1:]:
            raise DataError(f"the images differ in size ({self.files[0]}: {list(self.shape[1:])}, {self.files[i]}: "
                            f"{list(sample.shape[1:])}) and the model's input size is not fixed: resize them alike")
        return sample


def read_image(path: str, shape, preprocess: Preprocess | None = None) -> np.ndarray:
    """pixels.load_image, a missing or unreadable file a DataError naming it."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    try:
        return load_image(path, shape, preprocess)
    except OSError as e:
        raise unreadable(path, e) from None


def image_size(path: str) -> tuple:
    """An image file's size in pixels, from its header (a file Pillow cannot identify is a DataError)."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    try:
        with Image.open(path) as opened:
            return opened.size
    except OSError as e:
        raise unreadable(path, e) from None


def unreadable(path: str, e: OSError) -> DataError:
    return DataError(f"{path}: not a .npy file nor an image Pillow can read ({e})")
