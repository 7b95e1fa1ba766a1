"""What the command line reads besides the model: explain's --data (a .npy batch, image files, folders of
them), --feed / --feed-b arrays, and --target indices."""

from __future__ import annotations

import os

import numpy as np

from onnxattr.errors import DataError, OutputFileError, UsageError
from onnxattr.image_files import folder_images, read_image, read_images
from onnxattr.output import check_destination, refuse_overwriting_input
from onnxattr.pixels import FILTERS, PRESETS, parse_preprocess
from onnxattr.runner_io import data_input
from onnxattr.select import choose_input, declared_input_shape


def parse_sets(pairs) -> dict:
    """--set KEY=VALUE pairs as a dict (values as strings; each method parses its own)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"--set expects KEY=VALUE, got '{pair}'")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def name_paths(pairs, flag: str) -> dict:
    """NAME=FILE.npy pairs (of option ``flag``): name -> path; a malformed or repeated name is a UsageError."""
    out = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"{flag} expects NAME=FILE.npy, got '{pair}'")
        if name in out:
            raise UsageError(f"{flag} {name} is given twice ({out[name]}, {path})")
        out[name] = path
    return out


def condition_specs(a) -> dict:
    """--condition TENSOR=CHANNELS pairs: tensor -> the channel numbers (3 or 3,7: every sample keeps them) or
    a .npy path (integers: channel numbers, one row per sample; floats or bools: the mask itself)."""
    out = {}
    for pair in getattr(a, "condition", None) or []:
        name, sep, spec = pair.partition("=")  # (a path may hold '=', a tensor name hardly ever does)
        if not sep or not name or not spec.strip():
            raise UsageError(f"--condition expects TENSOR=CHANNELS (3 or 3,7) or TENSOR=MASK.npy, got '{pair}'")
        if name in out:
            raise UsageError(f"--condition {name} is given twice")
        spec = spec.strip()
        if not spec.lower().endswith(".npy"):
            try:
                spec = [int(c) for c in spec.split(",")]
            except ValueError:
                raise UsageError(f"--condition {name}={spec}: expects channel numbers (3 or 3,7) or a .npy "
                                 "file") from None
        out[name] = spec
    return out


def load_conditions(a) -> dict | None:
    """The --condition specs with their .npy files read: the ``condition`` of Analyzer.analyze. A file of
    integers holds one row of channel numbers per sample; one number per sample may come as a vector [N]."""
    out = {}
    for name, spec in condition_specs(a).items():
        if isinstance(spec, str):
            spec = load_npy(spec, f"--condition {name}")
            if spec.dtype.kind in "iu" and spec.ndim == 1:
                spec = spec[:, None]  # (in Python a flat list is one set for all samples; a file holds rows)
        out[name] = spec
    if getattr(a, "condition_axis", None) is not None and not out:
        raise UsageError("--condition-axis is the channel axis of the --condition tensors: add --condition "
                         "TENSOR=CHANNELS")
    return out or None


def check_outputs(outputs: dict, reads: list, model: str, images=()) -> None:
    """The outputs ({flag: path}, unset ones None) name distinct files, none of them read by the run (``reads``,
    the model), each in a writable place (``images``: the flags that write images, whose type must be writable)."""
    written = {flag: path for flag, path in outputs.items() if path}
    if len({os.path.realpath(p) for p in written.values()}) < len(written):
        raise UsageError(f"{', '.join(written)} name the same file: give each its own")
    for flag, path in written.items():
        refuse_overwriting_input(path, *reads, models=[model])
        check_destination(path, image=flag in images)


def is_folder_output(path) -> bool:
    """An image output that names a folder (an existing one, or a path ending in a separator): one file a sample."""
    return bool(path) and (os.path.isdir(path) or path.endswith(("/", os.sep)))


def check_image_folder(path: str, flag: str) -> None:
    """A folder output can be made or written into: not a file, and its parent exists."""
    bare = path.rstrip("/" + os.sep) or path
    if os.path.exists(bare) and not os.path.isdir(bare):
        raise OutputFileError(f"{flag} {path}: names a folder (it ends in '/') but is a file")
    parent = os.path.dirname(os.path.abspath(bare)) or "."
    if not os.path.isdir(path) and not os.path.isdir(parent):
        raise OutputFileError(f"{flag} {path}: its folder {parent} does not exist")


def sample_image_paths(folder: str, data: list, count: int) -> list[str]:
    """One PNG path in ``folder`` for each of ``count`` samples read from ``data`` (explain's --data files): an
    image's own name (numbered in front where two images share one), or a .npy batch's name and the sample's
    number."""
    width = len(str(count - 1))
    if data and not data[0].lower().endswith(".npy"):  # images, one sample each (load_samples takes no mix)
        stems = [os.path.splitext(os.path.basename(f))[0] for f in data]
        if len(set(stems)) < len(stems):
            stems = [f"{i:0{width}d}_{stem}" for i, stem in enumerate(stems)]
    else:
        base = os.path.splitext(os.path.basename(data[0]))[0] if data else "sample"
        stems = [f"{base}_{i:0{width}d}" for i in range(count)]
    return [os.path.join(folder, stem + ".png") for stem in stems]


def feed_paths(a, option: str = "feed") -> dict:
    """--feed (or --feed-b) NAME=FILE.npy pairs: name -> path."""
    return name_paths(getattr(a, option, None), "--" + option.replace("_", "-"))


def load_npy(path: str, what: str | None = None, mmap: bool = False) -> np.ndarray:
    """A .npy array (no pickles; ``mmap``: memory-mapped, read where it is used); a missing or unreadable file
    is a DataError naming it (and ``what`` option gave it)."""
    where = path if what is None else f"{path} ({what})"
    if not os.path.exists(path):
        raise DataError(f"{where}: no such file")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{where}: not a readable .npy array ({e or 'empty file'})") from None


def load_feeds(a, option: str = "feed") -> dict:
    """The --feed (or --feed-b) arrays, read like --data (.npy only)."""
    flag = "--" + option.replace("_", "-")
    return {name: load_npy(path, f"{flag} {name}") for name, path in feed_paths(a, option).items()}


def data_files(paths) -> list:
    """explain's --data as the files it reads: a folder stands for its images."""
    paths = paths if isinstance(paths, list) else [paths]
    return [f for p in paths for f in (folder_images(p) if p and os.path.isdir(p) else [p])]


def analyzer_input_shape(analyzer, mode: str, condition: tuple = ()):
    """A zero-argument function giving the declared shape of the data input of ``analyzer``'s model for neuron
    ``mode`` and conditioned tensors ``condition`` (compiled only when called: when the data are images to be
    resized to it)."""
    return lambda: data_input(analyzer.runner(mode, condition)).shape  # the model the run uses: warnings shown once


def graph_input_shape(model, name: str | None) -> list:
    """The declared shape of the graph input ``name`` of ``model`` (an onnx.ModelProto; None: the input explained
    by default), which images given as data are resized to; a UsageError where ``name`` is not a graph input (an
    intermediate tensor takes its values as a .npy batch) or its rank is not declared."""
    if name is not None and name not in {i.name for i in model.graph.input}:
        raise UsageError(f"image files are read as a graph input of the model, and --input {name} is not one: give "
                         "its values as a .npy batch")
    dims = declared_input_shape(model, name)
    if dims is None:
        raise UsageError(f"image files are resized to the model's input, and '{choose_input(model, name)}' declares "
                         "no shape: give the data as a .npy batch")
    return dims


def add_pixel_options(parser) -> None:
    """--preprocess, --mean, --std, --crop and --interpolation: how image files given as --data become the model's
    input."""
    parser.add_argument("--preprocess", choices=list(PRESETS), metavar="MODE",
                        help="how image files become the model's input (a .npy batch is taken as it is): none, "
                             "pixels in [0, 1] (the default); torch, (p - ImageNet mean) / std on [0, 1] "
                             "(torchvision's Normalize); tf, [-1, 1]; caffe, BGR in 0..255 less the ImageNet mean "
                             "(Keras' preprocess_input modes)")
    parser.add_argument("--mean", metavar="M[,M,...]", help="per-channel mean subtracted from image pixels (one "
                        "value, or one per channel; in the --preprocess mode's scale and channel order), replacing "
                        "its own: --mean 0.5 --std 0.5 maps [0, 1] to [-1, 1]")
    parser.add_argument("--std", metavar="S[,S,...]", help="per-channel std the image pixels are divided by, after "
                        "--mean")
    parser.add_argument("--crop", type=float, metavar="FRACTION",
                        help="resize each image, keeping its aspect, so that its shorter side is the model's size / "
                             "FRACTION, and cut the model's size from its centre: 0.875 is torchvision's Resize(256) "
                             "and CenterCrop(224), timm's crop_pct (default: stretch the image to the model's size, "
                             "as Keras' load_img)")
    parser.add_argument("--interpolation", choices=list(FILTERS), metavar="FILTER",
                        help="the filter images are resized with: nearest, bilinear, bicubic, lanczos, box or hamming "
                             "(Keras' names; nearest is Keras' load_img default; default bicubic when stretched, "
                             "Pillow's, and bilinear with --crop, torchvision's)")


def preprocess_of(a):
    """The Preprocess that --preprocess, --mean, --std, --crop and --interpolation ask for, or None (pixels in
    [0, 1], stretched)."""
    return parse_preprocess(a.preprocess, a.mean, a.std, a.crop, a.interpolation)


def load_samples(paths: list, input_shape, preprocess=None, lazy: bool = False):
    """explain's --data: one .npy batch, or image files and folders of them (their images by name), one
    sample each, stacked in the order given; ``input_shape()``: the model's declared input shape, which images
    are resized to where it is fixed; ``preprocess`` (pixels.Preprocess): what images go through. ``lazy``: a
    .npy batch memory-mapped and several images as image_files.ImageFiles, each read when its slice is (an
    array-like with a shape whose slices are arrays)."""
    if len(paths) == 1 and not os.path.isdir(paths[0]):
        return load_data(paths[0], input_shape, preprocess, lazy)
    for path in paths:
        if path.lower().endswith(".npy") and not os.path.isdir(path):
            raise DataError(f"{path}: a .npy batch is the whole --data (give it alone), not one of several files")
    images = read_images(paths, input_shape(), preprocess)
    return images if lazy else np.asarray(images)


def load_data(path, input_shape, preprocess=None, lazy: bool = False) -> np.ndarray:
    """One .npy batch (``lazy``: memory-mapped), or one image (a batch of one, resized to ``input_shape()``
    where it is fixed, then ``preprocess``ed)."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if path.lower().endswith(".npy"):
        if preprocess is not None:
            raise UsageError(f"{path}: --preprocess, --mean, --std, --crop and --interpolation apply to image files; "
                             "a .npy batch is the model's input as it is (preprocess it before saving, or leave them "
                             "out)")
        return load_npy(path, mmap=lazy)
    return read_image(path, input_shape(), preprocess)


def load_classes(path: str) -> list[str]:
    """--classes: a text file of class names, one per line (blank lines at the end ignored)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (--classes)")
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f.read().rstrip("\n").split("\n")]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable UTF-8 text file of class names, one per line ({e})") from None
    if not any(names):
        raise DataError(f"{path}: holds no class names (--classes takes one per line)")
    return names


def parse_target(text: str | None):
    """--target 3 or 3,1,4 as an index or an int64 array."""
    if text is None:
        return None
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise UsageError(f"--target must be integers separated by commas, got '{text}'") from None
    if any(not -2**63 <= v < 2**63 for v in values):
        raise DataError(f"--target {text}: out of range (beyond any output: an int64 index at most 2^63 - 1)")
    selection = np.array(values, np.int64)
    return selection[0] if selection.size == 1 else selection
