"""Concepts of a layer over a dataset (Concept Relevance Propagation's relevance maximization, as zennit-crp's
FeatureVisualization computes it with its defaults).

For a hidden tensor T and samples x_1..x_N, each explained at its own neuron (its prediction, or its label):
- relevance[i, c] = sum of R_T(x_i) over channel c (the relevance of concept c for that sample's output);
- activation[i, c] = sum of T(x_i) over channel c;
- their shares (zennit-crp's abs_norm): v[i, c] / (sum_c' |v[i, c']| + 1e-10);
- per channel, the samples with the largest shares: relevance maximization (the samples where the concept matters
  most for the output) and activation maximization (where it fires most), k each, largest first;
- the reference maps of chosen channels: each top sample's map conditioned on that channel (condition=), where in
  the input the concept found its evidence; or, as zennit-crp's receptive-field references (mask_rf), on the
  channel's most relevant unit in that sample alone, the evidence within that unit's receptive field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from tqdm import tqdm

from onnxattr.api import Analyzer, explained_input
from onnxattr.compiler import path_nodes
from onnxattr.errors import DataError, SelectionError, UsageError, check_positive_int
from onnxattr.feeds import as_input, other_feeds
from onnxattr.graph import GraphBuilder
from onnxattr.load import load_model
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
    # channel's other axes), the one the reference map is conditioned on
    fields: dict = field(default_factory=dict)
    receptive_field: bool = False
    # what add_references runs on: (analyzer, data, labels, other inputs, channel axis)
    source: tuple | None = field(default=None, repr=False)
    _deeper: dict = field(default_factory=dict, repr=False)  # lower tensor -> an analyzer keeping it too

    def add_references(self, channels) -> "Concepts":
        """Make the reference maps of ``channels``: each one's ``top`` samples by relevance, explained as before
        and conditioned on that channel, or with ``receptive_field`` on its most relevant unit in that sample
        (zennit-crp's mask_rf: the map of the unit's receptive field)."""
        analyzer, data, labels, inputs, axis = self.source
        self._check_channels(channels)
        for c in dict.fromkeys(int(c) for c in channels):
            if c in self.references:
                continue
            rows = self.top_relevance[c]
            given = {k: v[rows] for k, v in (inputs or {}).items()}
            chosen = None if labels is None else labels[rows]
            mask = [c]
            if self.receptive_field:
                analyzer.analyze(data[rows], neuron_selection=chosen, inputs=given)
                at = np.moveaxis(analyzer.kept[self.layer], axis, 1)  # [k, C, ...] relevance at the layer
                self.fields[c] = at[:, c].reshape(len(rows), -1).argmax(axis=1)
                one = np.zeros((len(rows), at.shape[1], at[0, 0].size), np.float32)
                one[np.arange(len(rows)), c, self.fields[c]] = 1.0
                mask = np.moveaxis(one.reshape(at.shape), 1, axis)
            self.references[c] = analyzer.analyze(data[rows], neuron_selection=chosen, inputs=given,
                                                  condition={self.layer: mask}, condition_axis=axis)
        return self

    def below(self, channel: int, lower: str, axis: int = 1) -> np.ndarray:
        """[k, C'] the relevance of each channel of tensor ``lower`` (below the layer; ``axis``: its channel axis)
        within concept ``channel``, for the channel's top samples: their maps conditioned on the channel, with the
        relevance kept at ``lower`` summed per channel (zennit-crp's attribution graph: which lower concepts the
        concept is made of). Rows sum, for conserving rules, to the concept's relevance in each sample."""
        analyzer, data, labels, inputs, layer_axis = self.source
        self._check_channels([channel])
        if lower not in self._deeper:
            deeper = analyzer.keeping([self.layer, lower])
            _check_below(deeper.compiled(deeper.mode), self.layer, lower)
            self._deeper[lower] = deeper
        rows = self.top_relevance[channel]
        self._deeper[lower].analyze(data[rows], neuron_selection=None if labels is None else labels[rows],
                                    inputs={k: v[rows] for k, v in (inputs or {}).items()},
                                    condition={self.layer: [int(channel)]}, condition_axis=layer_axis)
        at = self._deeper[lower].kept[lower]
        _check_axis(axis, at.ndim, lower)
        return per_channel(at, axis)

    def _check_channels(self, channels) -> None:
        n_channels = self.relevance.shape[1]
        for c in channels:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < n_channels:
                raise DataError(f"channel {c!r} is not one of the {n_channels} channels of '{self.layer}' (0 to "
                                f"{n_channels - 1})")

    @property
    def relevance_share(self) -> np.ndarray:
        return shares(self.relevance)

    @property
    def activation_share(self) -> np.ndarray:
        return shares(self.activation)

    @property
    def top_relevance(self) -> np.ndarray:
        """[C, k] sample indices, largest relevance share first (relevance maximization)."""
        return top_samples(self.relevance_share, self.top)

    @property
    def top_activation(self) -> np.ndarray:
        """[C, k] sample indices, largest activation share first (activation maximization)."""
        return top_samples(self.activation_share, self.top)

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


def concepts(model, method: str, layer: str, data, labels=None, top: int = 8, channels=(), axis: int = 1,
             batch_size: int = 32, inputs: dict | None = None, device: str | None = None, providers=None,
             input: str | None = None, output: str | None = None, progress: bool = False,
             receptive_field: bool = False, **params) -> Concepts:
    """The concepts of ``layer`` over ``data`` [N, ...], each sample explained at its largest output, or at its
    label (``labels``: one integer per sample, as zennit-crp's FeatureVisualization explains its dataset's
    targets); ``channels``: those whose reference maps are made (their ``top`` samples by relevance, each
    conditioned on the channel, or with ``receptive_field`` on its most relevant unit there); ``axis``: the channel
    axis of the layer. ``inputs``: the model's other graph
    inputs, one row per sample. Runs in slices of ``batch_size`` samples."""
    check_positive_int("top", top)
    check_positive_int("batch_size", batch_size)
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise UsageError(f"axis must be an integer, got {axis!r}")
    mode = "max" if labels is None else "index"
    analyzer = Analyzer(method, model, neuron_selection_mode=mode, input=input, output=output, device=device,
                        providers=providers, keep=[layer], **params)
    data = np.asarray(data)
    if data.ndim == 0 or len(data) == 0:
        raise DataError(f"the data hold no samples (shape {list(data.shape)}): give an array [N, ...]")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(data):
            raise DataError(f"labels must hold one integer per sample ({len(data)}), got shape {list(labels.shape)}")
    activations = _ActivationRunner(analyzer.model, layer, explained_input(analyzer.runner(mode)), device, providers)
    relevance, activation = [], []
    starts = range(0, len(data), batch_size)
    for start in tqdm(starts, desc=f"concepts of {layer}", unit="batch", disable=None if progress else True):
        part = slice(start, start + batch_size)
        given = {k: v[part] for k, v in (inputs or {}).items()}
        analyzer.analyze(data[part], neuron_selection=None if labels is None else labels[part], inputs=given)
        kept = analyzer.kept[layer]
        _check_axis(axis, kept.ndim, layer)
        relevance.append(per_channel(kept, axis))
        activation.append(per_channel(activations.run(data[part], given), axis))
    result = Concepts(layer, np.concatenate(relevance), np.concatenate(activation), top,
                      receptive_field=bool(receptive_field), source=(analyzer, data, labels, inputs, axis))
    return result.add_references(channels)


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


class _ActivationRunner:
    """The model with ``layer`` as its output: the layer's value for a batch."""

    def __init__(self, model: onnx.ModelProto, layer: str, data: str, device, providers):
        proto = load_model(model)
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        del copy.graph.output[:]
        copy.graph.output.append(onnx.helper.make_tensor_value_info(layer, GraphBuilder(proto).float_type(layer),
                                                                    None))
        self.runner = Runner(copy, device, providers)
        self.data = data

    def run(self, x, inputs: dict) -> np.ndarray:
        arg = next(a for a in self.runner.session.get_inputs() if a.name == self.data)
        feeds = {self.data: as_input(x, arg), **other_feeds(self.runner, {self.data}, inputs)}
        return self.runner.run(feeds)[0]
