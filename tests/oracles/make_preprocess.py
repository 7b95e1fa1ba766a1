"""Oracle inputs from Keras' image preprocessing (keras.utils.load_img, img_to_array and
keras.applications.imagenet_utils.preprocess_input) and torchvision's (Resize, CenterCrop, ToTensor, Normalize),
for tests/test_pixels.py.

How to run (from the repository root; seconds each): the Keras part in the TF venv that make_innvestigate.py
describes, the torchvision part in a venv with `pip install torch==2.14.1 torchvision==0.29.1` (PyPI's torchvision
does not load beside the CPU wheel of torch 2.13):

    /work/venv-inn/bin/python tests/oracles/make_preprocess.py keras
    /work/venv-tv2/bin/python tests/oracles/make_preprocess.py torchvision

What it produces, in tests/oracles/data/:
    keras_preprocess.npz   "image" [6, 9, 3] uint8 RGB pixels (random, seed 0; the test writes them to a PNG), and
                           for each of preprocess_input's modes M in caffe, tf, torch:
                             "M|channels_last"  [1, 6, 9, 3]: load_img of that PNG (no resize), img_to_array,
                                                preprocess_input(mode=M)
                             "M|channels_first" [1, 3, 6, 9]: the same array transposed first, preprocess_input
                                                with data_format="channels_first"
                           "stretch_image" [23, 37, 3] uint8 RGB pixels (random, seed 2), and for each resize
                           filter I in STRETCH_FILTERS:
                             "stretch|I" [16, 16, 3]: load_img(target_size=(16, 16), interpolation=I) of that
                                         PNG, img_to_array (0..255): Keras' stretch, what --interpolation I gives
                           "manifest": a JSON string, the library versions
    torchvision_crop.npz   for each image I (CROP_IMAGES: random uint8 RGB, landscape, portrait, square), "I"
                           its pixels and for each crop fraction F in CROP_FRACTIONS:
                             "I|F" [3, 16, 16]: Resize(floor(16 / F)) (bilinear), CenterCrop(16), ToTensor,
                                   Normalize(ImageNet mean, std): what the test's --crop F --preprocess torch gives
                           "manifest": the library versions, the size, fractions and image shapes
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
MODES = ("caffe", "tf", "torch")
CROP_SIZE, CROP_FRACTIONS = 16, (0.875, 0.5, 1.0)
CROP_IMAGES = {"landscape": (23, 37), "portrait": (41, 19), "square": (30, 30)}  # (height, width)
STRETCH_SIZE, STRETCH_FILTERS = 16, ("nearest", "bilinear", "bicubic")


def torchvision_crop() -> None:
    import PIL
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(1)
    out = {}
    for name, (h, w) in CROP_IMAGES.items():
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        out[name] = pixels
        for f in CROP_FRACTIONS:
            pipeline = transforms.Compose([
                transforms.Resize(math.floor(CROP_SIZE / f)), transforms.CenterCrop(CROP_SIZE), transforms.ToTensor(),
                transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
            out[f"{name}|{f}"] = pipeline(Image.fromarray(pixels)).numpy()
    out["manifest"] = np.array(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                                           "pillow": PIL.__version__, "size": CROP_SIZE,
                                           "fractions": list(CROP_FRACTIONS), "images": CROP_IMAGES}))
    np.savez_compressed(os.path.join(DATA, "torchvision_crop.npz"), **out)
    print("wrote", os.path.join(DATA, "torchvision_crop.npz"))


def keras_preprocess() -> None:
    import PIL
    import tensorflow as tf
    from PIL import Image
    from tensorflow.keras.applications.imagenet_utils import preprocess_input

    image = np.random.default_rng(0).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    out = {"image": image}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "image.png")
        Image.fromarray(image).save(path)
        pixels = tf.keras.utils.img_to_array(tf.keras.utils.load_img(path))  # float32, 0..255, [H, W, 3]
        stretch = np.random.default_rng(2).integers(0, 256, size=(23, 37, 3), dtype=np.uint8)
        out["stretch_image"] = stretch
        stretch_path = os.path.join(tmp, "stretch.png")
        Image.fromarray(stretch).save(stretch_path)
        for name in STRETCH_FILTERS:
            img = tf.keras.utils.load_img(stretch_path, target_size=(STRETCH_SIZE, STRETCH_SIZE), interpolation=name)
            out[f"stretch|{name}"] = tf.keras.utils.img_to_array(img)
    assert np.array_equal(pixels, image.astype(np.float32))
    for mode in MODES:
        last = preprocess_input(pixels[None].copy(), data_format="channels_last", mode=mode)
        first = preprocess_input(pixels.transpose(2, 0, 1)[None].copy(), data_format="channels_first", mode=mode)
        out[f"{mode}|channels_last"] = np.asarray(last, np.float32)
        out[f"{mode}|channels_first"] = np.asarray(first, np.float32)
    out["manifest"] = np.array(json.dumps({"tensorflow": tf.__version__, "pillow": PIL.__version__,
                                           "modes": list(MODES), "stretch_size": STRETCH_SIZE,
                                           "stretch_filters": list(STRETCH_FILTERS)}))
    np.savez_compressed(os.path.join(DATA, "keras_preprocess.npz"), **out)
    print("wrote", os.path.join(DATA, "keras_preprocess.npz"))


if __name__ == "__main__":
    parts = {"keras": keras_preprocess, "torchvision": torchvision_crop}
    if len(sys.argv) != 2 or sys.argv[1] not in parts:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(parts)}")
    parts[sys.argv[1]]()
