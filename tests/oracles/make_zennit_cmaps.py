"""Reference heatmaps from Zennit's image module: every built-in colour map of zennit.image.CMAPS applied by
zennit.image.imgify(map, symmetric=True, cmap=NAME, level=LEVEL) to one fixed 2-D relevance map.

Run from the repository root with the torch venv (zennit installed; it imports torch):

    /work/venv-torch/bin/python tests/oracles/make_zennit_cmaps.py

It writes tests/oracles/data/zennit_cmaps.npz: "map" (float32 [24, 32], signed, with exact zeros and both
extremes), and for each colour map NAME and level L in (1.0, 2.5): "NAME|L" (uint8 [24, 32, 3], the RGB image)
and "NAME|L|step" (the largest change of a colour channel between neighbouring entries of Zennit's 256-entry
palette: Zennit quantizes the normalized value to 8 bits before the palette lookup, onnxattr maps it
continuously, so the two may differ by one palette step plus one level of rounding). Zennit's "seismic" is
onnxattr's "zennit_seismic" (onnxattr's "seismic" is matplotlib's, iNNvestigate's heatmap).

The code is our own; Zennit (LGPL-3) is only called as a library.
"""

import os

import numpy as np
import make_torch  # noqa: F401  (imports zennit, with its stand-in for torchvision)
import zennit.image as image

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
LEVELS = (1.0, 2.5)


def main():
    rng = np.random.default_rng(7)
    relevance = (rng.standard_normal((24, 32)) * np.linspace(0.2, 3, 32)).astype(np.float32)
    relevance[0, :4] = 0.0
    relevance[5, 5] = -np.abs(relevance).max() * 1.5  # the negative extreme is the largest |value|
    arrays = {"map": relevance}
    for name in image.CMAPS._sources:
        for level in LEVELS:
            img = image.imgify(relevance, symmetric=True, cmap=name, level=level)
            palette = image.palette(name, level)
            # Pillow 12 no longer reads the numpy palette zennit 0.5.1 puts: the same palette again as a list
            img.putpalette(palette.reshape(-1).tolist())
            rgb = np.asarray(img.convert("RGB"))
            palette = palette.astype(int)
            arrays[f"{name}|{level}"] = rgb
            arrays[f"{name}|{level}|step"] = np.array(np.abs(np.diff(palette, axis=0)).max())
    path = os.path.join(DATA, "zennit_cmaps.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}: {len(arrays) - 1} arrays, colour maps {', '.join(image.CMAPS._sources)}")


if __name__ == "__main__":
    main()
