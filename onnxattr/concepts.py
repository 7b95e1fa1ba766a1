"""Concepts of a layer over a dataset (Concept Relevance Propagation's relevance maximization, as zennit-crp's
FeatureVisualization computes it with its defaults).

For a hidden tensor T and samples x_1..x_N, each explained at its own neuron (its prediction, or its label):
- relevance[i, c] = sum of R_T(x_i) over channel c (the relevance of concept c for that sample's output);
- activation[i, c] = sum of T(x_i) over channel c;
- their shares (zennit-crp's abs_norm): v[i, c] / (sum_c' |v[i, c']| + 1e-10);
- per channel, the samples with the largest shares: relevance maximization (the samples where the concept matters
  most for the output) and activation maximization (where it fires most), k each, largest first;
- the reference maps of chosen channels, each top sample's map conditioned on that channel (condition=): started
  at the layer from the channel's own activation (zennit-crp's get_max_reference: what in the input makes the
  concept fire), or at the explained output (CRP's conditional heatmap: where the concept's evidence for that
  output lies); with receptive_field, conditioned on the channel's most relevant unit in that sample alone (mask_rf).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx
from tqdm import tqdm

from onnxattr.api import Analyzer, non_finite_told_by_caller
from onnxattr.compiler import path_nodes
from onnxattr.errors import DataError, SelectionError, UsageError, check_positive_int
from onnxattr.feeds import as_input, other_feeds, read_by_rows
from onnxattr.graph import GraphBuilder
from onnxattr.load import load_model
from onnxattr.runner_io import batch_axis_inputs, checked_targets, data_input, explained_input
from onnxattr.runtime import Runner

NORM_EPS = 1e-10  # zennit-crp's abs_norm denominator term


@dataclass
class Concepts:
    """The statistics of ``layer``'s channels over the data (see the module's docstring)."""

    layer: str
    relevance: np.ndarray  # [N, C] float64
    activation: np.ndarray  # [N, C] float64
    top: int
    references: dict = field(default_factory=dict)  # channel -> conditioned maps of its top samples [k, ...]
    # with receptive_field: channel -> each top sample's most relevant unit in the channel (flat index over the
    # channel's other axes), the one its reference map is conditioned on
    fields: dict = field(default_factory=dict)
    receptive_field: bool = False
    # each sample's most relevant unit in each channel [N, C] (flat index), and one sample's layer shape with the
    # channel axis first: recorded in the statistics pass, for the receptive-field references (zennit-crp's rf)
    units: np.ndarray | None = field(default=None, repr=False)
    unit_shape: tuple = ()
    start: str = "layer"  # where reference maps start: "layer" (zennit-crp's references) or "output"
    rows: "_Rows | None" = field(default=None, repr=False)  # what the references and below() run on
    _deeper: dict = field(default_factory=dict, repr=False)  # lower tensor -> an analyzer keeping it too

    @cached_property
    def relevance_share(self) -> np.ndarray:
        return shares(self.relevance)

    @cached_property
    def activation_share(self) -> np.ndarray:
        return shares(self.activation)

    @cached_property
    def top_relevance(self) -> np.ndarray:
        """[C, k] sample indices, largest relevance share first (relevance maximization)."""
        return top_samples(self.relevance_share, self.top)

    @cached_property
    def top_activation(self) -> np.ndarray:
        """[C, k] sample indices, largest activation share first (activation maximization)."""
        return top_samples(self.activation_share, self.top)

    def add_references(self, channels) -> "Concepts":
        """Make the reference maps of ``channels``: each one's ``top`` samples by relevance, conditioned on that
        channel (or with ``receptive_field`` on its most relevant unit in that sample: zennit-crp's mask_rf),
        from the layer's activation (``start`` "layer") or from the explained output (``start`` "output")."""
        channels = self.check_channels(channels)
        for c in channels:
            if c in self.references:
                continue
            rows = self.top_relevance[c]
            mask = [c]
            if self.receptive_field:
                self.fields[c] = self.units[rows, c]
                one = np.zeros((len(rows), self.unit_shape[0], int(np.prod(self.unit_shape[1:]))), np.float32)
                one[np.arange(len(rows)), c, self.fields[c]] = 1.0
                mask = np.moveaxis(one.reshape((len(rows),) + self.unit_shape), 1, self.rows.axis)
            at_layer = self.start == "layer"
            self.references[c], _ = self.rows.explain(self.rows.from_layer() if at_layer else self.rows.analyzer, rows,
                                                      {self.layer: mask}, labelled=not at_layer)
        return self

    def below(self, channel: int, lower: str, axis: int = 1) -> np.ndarray:
        """[k, C'] the relevance of each channel of tensor ``lower`` (below the layer; ``axis``: its channel axis)
        within concept ``channel``, for the channel's top samples explained at their output: their maps conditioned
        on the channel, with the relevance kept at ``lower`` summed per channel (zennit-crp's attribution graph:
        which lower concepts the concept is made of). Rows sum, for conserving rules, to the concept's relevance in
        each sample."""
        (channel,) = self.check_channels([channel])
        if lower not in self._deeper:
            deeper = self.rows.analyzer.like(keep=[self.layer, lower])
            _check_below(deeper.compiled(deeper.mode), self.layer, lower)
            self._deeper[lower] = deeper
        _, kept = self.rows.explain(self._deeper[lower], self.top_relevance[channel], {self.layer: [channel]})
        _check_axis(axis, kept[lower].ndim, lower)
        return per_channel(kept[lower], axis)

    def check_channels(self, channels) -> list[int]:
        """``channels`` (one, or several) as distinct ints, each one of the layer's; DataError otherwise."""
        if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
            channels = [channels]
        if self.rows is None:
            raise UsageError("these statistics carry no model to run (made by onnxattr.concepts, they do)")
        n_channels = self.relevance.shape[1]
        for c in channels:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < n_channels:
                raise DataError(f"channel {c!r} is not one of the {n_channels} channels of '{self.layer}' (0 to "
                                f"{n_channels - 1})")
        return list(dict.fromkeys(int(c) for c in channels))

    def arrays(self) -> dict:
        """What ``onnxattr concepts -o`` writes, by name."""
        out = {"relevance": self.relevance, "activation": self.activation, "relevance_share": self.relevance_share,
               "activation_share": self.activation_share, "top_relevance": self.top_relevance,
               "top_activation": self.top_activation}
        out.update({f"reference:{c}": maps for c, maps in self.references.items()})
        out.update({f"field:{c}": units for c, units in self.fields.items()})
        return out


def shares(values: np.ndarray) -> np.ndarray:
    """v[i, c] / (sum_c' |v[i, c']| + 1e-10): each sample's channels as shares of its total magnitude."""
    return values / (np.abs(values).sum(axis=1, keepdims=True) + NORM_EPS)


def top_samples(values: np.ndarray, k: int) -> np.ndarray:
    """[C, min(k, N)] row indices of each column's largest values, largest first (ties: the earlier sample)."""
    order = np.argsort(-values, axis=0, kind="stable")
    return order[:k].T.copy()


def per_channel(t: np.ndarray, axis: int) -> np.ndarray:
    """[N, C]: t summed over every axis but the batch axis and the channel ``axis``, in float64."""
    t = np.moveaxis(np.asarray(t, np.float64), axis, 1)
    return t.reshape(t.shape[0], t.shape[1], -1).sum(axis=2)


START = ("layer", "output")


def concepts(model, method: str, layer: str, data, labels=None, top: int = 8, channels=(), axis: int = 1,
             batch_size: int = 32, inputs: dict | None = None, device: str | None = None, providers=None,
             input: str | None = None, output: str | None = None, progress: bool = False,
             receptive_field: bool = False, start: str = "layer", **params) -> Concepts:
    """The concepts of ``layer`` over ``data`` [N, ...], each sample explained at its largest output, or at its
    label (``labels``: one integer per sample, as zennit-crp's FeatureVisualization explains its dataset's
    targets); ``channels``: those whose reference maps are made (their ``top`` samples by relevance, each
    conditioned on the channel, or with ``receptive_field`` on its most relevant unit there, started at the layer or
    at the output: ``start``); ``axis``: the channel axis of the layer. ``inputs``: the model's other graph inputs
    (those whose first axis is the data's batch axis go with their samples). Runs in slices of ``batch_size``
    samples (of the model's batch size, when it is fixed)."""
    check_positive_int("top", top)
    check_positive_int("batch_size", batch_size)
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise UsageError(f"axis must be an integer, got {axis!r}")
    if start not in START:
        raise UsageError(f"start must be one of {', '.join(START)}, got {start!r}")
    if "neuron_selection_mode" in params:
        raise UsageError("concepts explains each sample at its largest output, or at its label (labels=)")
    mode = "max" if labels is None else "index"
    analyzer = Analyzer(method, model, neuron_selection_mode=mode, input=input, output=output, device=device,
                        providers=providers, keep=[layer], **params)
    wanted = [channels] if isinstance(channels, (int, np.integer)) else list(channels)
    if wanted and not analyzer.method.conditional:
        raise UsageError(f"reference maps are conditioned on a channel, and {analyzer.method.name} cannot be "
                         "conditioned (it is not one reverse pass): use an LRP method or the gradient family")
    rows = _Rows(analyzer, layer, data, labels, inputs, axis, batch_size)
    relevance, activation, units = [], [], []
    parts = range(0, len(rows.data), rows.size)
    for begin in tqdm(parts, desc=f"concepts of {layer}", unit="batch", disable=None if progress else True):
        part = np.arange(begin, min(begin + rows.size, len(rows.data)))
        _, kept = rows.explain(analyzer, part)
        _check_axis(axis, kept[layer].ndim, layer)
        at = np.moveaxis(kept[layer], axis, 1)  # [n, C, ...]
        relevance.append(per_channel(at, 1))
        units.append(at.reshape(at.shape[0], at.shape[1], -1).argmax(axis=2))
        activation.append(per_channel(rows.activation(part), axis))
    relevance, activation = np.concatenate(relevance), np.concatenate(activation)
    bad = np.flatnonzero(~(np.isfinite(relevance).all(1) & np.isfinite(activation).all(1)))
    if bad.size:
        raise DataError(f"sample{'s' if bad.size > 1 else ''} {', '.join(map(str, bad[:5]))}"
                        f"{', ...' if bad.size > 5 else ''} give{'' if bad.size > 1 else 's'} NaN or inf relevance or "
                        f"activation at '{layer}' (the data hold NaN or inf, or the model overflows on them)")
    result = Concepts(layer, relevance, activation, top, receptive_field=bool(receptive_field), start=start,
                      units=np.concatenate(units), unit_shape=at.shape[1:], rows=rows)
    return result.add_references(wanted)


class _Rows:
    """Runs chosen samples of the data through an analyzer (or the activation model) in slices: the slice size
    is the model's fixed batch size when it has one (the last slice padded with copies of its last sample and the
    results cut), else ``batch_size``; inputs whose first axis is the data's batch axis go with their samples."""

    def __init__(self, analyzer: Analyzer, layer: str, data, labels, inputs, axis: int, batch_size: int):
        runner = analyzer.runner(analyzer.mode)
        self.analyzer, self.layer, self.axis = analyzer, layer, axis
        self.data = read_by_rows(data)  # (a reader of image files reads the rows run)
        if self.data.ndim == 0 or len(self.data) == 0:
            raise DataError(f"the data hold no samples (shape {list(self.data.shape)}): give an array [N, ...]")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim != 1 or len(labels) != len(self.data):
                raise DataError(f"labels must hold one integer per sample ({len(self.data)}), got shape "
                                f"{list(labels.shape)}")
            try:
                labels = checked_targets(labels, len(self.data), runner)
            except DataError as e:
                raise DataError(f"labels: {e}".replace("neuron_selection", "the labels")) from None
        self.labels = labels
        self.inputs = dict(inputs or {})
        self.sliced = batch_axis_inputs(runner, self.inputs, len(self.data))
        first = (data_input(runner).shape or [None])[0]
        self.fixed = first if isinstance(first, int) else None
        self.size = self.fixed or batch_size
        self.data_name = explained_input(runner)
        self._activation = None
        self._from_layer = None

    def _slices(self, rows: np.ndarray):
        """(positions in ``rows``, the sample indices run: padded to the fixed batch)."""
        for begin in range(0, len(rows), self.size):
            part = np.arange(begin, min(begin + self.size, len(rows)))
            run = rows[part]
            if self.fixed and len(run) < self.fixed:
                run = np.concatenate([run, np.repeat(run[-1:], self.fixed - len(run))])
            yield part, run

    def _given(self, run: np.ndarray) -> dict:
        return {k: (np.asarray(v)[run] if k in self.sliced else v) for k, v in self.inputs.items()}

    def explain(self, analyzer: Analyzer, rows, condition: dict | None = None, labelled: bool = True):
        """(maps, kept tensors) of the samples ``rows``; ``condition``: a mask list or an array with one row per
        entry of ``rows``; ``labelled``: the samples' labels select the neurons (where the analyzer's mode is
        index)."""
        rows = np.asarray(rows)
        maps, kept = [], []
        for part, run in self._slices(rows):
            cond = None if condition is None else {
                name: (_padded(np.asarray(m)[part], len(run)) if isinstance(m, np.ndarray) else m)
                for name, m in condition.items()}
            select = self.labels[run] if labelled and self.labels is not None else None
            with non_finite_told_by_caller():  # the samples are named where they are used
                maps.append(analyzer.analyze(self.data[run], neuron_selection=select, inputs=self._given(run),
                                             condition=cond, condition_axis=self.axis)[:len(part)])
            kept.append({k: v[:len(part)] for k, v in analyzer.kept.items()})
        return np.concatenate(maps), {k: np.concatenate([d[k] for d in kept]) for k in kept[0]}

    def activation(self, rows) -> np.ndarray:
        """The layer's value for the samples ``rows``."""
        if self._activation is None:
            self._activation = _layer_model(self.analyzer, self.layer)
        out = []
        for part, run in self._slices(np.asarray(rows)):
            arg = next(a for a in self._activation.session.get_inputs() if a.name == self.data_name)
            feeds = {self.data_name: as_input(self.data[run], arg),
                     **other_feeds(self._activation, {self.data_name}, self._given(run))}
            out.append(self._activation.run(feeds)[0][:len(part)])
        return np.concatenate(out)

    def from_layer(self) -> Analyzer:
        """The analyzer explaining the layer itself, seeded with its own value (zennit-crp's references start
        there: start_layer, init_rel its activation)."""
        if self._from_layer is None:
            self._from_layer = self.analyzer.like(output=self.layer, neuron_selection_mode="all", keep=())
        return self._from_layer


def _padded(values: np.ndarray, n: int) -> np.ndarray:
    return values if len(values) >= n else np.concatenate([values, np.repeat(values[-1:], n - len(values), 0)])


def _check_axis(axis: int, rank: int, layer: str) -> None:
    if not (1 <= axis < rank or -rank < axis <= -1):
        raise UsageError(f"axis {axis} is not an axis after the batch axis of '{layer}' (rank {rank})")


def _check_below(compiled: onnx.ModelProto, layer: str, lower: str) -> None:
    """A SelectionError unless ``layer`` is computed from ``lower`` in the compiled model (tensors above or beside
    the layer get the whole relevance or none, not the concept's share)."""
    b = GraphBuilder(compiled)
    nodes = list(compiled.graph.node)
    produced = {o for n in nodes for o in n.output} | {i.name for i in compiled.graph.input}
    if layer in produced and lower in produced and not path_nodes(nodes, lower, layer, b)[0]:
        raise SelectionError(f"'{layer}' is not computed from '{lower}': the concepts of a layer are made of those "
                             "of a tensor below it (one its value is computed from)")


def _layer_model(analyzer: Analyzer, layer: str) -> Runner:
    """A session of the analyzer's model with ``layer`` as its only output (no type declared: onnxruntime takes
    the one it infers, float16 or float64 too)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(load_model(analyzer.model))
    del copy.graph.output[:]
    copy.graph.output.add().name = layer
    return Runner(copy, analyzer.device, analyzer.providers)
