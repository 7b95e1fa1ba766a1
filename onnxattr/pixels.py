"""Image pixels as a model's input: the scaling and per-channel normalization an image model was trained with.

An image file is read into [0, 1] (load_image); a Preprocess then gives x = (p * scale - mean) / std per
channel, with the channels first reversed for BGR models. The presets are those of Keras' preprocess_input
(imagenet_utils, its modes "torch", "tf" and "caffe"), which also cover torchvision's ImageNet Normalize:

    none   p in [0, 1]                                               (the default: the pixels as they are)
    torch  (p - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)       torchvision's Normalize, timm's default
    tf     (p - 0.5) / 0.5, so x in [-1, 1]                          Inception, MobileNet, EfficientNetV2 (Keras)
    caffe  BGR, 255 p - (103.939, 116.779, 123.68), no division      VGG16, ResNet50 (Keras)

mean and std given on the command line replace the preset's, in its scale and channel order. An image is
stretched to the model's input size (as Keras' load_img does, but with Pillow's bicubic filter where Keras' default
is nearest), or with ``crop`` f resized bilinearly, keeping its aspect, so that its shorter side is the model's
size / f, and the model's size cut from its centre: torchvision's Resize(256) and CenterCrop(224) is f = 0.875,
timm's crop_pct. ``interpolation`` names another resize filter for either (FILTERS: Keras' names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from onnxattr.errors import OnnxAttrWarning, UsageError, warn
from onnxattr.viz import channel_axis


@dataclass(frozen=True)
class Preprocess:
    """x = (p * scale - mean) / std per channel (channels reversed first when ``bgr``), p the pixel in [0, 1];
    mean and std hold one value for every channel, or one per channel in the model's order."""

    name: str = "none"
    scale: float = 1.0
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    bgr: bool = False
    crop: float | None = None  # the share of the resized image's shorter side kept (None: stretched to the size)
    interpolation: str | None = None  # a FILTERS name (None: Pillow's bicubic when stretched, bilinear with crop)

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and not self.bgr and all(m == 0 for m in self.mean) and \
            all(s == 1 for s in self.std) and self.crop is None and self.interpolation is None

    def undo(self, x: np.ndarray) -> np.ndarray:
        """The pixels in [0, 1] that ``apply`` made the batch ``x`` from (laid out as load_image lays it out:
        channels after the batch axis, or last), to float rounding: what an overlay draws."""
        axis = channel_axis(x.shape[1:])
        if axis is None:
            return x
        last = np.moveaxis(np.asarray(x, np.float64), 1 if axis == 0 else -1, -1)
        p = (last * np.asarray(self.std, np.float64) + np.asarray(self.mean, np.float64)) / self.scale
        if self.bgr:
            p = p[..., ::-1]
        return np.moveaxis(p, -1, 1 if axis == 0 else -1).astype(np.float32)

    def resize(self, img, h: int, w: int):
        """The PIL image ``img`` at the model's size h x w: stretched (bicubic, Pillow's default), or with ``crop``
        f resized bilinearly so that it covers (h / f, w / f) with its aspect kept, the shorter side
        floor(side * scale) and the longer int(that * long / short) as torchvision's Resize computes them, and
        cut to h x w from the centre (offsets rounded as torchvision's CenterCrop rounds them). ``interpolation``
        names another filter for either."""
        if self.crop is None:
            return img.resize((w, h), FILTERS[self.interpolation or "bicubic"])
        width, height = img.size
        scale = max(h / height, w / width) / self.crop
        short, long = sorted((width, height))
        new_short = math.floor(short * scale + 1e-6)  # 224 / 0.875 is 256, not 255.99...
        new_long = int(new_short * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        new_w, new_h = max(new_w, w), max(new_h, h)
        img = img.resize((new_w, new_h), FILTERS[self.interpolation or "bilinear"])
        top, left = int(round((new_h - h) / 2.0)), int(round((new_w - w) / 2.0))
        return img.crop((left, top, left + w, top + h))

    def apply(self, pixels: np.ndarray, source: str = "the image") -> np.ndarray:
        """``pixels`` [H, W, C] in [0, 1] as the model's input, float32 (computed in float64, so that 255 p
        gives back the 8-bit value exactly)."""
        channels = pixels.shape[-1]
        for what, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                wanted = "one value" if channels == 1 else f"one value, or {channels}"
                raise UsageError(f"{source}: the {self.name} preprocessing has {len(values)} {what} values, and "
                                 f"the model takes {channels} channel{'s' if channels > 1 else ''}: give {wanted} "
                                 f"(--{what})")
        if self.bgr and channels != 3:
            raise UsageError(f"{source}: the {self.name} preprocessing reverses RGB to BGR, and the model takes "
                             f"{channels} channel{'s' if channels > 1 else ''}, not 3")
        x = np.asarray(pixels, np.float64)
        if self.bgr:
            x = x[..., ::-1]
        x = (x * self.scale - np.asarray(self.mean, np.float64)) / np.asarray(self.std, np.float64)
        return x.astype(np.float32)


# resize filters by Keras' names for them (load_img's interpolation), which are Pillow's
FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS,
           "box": Image.BOX, "hamming": Image.HAMMING}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PRESETS = {
    "none": Preprocess(),
    "torch": Preprocess("torch", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "tf": Preprocess("tf", mean=(0.5,), std=(0.5,)),
    "caffe": Preprocess("caffe", scale=255.0, mean=(103.939, 116.779, 123.68), bgr=True),
}


def _numbers(text: str, flag: str) -> tuple:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} expects numbers separated by commas (one, or one per channel), "
                         f"got '{text}'") from None
    if not all(np.isfinite(values)):
        raise UsageError(f"{flag} expects finite numbers, got '{text}'")
    return values


def parse_preprocess(name: str | None = None, mean: str | None = None, std: str | None = None,
                     crop: float | None = None, interpolation: str | None = None) -> Preprocess | None:
    """The Preprocess of a preset ``name`` (default "none") with the comma lists ``mean`` and ``std`` in place of
    its own, the centre ``crop`` fraction and the resize filter ``interpolation``; None when that leaves the pixels
    as they are."""
    if name is not None and name not in PRESETS:
        raise UsageError(f"--preprocess {name}: not one of {', '.join(PRESETS)}")
    chosen = PRESETS[name or "none"]
    if mean is not None or std is not None:
        chosen = replace(chosen, name="custom" if chosen.name == "none" else f"{chosen.name} (with --mean/--std)")
    if mean is not None:
        chosen = replace(chosen, mean=_numbers(mean, "--mean"))
    if std is not None:
        chosen = replace(chosen, std=_numbers(std, "--std"))
        if any(s <= 0 for s in chosen.std):
            raise UsageError(f"--std expects numbers > 0, got '{std}'")
    if crop is not None:
        if not (isinstance(crop, (int, float)) and 0 < crop <= 1):
            raise UsageError(f"--crop expects a fraction in (0, 1] (0.875: torchvision's 256 -> 224), got {crop!r}")
        chosen = replace(chosen, crop=float(crop))
    if interpolation is not None:
        if interpolation not in FILTERS:
            raise UsageError(f"--interpolation {interpolation}: not one of {', '.join(FILTERS)}")
        chosen = replace(chosen, interpolation=interpolation)
    return None if chosen.identity else chosen


WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # Pillow's 16/32-bit integer and float grey images


def load_image(path: str, shape, preprocess: Preprocess | None = None) -> np.ndarray:
    """An image file as a float32 batch of one, in [0, 1], laid out for ``shape`` (NCHW or NHWC): 8-bit
    images over 255, 16-bit ones (PNG, TIFF) over 65535, float ones (TIFF) as they are; a grey image repeated
    over three channels when the model takes RGB; then ``preprocess`` (a pixels.Preprocess: the model's scaling
    and normalization) where given. What is left out is said in a warning: an alpha channel that
    makes some pixel transparent (they keep their colour values), and every frame of an animation or multi-page
    TIFF but the first."""
    dims = list(shape[1:])
    axis = channel_axis(dims) if len(dims) == 3 else None
    if axis == 0:
        c, h, w = dims
    elif axis == -1:
        h, w, c = dims
    else:
        h, w, c = (dims + [None, None])[:2] + [1]
    with Image.open(path) as opened:  # closed once converted (a multi-frame file stays open otherwise)
        dropped = []
        alpha = opened.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in opened.info
        if alpha and opened.convert("RGBA").getchannel("A").getextrema()[0] < 255:  # not every pixel opaque
            dropped.append("its alpha channel (transparent pixels keep their colour values)")
        if getattr(opened, "n_frames", 1) > 1:
            dropped.append(f"{opened.n_frames - 1} frame{'s' if opened.n_frames > 2 else ''} after the first")
        if dropped:
            warn(f"{path}: read without {' and '.join(dropped)}", OnnxAttrWarning)
        wide = opened.mode in WIDE_MODES
        img = (opened.copy() if opened.mode == "F" else opened.convert("I")) if wide else \
            opened.convert("L" if c == 1 else "RGB")
    if isinstance(h, int) and isinstance(w, int):
        img = (preprocess or PRESETS["none"]).resize(img, h, w)
    elif preprocess is not None and preprocess.crop is not None:
        raise UsageError(f"{path}: --crop cuts the model's input size from the image, and the model's input "
                         f"{list(shape)} has no fixed height and width")
    a = np.asarray(img, np.float64 if wide or preprocess is not None else np.float32)
    if wide and img.mode == "I":
        if a.min() < 0 or a.max() > 65535:
            raise UsageError(f"{path}: 32-bit integer pixels beyond 16 bits ({a.min():.0f}..{a.max():.0f}); "
                             "save it with 8 or 16 bits, or as a .npy array")
        a = a / 65535.0
    if not wide:
        a = a / (255.0 if preprocess is not None else np.float32(255.0))
    if a.ndim == 2:
        a = a[..., None]
    if wide and c == 3:
        a = np.repeat(a, 3, axis=-1)
    a = a.astype(np.float32) if preprocess is None else preprocess.apply(a, path)
    if axis == 0:
        a = a.transpose(2, 0, 1)
    return a[None]
