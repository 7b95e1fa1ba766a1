"""A failed run of a compiled model, said in the user's terms: a run-time check of the compiled graph
(sampling.checked) that fired, a condition's mask whose sizes could not be checked when compiling, a Loop whose
chunk of points the model mixed."""

from __future__ import annotations

import os
import re

import numpy as np

from onnxattr.condition import CONDITION, conditioned_shapes
from onnxattr.errors import DataError
from onnxattr.methods.perturbation import MAX_PERTURBATIONS
from onnxattr.runner_io import explained_input, explained_shape
from onnxattr.runtime import Runner
from onnxattr.sampling import ROWS_CHECK, RUN_TIME_CHECK
from onnxattr.select import TARGET_INPUT


def run_error(e: DataError, method: str, params: dict, X: np.ndarray, r: Runner, feeds: dict,
              masks: dict) -> DataError | None:
    """The DataError that says what went wrong when runner ``r`` ran ``feeds`` (the data X, the condition
    ``masks``, the other inputs) for ``method`` with ``params`` and failed with ``e``; None where e says it best."""
    x_name = explained_input(r)
    unchecked = unchecked_masks(r, masks)
    if unchecked:
        return DataError(f"{e} (the mask of condition {', '.join(map(repr, unchecked))} has sizes the tensor's "
                         "shape, known only at run time, could not be checked against: each must be 1 or the "
                         "tensor's size)")
    shared = [n for n in feeds if n not in (x_name, TARGET_INPUT, *masks)]
    check = re.search(rf"Name:'oa/{RUN_TIME_CHECK}-(\w+)_", str(e))
    if check:
        return DataError(failed_check(check.group(1), method, params, X, r))
    if f"Name:'oa/{ROWS_CHECK}" in str(e):
        return DataError(
            f"{method} runs a chunk of points as one batch, and the explained output did not "
            "come out with one row per point: the model mixes the points of its batch (a batch axis that "
            f"is not {x_name}'s first" + (f", or a feed ({', '.join(shared)}) not declared under the name "
            f"of {x_name}'s batch axis" if shared else "") + "); set chunk_size=1 to run one point per "
            "sample at a time")
    if not shared or "running Loop node. Name:'oa/" not in str(e):
        return None
    return DataError(f"{e} ({method} runs every sample's points as one batch: a feed "
                     f"({', '.join(shared)}) goes with its sample's points only where the model declares "
                     f"its first axis under the name of {x_name}'s batch axis, else all samples share it; "
                     "export both with the same dynamic batch axis, or set chunk_size=1)")


def failed_check(what: str, method: str, params: dict, X: np.ndarray, r: Runner) -> str:
    """What a run-time check of the compiled model (sampling.checked) found wrong with data X, explained by
    ``method`` with ``params``."""
    if what == "feature_mask":
        mask = params.get("feature_mask")
        mask = np.load(mask, mmap_mode="r").shape if isinstance(mask, (str, os.PathLike)) else np.shape(mask)
        explained = explained_shape(r)
        features = list(X.shape[1:]) if len(explained) == X.ndim else \
            [d if isinstance(d, int) else "?" for d in explained[1:]]  # an embedding of the data's token ids
        return (f"feature_mask of shape {list(mask)} does not fit the explained features {features}: "
                "every mask axis of more than 1 must match the data's")
    if what == "batch":
        return (f"{method} shuffles each feature group between the samples of the batch, and the data "
                f"hold {len(X)} sample: give two or more")
    if what == "fit":
        return (f"{method}'s fit of its linear surrogate did not converge on these coalitions: a "
                "non-finite value in the data or the model's outputs, weights spanning too many decades (LIME's "
                "kernel_width), or a nearly singular design (about as many coalitions as feature groups); check "
                "the data and parameters, evaluate more coalitions than groups, or group the features with a "
                "feature_mask")
    if what == "reference_data":
        return (f"reference_data does not fit the data of shape {list(X.shape)}: one row, or one per sample, of "
                "the data's other sizes (token ids of the same length)")
    if what == "kept_rows":
        return (f"{method} runs a chunk of points as one batch along the data's first axis, and a "
                "tensor it reads at each point (a kept tensor, neuron_conductance's layer) did not hold them in its "
                "first axis (its batch axis is another): keep another tensor or set chunk_size=1 (conductance), "
                "or choose a layer [N, ...] (neuron_conductance)")
    if what == "neuron_index":
        return (f"neuron_index {params.get('neuron_index')} lies outside layer '{params.get('layer')}' "
                "on this data, or has not one entry per axis after its batch axis: give an index inside the "
                "layer's shape")
    grouped = "group the features with a feature_mask"
    passes, fix = {  # what the check counts, and what makes it fewer
        "ablations": ("feature ablations (every feature alone)", grouped),
        "permutations": ("feature permutations (every feature alone)", grouped),
        "windows": ("occlusion windows", "use a larger stride or window"),
        "orders": (f"forward passes ({params.get('n_samples')} orders of every feature alone)",
                   grouped + ", or draw fewer orders"),
    }.get(what, (f"{what} (a size checked at run time)", "check the data's shape"))
    return (f"{method} would run more than {MAX_PERTURBATIONS} {passes} on data of shape "
            f"{list(X.shape)}: {fix}")


def unchecked_masks(runner: Runner, masks: dict) -> list[str]:
    """The conditioned tensors whose mask has a size other than 1 on an axis of unknown size when compiled."""
    shapes = conditioned_shapes(runner.session.get_modelmeta().custom_metadata_map)
    out = []
    for feed, mask in masks.items():
        shape = shapes.get(feed[len(CONDITION):])
        if shape is None or any(d is None and m != 1 for d, m in zip(shape[1:], mask.shape[1:])):
            out.append(feed[len(CONDITION):])
    return out
