"""explain's run and what it writes: the maps come a slice at a time (Analyzer.analyze_slices) and each slice is
written as it comes (the -o array's rows, one image per sample into a --heatmap or --graymap folder), so memory
holds a slice of the data and its maps, not all of them. Kept whole: a single image of every sample (its tiles),
the kept tensors (for --keep-out), and the first eight samples' outputs and sums (printed)."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np

from onnxattr import viz
from onnxattr.api import Analyzer, explained_output
from onnxattr.errors import OnnxAttrWarning
from onnxattr.output import ReadFiles, array_rows, save_arrays, save_image, staged_folder

SHOWN = 8  # samples whose sums and explained neurons are printed


@dataclass
class Summary:
    """What explain prints after the run: the maps' ``shape``, the first samples' ``sums`` and ``outputs`` (the
    model's) and the relevance at the ``kept`` tensors (every sample)."""

    shape: list
    sums: np.ndarray
    outputs: list
    kept: dict


def explain_and_write(analyzer: Analyzer, x, run: dict, out: str | None, keep_out: str | None, images: dict,
                      per_sample: dict, draw: dict, undo, read: ReadFiles) -> Summary:
    """Run ``analyzer.analyze_slices(x, **run)`` and write each slice: ``out`` (a .npy of every map), ``images``
    ({flag: path} of --heatmap and --graymap; a folder where ``per_sample`` gives its files), drawn with ``draw``
    (cmap, level, overlay) over ``undo(x rows)`` when it overlays; ``read``: the files no output may replace."""
    whole = {flag: [] for flag, path in images.items() if path and flag not in per_sample}  # maps of one image
    seen_whole, sums, outputs, kept_parts = [], [], [], []
    shape, finite, rows_shown = None, True, 0
    with contextlib.ExitStack() as files:
        write_rows = None
        for piece in analyzer.analyze_slices(x, **run):
            r = piece.relevance
            if shape is None:  # the first slice gives the maps' sizes; a slice of the data, their count
                one_run = piece.rows == slice(0, len(x)) or piece.rows.stop is None
                shape = list(r.shape) if one_run else [len(x), *r.shape[1:]]
                if out:
                    write_rows = files.enter_context(array_rows(out, tuple(shape), r.dtype, read))
                # each folder's maps move in once every slice is drawn (made once a slice has run: a run that
                # fails first leaves none, one that fails later leaves the folder as it was)
                stages = {flag: files.enter_context(staged_folder(images[flag])) for flag in per_sample}
            if write_rows is not None:
                write_rows(r)
            finite = finite and bool(np.isfinite(r).all())
            if rows_shown < SHOWN:
                sums.append(per_sample_sums(r)[:SHOWN - rows_shown])
                outputs.append(piece.outputs)
                rows_shown += len(r) if np.ndim(r) else 1
            kept_parts.append(piece.kept)
            seen = undo(x[piece.rows]) if draw["overlay"] else None
            for flag in whole:
                whole[flag].append(r)
            if whole and seen is not None:
                seen_whole.append(seen)
            for flag, paths in per_sample.items():
                for i, file in zip(range(len(r)), paths[piece.rows]):
                    save_image(tile(r[i:i + 1], flag, draw, None if seen is None else seen[i:i + 1]),
                               stages[flag](file), read)
    if not finite and any(images.values()):  # analyze_slices warned, counting them
        warnings.warn(OnnxAttrWarning("the images draw the relevance's NaN or inf values as 0"))
    for flag, maps in whole.items():
        save_image(tile(np.concatenate(maps), flag, draw, np.concatenate(seen_whole) if seen_whole else None),
                   images[flag], read)
    kept = kept_parts[0] if len(kept_parts) == 1 else {
        name: np.concatenate([k[name] for k in kept_parts]) for name in kept_parts[0]}
    if keep_out:
        save_arrays(kept, keep_out, read)
    outputs = outputs[0] if len(outputs) == 1 else [np.concatenate(o)[:SHOWN] for o in zip(*outputs)]
    return Summary(shape, np.concatenate(sums), outputs, kept)


def tile(maps: np.ndarray, flag: str, draw: dict, seen) -> np.ndarray:
    """The image of ``maps`` that ``flag`` (--heatmap or --graymap) draws: a tile per sample."""
    kind = flag.lstrip("-")
    return viz.grid(maps, kind, images=seen if kind == "heatmap" else None, cmap=draw["cmap"], level=draw["level"])


def per_sample_sums(a: np.ndarray) -> np.ndarray:
    """Each sample's sum of ``a``'s values (one number for a rank-0 array)."""
    return np.reshape(a, (len(a) if np.ndim(a) else 1, -1)).sum(1)


def sums_text(sums: np.ndarray) -> str:
    """The first eight sums, as printed."""
    return ", ".join(f"{v:.4g}" for v in sums[:SHOWN])


def explained_neurons(analyzer: Analyzer, mode: str, target, outputs, classes=None) -> str:
    """The first eight samples' explained neurons as 'y[k] = value' of the explained output (or the softmax it was
    chosen through) in ``outputs`` (the model's outputs on those samples), its index flattened per sample, with its
    name from ``classes`` (a list) where given; '' for neuron mode all or where no graph output shows it."""
    if mode == "all" or (mode, ()) not in analyzer._runners:
        return ""
    values, _, choosable, _, name = explained_output(analyzer, mode, outputs)
    if values is None or not choosable or values.ndim == 0:
        return ""
    flat = values.reshape(len(values), -1)[:SHOWN]
    if mode == "max":
        picks = flat.argmax(1)
    else:
        t = np.asarray(target).reshape(-1)
        picks = np.broadcast_to(t[:len(flat)] if t.size > 1 else t, (len(flat),))
    if classes is not None and len(classes) != flat.shape[1]:
        warnings.warn(OnnxAttrWarning(f"--classes names {len(classes)} classes and the output {name} has "
                                      f"{flat.shape[1]} per sample: the names are left out"))
        classes = None
    return ", ".join(f"{name}[{k}]{f' {classes[k]!r}' if classes else ''} = {flat[i, k]:.4g}"
                     for i, k in enumerate(picks))
