"""A compiled model's inputs and outputs as its Runner shows them: the data input and its batch axis, the
explained tensor, the target input's rows, the feeds that share the data's batch axis."""

from __future__ import annotations

import numpy as np

from onnxattr.assemble import RELEVANCE
from onnxattr.errors import DataError
from onnxattr.runtime import Runner
from onnxattr.select import TARGET_INPUT


def target_rows(runner: Runner, samples: int, feeds: dict | None = None) -> int:
    """How many indices the target input takes: one per sample, or the fixed row count the compiler declared for
    it (an output whose rows are not the data's samples, as a graph net's readout), or the rows of the fed input
    whose first axis it was declared under (a box head's boxes)."""
    inputs = runner.session.get_inputs()
    arg = next((a for a in inputs if a.name == TARGET_INPUT), None)
    rows = arg.shape[0] if arg is not None and arg.shape else None
    if rows == data_batch_axis(runner)[1]:
        return samples
    if isinstance(rows, int):
        return rows
    other = next((a.name for a in inputs if a.name != TARGET_INPUT and a.shape and a.shape[0] == rows
                  and a.name in (feeds or {})), None)
    return len(feeds[other]) if isinstance(rows, str) and other is not None else samples


def checked_targets(selection, batch: int, runner: Runner) -> np.ndarray:
    t = np.asarray(selection)
    if t.dtype.kind not in "iu":
        raise DataError(f"neuron_selection must be integers, got {t.dtype}")
    t = np.broadcast_to(t.astype(np.int64), (batch,)).copy() if t.ndim == 0 else t.astype(np.int64)
    if t.shape != (batch,):
        raise DataError(f"neuron_selection has shape {t.shape}; expected one index per sample ({batch})")
    n_out = flat_outputs(runner)
    if n_out is not None and (t.min() < 0 or t.max() >= n_out):
        raise DataError(f"neuron_selection {t.tolist()} out of range: the explained output has {n_out} neurons")
    return t


def batch_axis_inputs(runner: Runner, given: dict | None, samples: int) -> set:
    """The names of the graph inputs whose first axis is the data's batch axis (declared under its name, or of
    its fixed size); each one ``given`` must hold one row per sample (DataError)."""
    x_arg, batch = data_batch_axis(runner)
    names = {a.name for a in runner.session.get_inputs() if batch is not None and a.shape and a.shape[0] == batch}
    for name, value in (given or {}).items() if isinstance(given, dict) else ():
        if name in names and name != x_arg.name and np.shape(value)[:1] != (samples,):
            raise DataError(f"input '{name}' has {np.shape(value)[0] if np.ndim(value) else 'no'} rows and the data "
                            f"{samples} samples: its first axis is the data's batch axis, one row per sample")
    return names


def data_input(runner: Runner):
    """The compiled model's graph input that takes the data (onnxruntime's NodeArg: name, type, shape)."""
    return runner.session.get_inputs()[runner.input_names.index(explained_input(runner))]


def data_batch_axis(runner: Runner):
    """(data_input, its declared first axis: a name, a fixed size, or None)."""
    x_arg = data_input(runner)
    return x_arg, (x_arg.shape[0] if x_arg.shape else None)


def explained_shape(runner: Runner) -> list:
    """The declared shape of the explained tensor (the relevance's): the data's, or an embedding's computed from
    token ids."""
    return runner.session.get_outputs()[runner.output_names.index(RELEVANCE)].shape


def explained_input(runner: Runner) -> str:
    """The compiled model's input that takes the data (recorded by assemble: the explained input, or the
    graph input an explained intermediate tensor is computed from), not merely its first one."""
    name = runner.session.get_modelmeta().custom_metadata_map.get("onnxattr.data")
    return name if name in runner.input_names else next(n for n in runner.input_names if n != TARGET_INPUT)


def flat_outputs(runner: Runner):
    meta = runner.session.get_modelmeta().custom_metadata_map
    n = meta.get("onnxattr.outputs")
    return int(n) if n else None
