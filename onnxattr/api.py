"""Python API: ``compile`` a model, or ``create_analyzer(...).analyze(x)`` as in iNNvestigate."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import NamedTuple

import numpy as np
import onnx
from tqdm import tqdm

from onnxattr.assemble import KEPT, RELEVANCE, compile_model
from onnxattr.condition import CONDITION, conditioned_shapes, mask_of
from onnxattr.errors import (DataError, OnnxAttrWarning, UnsupportedModelError, UsageError, check_positive_int,
                             warn)
from onnxattr.feeds import as_input, other_feeds, read_by_rows
from onnxattr.load import load_model, model_label
from onnxattr.methods import get_method
from onnxattr.output import refuse_overwriting_input
from onnxattr.recurrent_nodes import NOT_FIXED, data_sizes, with_sizes
from onnxattr.run_errors import run_error
from onnxattr.runtime import Runner
from onnxattr.runner_io import (batch_axis_inputs, checked_targets, data_batch_axis, data_input, explained_input,
                                explained_shape, target_rows)
from onnxattr.select import TARGET_INPUT

_UNSLICED = "analyze without batch_size (--batch-size on the command line)"
# batch_size="auto": slices of about this many explained values (16 images of 3 x 224 x 224), where slicing
# changes nothing but the random methods' noise; the relevance graph keeps some hundred times as much
AUTO_VALUES = 16 * 3 * 224 * 224
MODES = {"max_activation": "max", "max": "max", "index": "index", "all": "all"}


class Slice(NamedTuple):
    """A slice of analyze_slices: the data's ``rows`` (a slice of the first axis), their ``relevance``, the
    model's ``outputs`` on them and the ``kept`` tensors' relevance (by name)."""

    rows: slice
    relevance: np.ndarray
    outputs: list
    kept: dict


class NonFiniteRelevanceWarning(OnnxAttrWarning):
    """A relevance map holds NaN or inf (returned as computed)."""

    exit_code = 7


@contextlib.contextmanager
def non_finite_told_by_caller():
    """No NonFiniteRelevanceWarning inside: for callers that report NaN or inf maps themselves (compare's table,
    concepts' named samples)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteRelevanceWarning)
        yield


def compile(model, method: str, neuron: str = "max", input: str | None = None,
            output: str | None = None, keep=(), **params) -> onnx.ModelProto:
    """A new ONNX model returning the original outputs and ``relevance`` for ``method``; then
    ``relevance:NAME`` for each tensor NAME in ``keep`` (the relevance that reaches it)."""
    return compile_model(model, method, neuron=neuron, input=input, output=output, keep=keep, **params)


def inspect(model, method: str, input: str | None = None, output: str | None = None, tensors: bool = False,
            **params) -> list[tuple]:
    """(node name, op type, rule, why) for every node on the explained path, input to output; with ``tensors``,
    (node name, op type, its output tensor, rule, why): the names keep=, --input and grad_cam's layer take."""
    report: dict = {}
    compile_model(model, method, neuron="max", input=input, output=output, report=report, **params)
    if tensors:
        return [(name, op, report["outputs"][name], rule, why) for name, op, rule, why in report["nodes"]]
    return report["nodes"]


class Analyzer:
    """Compiles lazily per neuron mode and keeps one onnxruntime session per mode."""

    def __init__(self, method: str, model, neuron_selection_mode: str = "max_activation",
                 input: str | None = None, output: str | None = None, device: str | None = None,
                 providers=None, keep=(), **params):
        self.method = get_method(method)
        self._method_key = os.fspath(method) if isinstance(method, os.PathLike) else method  # a name or a rule file
        if neuron_selection_mode not in MODES:
            raise UsageError(f"neuron_selection_mode must be one of {', '.join(MODES)}")
        self.mode = MODES[neuron_selection_mode]
        self.params = self.method.resolve(params)
        self.source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
        self.label = model_label(model)
        self.model = load_model(model)
        self.input, self.output = input, output
        self.device, self.providers = device, providers
        self._runners: dict[tuple, Runner] = {}  # by (neuron mode, conditioned tensors)
        self._compiled: dict[tuple, onnx.ModelProto] = {}
        self._per_size: set = set()  # keys whose model is compiled per data size (a symbolic sequence length)
        self.outputs: list[np.ndarray] | None = None  # the original outputs of the last analyze()
        self.keep = keep
        self.kept: dict[str, np.ndarray] = {}  # the relevance at each kept tensor in the last analyze()

    def fit(self, data=None, batch_size: int = 32, progress: bool = True, inputs: dict | None = None,
            **kwargs) -> "Analyzer":
        """pattern.* methods learn their patterns from ``data`` (an array [N, ...], or an iterable of
        batches; ``inputs``: the model's other graph inputs, as for analyze); other methods have nothing
        to learn."""
        unknown = sorted(set(kwargs) - {"verbose"})  # iNNvestigate's fit passes Keras options; only verbose means something here
        if unknown:
            raise UsageError(f"fit() got an unknown argument '{unknown[0]}' (it takes data, batch_size, progress, "
                             "inputs)")
        if "verbose" in kwargs:
            progress = bool(kwargs["verbose"])
        if self.method.family != "pattern":
            return self
        from onnxattr.pattern import fit_patterns

        self.params["patterns"] = fit_patterns(
            self.model, data, self.params["pattern_type"], batch_size, self.input, self.output,
            self.device, self.providers, progress, label=self.label, inputs=inputs)
        self._runners.clear()
        return self

    def save_patterns(self, path) -> None:
        """Write the fitted patterns (.npz) for ``onnxattr compile --patterns``."""
        if self.params.get("patterns") is None:
            raise UsageError("no patterns to save: call fit(data) first (pattern.* methods only)")
        refuse_overwriting_input(os.fspath(path), models=[self.source])
        self.params["patterns"].save(path)

    def load_patterns(self, path) -> "Analyzer":
        """Use patterns saved by save_patterns / ``onnxattr fit``."""
        self.params = self.method.resolve({**self.params, "patterns": str(path)})
        self._runners.clear()
        return self

    def runner(self, mode: str, condition: tuple = (), shape: tuple | None = None) -> Runner:
        """The session of neuron mode ``mode`` (conditioned on the tensors ``condition``), compiled on first use.
        A model whose recurrent nodes have a symbolic sequence length is compiled for the data's ``shape`` (one
        session per length; recurrent_nodes.data_sizes), where one is given."""
        key = (mode, tuple(condition))
        if key in self._per_size and shape is not None:
            return self._sized_runner(key, shape)
        if key not in self._runners:
            try:
                self._compile(key, self.model)
            except UnsupportedModelError as e:
                if shape is None or NOT_FIXED not in str(e) or data_sizes(self.model, shape) is None:
                    raise
                self._per_size.add(key)
                return self._sized_runner(key, shape)
        return self._runners[key]

    def _compile(self, key: tuple, model) -> None:
        compiled = compile_model(model, self._method_key, neuron=key[0], input=self.input, output=self.output,
                                 label=self.label, keep=self.keep, condition=key[1], **self.params)
        self._runners[key] = Runner(compiled, self.device, self.providers)
        self._compiled[key] = compiled

    def _sized_runner(self, key: tuple, shape: tuple) -> Runner:
        sizes = data_sizes(self.model, shape)
        if sizes is None:
            raise UsageError(f"{self.label}: the data's shape {tuple(shape)} does not fit the model's input")
        sized = key + (sizes,)
        if sized not in self._runners:  # the model copied with those sizes only to compile it
            self._compile(sized, with_sizes(self.model, sizes))
        return self._runners[sized]

    def compiled(self, mode: str, condition: tuple = ()) -> onnx.ModelProto:
        """The compiled model that runner(mode, condition) runs."""
        self.runner(mode, condition)
        return self._compiled[(mode, tuple(condition))]

    @property
    def input_shape(self) -> list:
        """The declared shape of the input that takes the data (an int, a name or None per axis), as compiled for
        the neuron mode: the shape onnxattr.read_images resizes images to."""
        return data_input(self.runner(self.mode)).shape

    def like(self, **changes) -> "Analyzer":
        """A new Analyzer with these settings (method, model, neuron mode, input, output, device, keep,
        parameters) but ``changes``, e.g. like(keep=[...]) or like(output=TENSOR, neuron_selection_mode="all")."""
        settings = dict(neuron_selection_mode=self.mode, input=self.input, output=self.output, device=self.device,
                        providers=self.providers, keep=self.keep, **self.params)
        return Analyzer(self._method_key, self.model, **{**settings, **changes})

    def restart(self) -> None:
        """New onnxruntime sessions over the same compiled models: the random methods' draws start again from
        their seed (a session continues its stream from call to call)."""
        for mode in self._runners:
            self._runners[mode] = Runner(self._compiled[mode], self.device, self.providers)

    def analyze(self, X, neuron_selection=None, inputs: dict | None = None, batch_size: int | str | None = None,
                progress: bool = False, condition: dict | None = None, condition_axis: int = 1) -> np.ndarray:
        """The relevance map of X; ``inputs``: the model's other graph inputs by name (an attention mask
        [N, S], a graph convolution's adjacency fed at run time). In the methods that run a Loop over points
        (integrated_gradients, conductance, neuron_conductance, smoothgrad, vargrad, gradient_shap, deep_lift_shap, occlusion, feature_ablation,
        shapley_values, shapley_value_sampling, kernel_shap, lime, feature_permutation) an input whose first axis is declared under
        the name of X's batch axis goes with each sample's points; others are shared by all. ``batch_size``: run X
        in slices of that many samples (memory grows with the batch), with those inputs and per-sample neuron
        selections sliced alike: the same maps for the deterministic methods (the random ones draw new noise for
        each slice; feature_permutation, whose maps depend on the whole batch, refuses); "auto": slices of about
        AUTO_VALUES explained values (16 images of 3 x 224 x 224) where the data hold more and slicing is allowed,
        slices of the model's batch where it is fixed, else one run; ``progress`` shows a bar over the slices.
        ``condition``: {tensor: channels or mask} conditions the map on those tensors (Concept
        Relevance Propagation): only relevance through them reaches the input, masked to the channels (numbers
        along ``condition_axis``; one list for all samples or one per sample) or by the mask (a float array that
        broadcasts to the tensor); see onnxattr.condition. A map holding NaN or inf is returned as computed,
        with a NonFiniteRelevanceWarning."""
        pieces = list(self.analyze_slices(X, neuron_selection, inputs, batch_size, progress, condition,
                                          condition_axis))
        if len(pieces) == 1:
            return pieces[0].relevance  # (outputs and kept already that run's)
        self.outputs = [np.concatenate(parts) for parts in zip(*(p.outputs for p in pieces))]
        self.kept = {name: np.concatenate([p.kept[name] for p in pieces]) for name in pieces[0].kept}
        return np.concatenate([p.relevance for p in pieces])

    def analyze_slices(self, X, neuron_selection=None, inputs: dict | None = None,
                       batch_size: int | str | None = "auto", progress: bool = False, condition: dict | None = None,
                       condition_axis: int = 1):
        """analyze() a slice at a time, for data larger than memory: yields a Slice (rows of X, relevance, the
        model's outputs, the kept tensors' relevance) per slice, in order, as it is computed; ``self.outputs`` and
        ``self.kept`` are the slice's. X is an array [N, ...] or anything with a ``shape`` whose ``X[a:b]`` is an
        array (``np.load(path, mmap_mode="r")``, a reader of image files): one slice of it is read at a time.
        ``batch_size`` and the rest as for analyze (its default here "auto"; None: one slice of all X). The
        warning of a map holding NaN or inf comes once, after the last slice."""
        if isinstance(batch_size, str):
            if batch_size != "auto":
                raise UsageError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
            batch_size = self._auto_batch(X, neuron_selection, condition)
        if batch_size is None:
            pieces = [self._slice(X, slice(None), neuron_selection, inputs, condition, condition_axis)]
        else:
            pieces = self._slices(X, neuron_selection, inputs, batch_size, progress, condition, condition_axis)
        bad = 0
        for piece in pieces:
            bad += int(np.size(piece.relevance) - np.count_nonzero(np.isfinite(piece.relevance)))
            yield piece
        if bad:
            hint = self.method.non_finite(self.params) if self.method.non_finite else ""
            warn(f"the relevance holds {bad} NaN or inf values ("
                 + (f"{hint}; or the model overflowed, or its output is not finite)" if hint else
                    "the model overflowed, its output is not finite, or an LRP rule's relevance outgrew float range: "
                    "in a transformer, attn_lrp or cp_lrp, which take LayerNorm and attention apart as LXT does, stay "
                    "finite; elsewhere a larger epsilon, or a rule that bounds it, such as lrp.alpha_2_beta_1, "
                    "helps)"), NonFiniteRelevanceWarning)

    def _slice(self, X, rows: slice, neuron_selection, inputs, condition, condition_axis) -> "Slice":
        """One run of analyze() on X (rows ``rows`` of the whole data), as a Slice."""
        relevance = self._analyze(X, neuron_selection, inputs, condition, condition_axis)
        if rows.stop is None:  # the whole data
            shape = _shape_of(X)
            rows = slice(0, shape[0]) if shape else slice(None)
        return Slice(rows, relevance, self.outputs, self.kept)

    def _analyze(self, X, neuron_selection, inputs, condition, condition_axis) -> np.ndarray:
        """analyze() of one batch."""
        mode = self.mode
        if neuron_selection is not None:
            mode = "index"
        elif mode == "index":
            raise UsageError("neuron_selection_mode='index' needs neuron_selection=int or array")
        r = self.runner(mode, _conditioned(condition), shape=_shape_of(X))
        x_name = explained_input(r)
        X = as_input(X, data_input(r))
        masks = self._masks(r, condition, condition_axis, X.shape[0])
        for name, rows in self._reference_rows(r).items():
            if rows not in (1, X.shape[0]):
                raise DataError(f"{name} holds {rows} references and the data {X.shape[0]} samples: give one "
                                "reference, or one per sample")
        batch_axis_inputs(r, inputs, X.shape[0])
        feeds = {x_name: X, **masks,
                 **other_feeds(r, {x_name, *masks} | ({TARGET_INPUT} if mode == "index" else set()), inputs)}
        if mode == "index":
            feeds[TARGET_INPUT] = checked_targets(neuron_selection, target_rows(r, X.shape[0], feeds), r)
        try:
            results = r.run(feeds)
        except DataError as e:
            told = run_error(e, self.method.name, self.params, X, r, feeds, masks)
            if told is None:
                raise
            raise told from None
        at = r.output_names.index(RELEVANCE)
        self.outputs = results[:at]
        self.kept = {n[len(KEPT):]: v for n, v in zip(r.output_names, results) if n.startswith(KEPT)}
        return results[at]

    def _reference_rows(self, r: Runner) -> dict:
        """The per-sample parameters (references, baselines) given as arrays of the explained tensor's rank (an
        embedding's when the data are token ids), or, for reference_data, of the data's (a .npy path read for its
        shape), by name: how many rows each holds."""
        x_rank, data_rank = len(explained_shape(r)), len(data_input(r).shape or [])
        out = {}
        for p in (p for p in self.method.params if p.per_sample):
            value = self.params.get(p.name)
            if isinstance(value, (str, os.PathLike)) and os.fspath(value).endswith(".npy") and os.path.exists(value):
                value = np.load(value, mmap_mode="r", allow_pickle=False)
            if np.ndim(value) == (data_rank if p.name == "reference_data" else x_rank):
                out[p.name] = np.shape(value)[0]
        return out

    def _slices(self, X, neuron_selection, inputs, batch_size, progress, condition=None, condition_axis=1):
        """analyze() on slices of ``batch_size`` samples, one Slice each. Inputs and outputs whose first axis is X's
        batch axis (its declared name, or its fixed size) are sliced; an output without it (a loss over the batch)
        would change with the slicing, and is refused."""
        check_positive_int("batch_size", batch_size)
        shape = _shape_of(X)
        if shape and batch_size >= shape[0]:  # one slice: the whole run
            yield self._slice(X, slice(None), neuron_selection, inputs, condition, condition_axis)
            return
        r = self._batch_runner(X, neuron_selection, condition)
        refused = self._slices_refused(r)
        if refused:
            raise UsageError(refused)
        x_arg, _ = data_batch_axis(r)
        X = read_by_rows(X)
        shape = np.shape(X)
        if not shape:
            raise DataError(f"input data is a single number; give an array [N, ...] for '{x_arg.name}'")
        n = shape[0]
        # the selection checked against the whole data (dtype, one per sample, in range), not slice by slice
        selection = None if neuron_selection is None else checked_targets(neuron_selection, n, r)
        # the other inputs with X's batch axis (declared under its name, or of its fixed size) are sliced alike
        sliced = batch_axis_inputs(r, inputs, n)
        masks = self._masks(r, condition, condition_axis, n)  # checked against the whole data; rows sliced
        starts = range(0, n, int(batch_size))
        for start in tqdm(starts, desc=f"{self.method.name}", unit="batch", disable=None if progress else True):
            part = slice(start, min(start + int(batch_size), n))
            chosen = None if selection is None else selection[part]
            given = {k: (v[part] if k in sliced else v) for k, v in (inputs or {}).items()}
            rows = {name[len(CONDITION):]: (m[part] if len(m) == n else m) for name, m in masks.items()}
            yield self._slice(X[part], part, chosen, given, rows or None, condition_axis)

    def _batch_runner(self, X, neuron_selection, condition) -> Runner | None:
        """The runner that explains X (None for a method that refuses slices, before compiling)."""
        if self.method.whole_batch:
            return None
        return self.runner("index" if neuron_selection is not None else self.mode, _conditioned(condition),
                           shape=_shape_of(X))

    def slices_refused(self, X) -> str:
        """Why data of X's shape cannot be explained in slices (the method's maps need the whole batch, a per-sample
        parameter is compiled in for the whole data, an output has no batch axis), or ''."""
        return self._slices_refused(self._batch_runner(X, None, None))

    def _slices_refused(self, r: Runner | None) -> str:
        """Why the data cannot run in slices on runner ``r`` (None: the method's maps need the whole batch), or ''."""
        if r is None:
            return (f"batch_size: {self.method.name} explains each sample against the other samples of its batch, so "
                    f"slices would change the maps: {_UNSLICED}")
        baked = [name for name, rows in self._reference_rows(r).items() if rows > 1]
        if baked:
            return (f"batch_size: {', '.join(baked)} holds one row per sample, compiled into the model for the whole "
                    f"data; {_UNSLICED}, or give one row")
        x_arg, batch = data_batch_axis(r)
        whole = [o.name for o in r.session.get_outputs()
                 if o.name != RELEVANCE and (not o.shape or o.shape[0] != batch)]
        if batch is None or whole:
            return (f"batch_size slices the data, and output '{whole[0] if whole else x_arg.name}' has no batch axis "
                    f"like the data's (a value over the whole batch would change with the slices): {_UNSLICED}")
        return ""

    def _auto_batch(self, X, neuron_selection, condition) -> int | None:
        """batch_size="auto": slices of AUTO_VALUES explained values (at least one sample) where the data hold more
        and slicing is allowed, of the model's batch where it is fixed, else None (one run)."""
        shape = _shape_of(X)
        if not shape:
            return None
        r = self._batch_runner(X, neuron_selection, condition)
        if self._slices_refused(r):
            return None
        fixed = data_batch_axis(r)[1]
        if isinstance(fixed, int):  # a model exported with a fixed batch takes slices of that batch
            return fixed if fixed != shape[0] else None
        size = max(1, AUTO_VALUES // max(1, _values_per_sample(r, shape)))
        return size if size < shape[0] else None

    @staticmethod
    def _masks(r: Runner, condition: dict | None, axis: int, samples: int) -> dict:
        """{input condition:NAME: its mask} for the conditioned tensors of runner ``r``, from ``condition``."""
        shapes = conditioned_shapes(r.session.get_modelmeta().custom_metadata_map)
        return {CONDITION + name: mask_of(name, spec, shapes.get(name), samples, axis)
                for name, spec in (condition or {}).items()}


def _shape_of(X) -> tuple | None:
    """The data's shape, None where it has none (a ragged list: as_input names that problem after compiling)."""
    try:
        return np.shape(X)
    except ValueError:
        return None


def _values_per_sample(runner: Runner, shape: tuple) -> int:
    """The explained tensor's values per sample for data of ``shape``: its declared sizes, a size it names after
    the data input's axes taken from the data; the data's own where a size stays unknown."""
    named = dict(zip(data_input(runner).shape or (), shape))
    sizes = [d if isinstance(d, int) else named.get(d) for d in explained_shape(runner)[1:]]
    if any(not isinstance(d, int) for d in sizes):
        sizes = shape[1:]
    return int(np.prod(sizes, dtype=np.int64))


def _conditioned(condition) -> tuple:
    """The tensor names of analyze's ``condition`` (a dict, or None)."""
    if condition is not None and not isinstance(condition, dict):
        raise UsageError(f"condition must be a dict of tensor name -> channels or mask, got {type(condition).__name__}")
    return tuple(condition or ())


def create_analyzer(method: str, model, **kwargs) -> Analyzer:
    """iNNvestigate-style: ``create_analyzer("gradient", "model.onnx").analyze(x)``."""
    return Analyzer(method, model, **kwargs)


def explained_output(analyzer: Analyzer, mode: str, outputs: list | None = None):
    """(values, declared shape, choosable, through, name) of the explained output in ``outputs`` (the model's
    outputs as analyze leaves them in Analyzer.outputs; default: the last analyze's): the
    explained tensor itself when it is a graph output, else the graph output it was chosen
    through (the softmax a classifier ends in, through: True), whose per-sample argmax is the explained tensor's
    when it is [N, K]; a trailing quantization looked through alone leaves the scores' own values, quantized
    (through: False); (None, None, False, False, None) when neither is an output."""
    runner = analyzer.runner(mode)
    meta = runner.session.get_modelmeta().custom_metadata_map
    names = list(runner.output_names[:runner.output_names.index(RELEVANCE)])  # the model's own outputs
    name = meta.get("onnxattr.explained")
    through = name not in names
    if through:
        name = meta.get("onnxattr.chosen")
        if name not in names:
            return None, None, False, False, None
    declared = runner.session.get_outputs()[runner.output_names.index(name)].shape
    outputs = analyzer.outputs if outputs is None else outputs
    values = None if outputs is None else np.asarray(outputs[names.index(name)])
    choosable = not through or (values is not None and values.ndim == 2)
    if through and meta.get("onnxattr.through") == "QuantizeLinear":  # (models compiled before it: a softmax)
        through = False
    return values, declared, choosable, through, name
