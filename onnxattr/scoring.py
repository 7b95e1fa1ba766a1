"""The explained output of a model, scored per sample for the evaluation metrics (evaluate.py, metrics.py): the
tensor the compile explains (a graph output, or the logits before a trailing softmax), on onnxruntime, at one
neuron per sample chosen as analyze chooses it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxattr.feeds import as_array, as_input, other_feeds
from onnxattr.errors import DataError, SelectionError, UsageError, check_positive_int
from onnxattr.graph import GraphBuilder
from onnxattr.load import load_model, model_label
from onnxattr.runtime import Runner
from onnxattr.select import choose_input, choose_output


# rows per forward pass unless batch_size is given: 64 images of 3 x 224 x 224 worth of input values, at most
# MAX_ROWS rows (token ids are few values for what the model computes from them)
SCORE_VALUES, MAX_ROWS = 64 * 3 * 224 * 224, 1024


class Scorer:
    """The model's explained output for a batch: the tensor the compile explains (the graph output, or the
    logits before a trailing softmax; ``output`` names another), on onnxruntime."""

    def __init__(self, model, input: str | None = None, output: str | None = None, device: str | None = None,
                 providers=None, batch_size: int | None = None):
        proto = load_model(model)
        label = model_label(model)
        x = choose_input(proto, input)
        if x not in {i.name for i in proto.graph.input}:
            raise SelectionError(f"{label}: '{x}' is computed inside the model; region perturbation replaces parts "
                                 "of a graph input (explain and perturb the data the model takes)")
        b = GraphBuilder(proto)
        _, y = choose_output(proto, b, output)
        scoring = onnx.ModelProto()
        scoring.CopyFrom(proto)
        known = {o.name: o for o in proto.graph.output}
        del scoring.graph.output[:]
        scoring.graph.output.append(known[y] if y in known else
                                    onnx.helper.make_tensor_value_info(y, b.float_type(y), None))
        self.x, self.y, self.label = x, y, label
        self.runner = Runner(scoring, device, providers)
        self.x_arg = next(a for a in self.runner.session.get_inputs() if a.name == x)
        first = self.x_arg.shape[0] if self.x_arg.shape else None
        self.fixed_batch = first if isinstance(first, int) else None
        # rows per run (a fixed batch size the model declares comes first)
        self.batch_size = batch_size if batch_size is None else check_positive_int("batch_size", batch_size)
        # the other inputs whose first axis is the data's batch axis (declared under its name or fixed size)
        self.per_sample = {a.name for a in self.runner.session.get_inputs()
                           if a.name != x and first is not None and a.shape and a.shape[0] == first}

    def feeds(self, inputs: dict | None, n: int | None = None) -> dict:
        """The model's other graph inputs, checked and cast as analyze checks them (a missing, unknown or
        explained one is a UsageError); with a fixed batch size and ``n`` samples, a feed of one row per sample is
        checked on its first slice (it runs in such slices)."""
        fixed = self.fixed_batch
        if not (fixed and n and n != fixed and isinstance(inputs, dict)):
            return other_feeds(self.runner, {self.x}, inputs)
        rows = {k for k, v in inputs.items() if k in self.per_sample and np.ndim(v) and len(v) == n}
        checked = other_feeds(self.runner, {self.x}, {k: (v[:fixed] if k in rows else v) for k, v in inputs.items()})
        return {k: (np.asarray(inputs[k]).astype(v.dtype, copy=False) if k in rows else v) for k, v in checked.items()}

    def slices(self, batch_size: int | None) -> int | str:
        """analyze's batch_size: the one given, else "auto" (slices of 16 images' values where slicing changes no
        map; the model's fixed batch size where the data's count differs)."""
        return "auto" if batch_size is None else batch_size

    def cast(self, x) -> np.ndarray:
        """The data as the input takes it (its element type; shape checked against the declared one, but for
        the batch axis of a model of fixed batch size, which runs the data in slices of that size)."""
        if self.fixed_batch and np.ndim(x) and len(x) != self.fixed_batch:
            checked = as_input(x[:self.fixed_batch], self.x_arg)
            self.check_count(len(x))
            return np.asarray(x).astype(checked.dtype, copy=False)
        return as_input(x, self.x_arg)

    def check_count(self, n: int) -> None:
        """A model of fixed batch size runs the data in slices of that size: n must fill them (else a DataError)."""
        if self.fixed_batch and n % self.fixed_batch:
            raise DataError(f"{self.label} takes batches of {self.fixed_batch}, and the data holds {n} samples")

    def outputs(self, x: np.ndarray, inputs: dict | None = None) -> np.ndarray:
        """The explained tensor for the batch x (``inputs`` as ``feeds`` returns them), run in slices of the fixed
        batch size the model declares, or of ``batch_size`` rows (default: SCORE_VALUES input values, at most
        MAX_ROWS rows); a feed with one row per sample is sliced alike."""
        n = len(x)
        step = self.fixed_batch or max(1, min(self._rows(x.shape[1:]), n))
        self.check_count(n)
        parts = []
        for start in range(0, n, step):
            feeds = {self.x: x[start:start + step]}
            for name, value in (inputs or {}).items():
                value = np.asarray(value)
                feeds[name] = value[start:start + step] if step != n and name in self.per_sample else value
            parts.append(np.asarray(self.runner.run(feeds, [self.y])[0]))
        y = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if y.ndim == 0 or len(y) != n:
            raise UsageError(f"{self.label}: the explained output '{self.y}' has shape {list(y.shape)} for {n} "
                             "samples, not one row per sample (a loss over the batch?); region perturbation "
                             "follows each sample's own score: explain a per-sample output with --output")
        return y.reshape(n, -1)

    def _rows(self, sample_shape) -> int:
        """Rows per run: batch_size, else SCORE_VALUES input values, at most MAX_ROWS rows."""
        return self.batch_size or min(MAX_ROWS, max(1, SCORE_VALUES // max(1, int(np.prod(sample_shape)))))

    def slice_rows(self, sample_shape) -> int:
        """Samples per slice where a dataset is evaluated a slice at a time: rows per run as ``outputs`` takes them,
        a whole multiple of the batch size the model fixes."""
        rows = self._rows(sample_shape)
        return self.fixed_batch * max(1, rows // self.fixed_batch) if self.fixed_batch else rows

    def feed_rows(self, inputs: dict | None, n: int, start: int, stop: int) -> dict:
        """The other inputs (as ``feeds`` returns them, for n samples) of samples start..stop: a feed with one row
        per sample sliced, the others whole."""
        return {k: (v[start:stop] if k in self.per_sample and np.ndim(v) and len(v) == n else v)
                for k, v in (inputs or {}).items()}

    def scores(self, x: np.ndarray, targets: np.ndarray | None, inputs: dict | None = None) -> np.ndarray:
        """[N] float64: each sample's neuron ``targets[n]`` (their sum when targets is None: neuron 'all')."""
        return self.scores_and_choices(x, targets, inputs)[0]

    def batches_per_run(self, n: int, inputs: dict | None, rows: int) -> int:
        """How many perturbed copies of an n-sample batch go into one run: as many as fit in ``rows`` (or
        ``batch_size``) rows, but one where another input has one row per sample or the batch size is fixed."""
        return 1 if inputs or self.fixed_batch else max(1, (self.batch_size or rows) // n)

    def stacked(self, batches: list, targets: np.ndarray | None, inputs: dict | None = None):
        """(scores, choices), each [len(batches), N]: several perturbed copies of one batch scored in one run, each
        copy's sample n at ``targets[n]``."""
        k, n = len(batches), len(batches[0])
        tiled = None if targets is None else np.tile(targets, k)
        scores, choices = self.scores_and_choices(np.concatenate(batches), tiled, inputs)
        return scores.reshape(k, n), choices.reshape(k, n)

    def scores_and_choices(self, x: np.ndarray, targets: np.ndarray | None, inputs: dict | None = None):
        """(scores [N] as ``scores`` gives them, each sample's largest output neuron [N]: the model's choice)."""
        y = self.outputs(x, inputs).astype(np.float64)
        return (y.sum(axis=1) if targets is None else y[np.arange(len(y)), targets]), y.argmax(axis=1)


@dataclass
class ScoredBatch:
    """A batch made ready for the metrics: the data cast, the other inputs checked, each sample's neuron
    (``targets``; None: neuron 'all', their sum) and its score ``first`` [N] (float64) on the data as given."""

    scorer: Scorer
    x: np.ndarray
    inputs: dict
    targets: np.ndarray | None
    first: np.ndarray
    choices: np.ndarray  # each sample's largest output on the data as given
    outputs: int  # neurons per sample


def scored_batch(model, x, neuron: str = "max", target=None, input: str | None = None, output: str | None = None,
                 inputs: dict | None = None, batch_size: int | None = None, device: str | None = None,
                 providers=None) -> ScoredBatch:
    """Score x once (the model's explained output) and choose each sample's neuron, as analyze would."""
    scorer = Scorer(model, input, output, device, providers, batch_size)
    x = scorer.cast(x)
    return scored(scorer, x, neuron, target, scorer.feeds(inputs, len(x)))


def scored(scorer: Scorer, x: np.ndarray, neuron: str, target, inputs: dict,
           outputs: np.ndarray | None = None) -> ScoredBatch:
    """x (cast; ``inputs`` as scorer.feeds returns them) scored once (``outputs``: scorer.outputs of x, where known),
    each sample's neuron chosen."""
    outputs = (scorer.outputs(x, inputs) if outputs is None else outputs).astype(np.float64)
    targets = choose_targets(outputs, neuron, target)
    first = outputs.sum(1) if targets is None else outputs[np.arange(len(x)), targets]
    return ScoredBatch(scorer, x, inputs, targets, first, outputs.argmax(1), outputs.shape[1])


def check_labels(labels, n: int, outputs: int) -> np.ndarray | None:
    """Class labels [N] (integers below the output's neuron count) as int64; None stays None."""
    if labels is None:
        return None
    t = np.asarray(labels)
    if t.dtype.kind not in "iu" or t.shape != (n,):
        raise DataError(f"labels must be one integer per sample ({n}), got {t.dtype} of shape {list(t.shape)}")
    if n and (t.min() < 0 or t.max() >= outputs):
        raise DataError(f"labels run from {t.min()} to {t.max()}, and the explained output has {outputs} neurons")
    return t.astype(np.int64)


def check_relevance(relevance, x_shape, name: str = "the relevance") -> np.ndarray:
    """A map as float64, refused (DataError) unless it is a real-valued array of the data's shape."""
    return map_of_data(relevance, x_shape, name).astype(np.float64)


def map_of_data(relevance, x_shape, name: str = "the relevance") -> np.ndarray:
    """A map, checked as check_relevance checks it, as it is (a memory-mapped array stays on disk)."""
    r = as_array(relevance, name)
    if r.dtype.kind not in "fiub":
        raise DataError(f"{name} has dtype {r.dtype}; a map of real numbers is expected")
    if r.shape != tuple(x_shape):
        raise DataError(f"{name} has shape {list(r.shape)} and the data {list(x_shape)}: the metrics read the map "
                        "element by element against the data (a map of an embedding computed from token ids does "
                        "not fit)")
    return r


def check_seed(seed) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise UsageError(f"seed must be None or an integer >= 0, got {seed!r}")


def choose_targets(first: np.ndarray, neuron: str, target) -> np.ndarray | None:
    """One neuron per sample from the unperturbed outputs [N, K]: the largest ('max'), the given one
    ('index'), or None for 'all' (their sum)."""
    n, k = first.shape
    if neuron == "max":
        if target is not None:
            raise UsageError("a target picks the neuron for neuron 'index' (and 'max' chooses its own)")
        return first.argmax(axis=1)
    if neuron == "all":
        if target is not None:
            raise UsageError("a target picks the neuron for neuron 'index', not 'all'")
        return None
    if neuron != "index":
        raise UsageError(f"neuron must be max, index or all, not {neuron!r}")
    return check_target(target, n, k)


def check_target(target, n: int, k: int) -> np.ndarray:
    """neuron 'index''s target as int64 [n]: one index for every sample, or one per sample, each below ``k``."""
    if target is None:
        raise UsageError("neuron 'index' needs a target (one index, or one per sample)")
    t = np.asarray(target)
    if t.dtype.kind not in "iu" or t.ndim > 1:
        raise UsageError(f"target must be an integer or one integer per sample, got {target!r}")
    t = np.broadcast_to(t.astype(np.int64), (n,)).copy() if t.ndim == 0 else t.astype(np.int64)
    if t.shape != (n,):
        raise DataError(f"target holds {len(t)} indices and the data {n} samples")
    if n and (t.min() < 0 or t.max() >= k):
        raise DataError(f"target {t.tolist() if n <= 16 else f'{t.min()}..{t.max()}'} out of range: the explained "
                        f"output has {k} neurons")
    return t


def settings_of(kind, given: dict | None, what: str):
    """A settings dataclass from keyword arguments, checked; an unknown name is a UsageError naming the known."""
    known = list(kind.__dataclass_fields__)
    unknown = sorted(set(given or {}) - set(known))
    if unknown:
        raise UsageError(f"{what} has no setting '{unknown[0]}'; its settings: {', '.join(known)}")
    settings = kind(**(given or {}))
    settings.check()
    return settings
