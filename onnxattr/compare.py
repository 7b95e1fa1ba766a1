"""Audit two exports of one model against each other: explain the same data with the same method in both
and measure, per sample, how far their outputs and relevance maps are apart.

Both maps explain the same neuron: in mode "max" the second model is explained at the first one's choice
(whether the two choose alike is reported on its own). When the second export takes the data in another
layout (a Keras export is channels-last, a PyTorch one channels-first), the data are transposed for it and
its map transposed back; the permutation is found from the declared shapes or given.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from onnxattr.api import Analyzer, explained_input
from onnxattr.errors import UsageError

TOP_FRACTION = 0.1  # the share of elements, by |relevance|, whose overlap is reported


@dataclass(frozen=True)
class SampleDiff:
    """One sample. ``output_diff``: max |y_a - y_b| / max |y_a| over the explained output (None when the
    explained tensor is not a graph output); ``choice_a`` / ``choice_b``: the neuron each model explains
    by itself in mode "max" (None otherwise); ``relevance_diff``: max |R_a - R_b| / max |R_a|;
    ``correlation``: Pearson's r of the two maps; ``top_shared``: the fraction of map a's top 10 % of
    elements by |R| that are also in map b's."""

    output_diff: float | None
    choice_a: int | None
    choice_b: int | None
    relevance_diff: float
    correlation: float
    top_shared: float


@dataclass
class Comparison:
    method: str
    neuron: str
    perm: tuple[int, ...]  # the data of model a, transposed by perm, are model b's
    samples: list[SampleDiff] = field(default_factory=list)
    maps: tuple[np.ndarray, np.ndarray] | None = None  # both in model a's layout

    @property
    def worst_relevance_diff(self) -> float:
        return max(s.relevance_diff for s in self.samples)

    @property
    def choices_agree(self) -> bool:
        """No sample where both models' own choices are known and differ."""
        return all(s.choice_b is None or s.choice_a == s.choice_b for s in self.samples)

    def within(self, tolerance: float) -> bool:
        """Every map within ``tolerance`` (relative to map a's largest magnitude), every choice alike."""
        return self.choices_agree and self.worst_relevance_diff <= tolerance

    def table(self) -> str:
        """One line per sample, then the worst of each column."""
        rows = [("sample", "choice a/b", "output diff", "relevance diff", "correlation",
                 f"top {TOP_FRACTION:.0%} shared")]
        fmt = lambda v: "-" if v is None else f"{v:.2e}"  # noqa: E731
        for i, s in enumerate(self.samples):
            choice = "-" if s.choice_b is None else f"{s.choice_a}/{s.choice_b}" + (
                "" if s.choice_a == s.choice_b else " (differ)")
            rows.append((str(i), choice, fmt(s.output_diff), fmt(s.relevance_diff), f"{s.correlation:.6f}",
                         f"{s.top_shared:.1%}"))
        outs = [s.output_diff for s in self.samples if s.output_diff is not None]
        rows.append(("worst", "alike" if self.choices_agree else "differ", fmt(max(outs) if outs else None),
                     fmt(self.worst_relevance_diff), f"{min(s.correlation for s in self.samples):.6f}",
                     f"{min(s.top_shared for s in self.samples):.1%}"))
        widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def layout_perm(shape_a, shape_b) -> tuple[int, ...]:
    """The axis permutation taking data of ``shape_a`` (a concrete shape, batch first) to an input declared
    as ``shape_b`` (ints, or names/None for dims fixed at run time): the batch axis stays first; among
    the permutations whose fixed dims match, the one that moves the fewest axes past each other (an
    exporter's channels move, the spatial order stays)."""
    if len(shape_a) != len(shape_b):
        raise UsageError(f"the models' inputs differ in rank: data of shape {list(shape_a)} for the first, an "
                         f"input declared {list(shape_b)} for the second")
    fits = [(0,) + p for p in itertools.permutations(range(1, len(shape_a)))
            if all(not isinstance(shape_b[k], int) or shape_b[k] == shape_a[p[k - 1]]
                   for k in range(1, len(shape_a)))]
    if not fits:
        raise UsageError(f"data of shape {list(shape_a)} fit the second model's input {list(shape_b)} in no axis "
                         "order; are these exports of one model?")
    inversions = lambda p: sum(a > b for a, b in itertools.combinations(p, 2))  # noqa: E731
    return min(fits, key=inversions)


def _explained_values(analyzer: Analyzer, mode: str):
    """The explained output's values from the last analyze, or None when it is not a graph output."""
    runner = analyzer.runner(mode)
    name = runner.session.get_modelmeta().custom_metadata_map.get("onnxattr.output")
    names = [n for n in runner.output_names[:-1]]
    return None if name not in names else np.asarray(analyzer.outputs[names.index(name)])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if norm == 0:  # a constant map: alike only if the other one is the same constant
        return 1.0 if not (a.any() or b.any()) else 0.0
    return float((a * b).sum() / norm)


def _top_shared(a: np.ndarray, b: np.ndarray) -> float:
    k = max(1, int(round(TOP_FRACTION * a.size)))
    top_a = np.argpartition(-np.abs(a), k - 1)[:k]
    top_b = np.argpartition(-np.abs(b), k - 1)[:k]
    return len(np.intersect1d(top_a, top_b)) / k


def compare(model_a, model_b, method: str, x, neuron: str = "max", target=None, perm=None,
            inputs_a: dict | None = None, inputs_b: dict | None = None, input_a: str | None = None,
            input_b: str | None = None, output_a: str | None = None, output_b: str | None = None,
            device: str | None = None, providers=None, **params) -> Comparison:
    """Explain ``x`` (in model a's layout) with ``method`` in both models and compare per sample.
    ``neuron``: "max" (model b explains model a's choice), "index" (``target``: one per sample or one for
    all) or "all"; ``perm``: the axes of x in model b's order (found from the declared shapes when None);
    ``inputs_a`` / ``inputs_b``: each model's other graph inputs (an attention mask)."""
    if neuron not in ("max", "index", "all"):
        raise UsageError(f"neuron must be max, index or all, not '{neuron}'")
    mode = {"max": "max_activation", "index": "index", "all": "all"}[neuron]
    a, b = (Analyzer(method, m, neuron_selection_mode=mode, input=i, output=o, device=device, providers=providers,
                     **params) for m, i, o in ((model_a, input_a, output_a), (model_b, input_b, output_b)))
    return compare_analyzers(a, b, x, target, perm, inputs_a, inputs_b)


def compare_analyzers(a: Analyzer, b: Analyzer, x, target=None, perm=None, inputs_a: dict | None = None,
                      inputs_b: dict | None = None) -> Comparison:
    """compare() with the two analyzers made (one method, one neuron mode)."""
    neuron = a.mode
    if (target is not None) != (neuron == "index"):
        raise UsageError("a target picks the neuron for neuron selection 'index' (and that needs one)")
    x = np.asarray(x)
    runner_b = b.runner("index" if neuron == "max" else neuron)
    declared = runner_b.session.get_inputs()[runner_b.input_names.index(explained_input(runner_b))].shape
    if perm is None:
        perm = layout_perm(x.shape, declared)
    else:
        perm = tuple(int(p) for p in perm)
        if sorted(perm) != list(range(x.ndim)) or perm[0] != 0:
            raise UsageError(f"perm {list(perm)} is not an order of the data's {x.ndim} axes with the batch first")
    back = tuple(int(k) for k in np.argsort(perm))

    map_a = a.analyze(x, neuron_selection=target, inputs=inputs_a)
    y_a = _explained_values(a, neuron)
    choice_a = choice_b = None
    if neuron == "max":
        if y_a is None:
            raise UsageError("neuron 'max' compares the maps at the first model's choice, which needs the "
                             "explained tensor among its outputs; explain a graph output, or use 'index'")
        choice_a = y_a.reshape(len(x), -1).argmax(1)
        target = choice_a
    map_b = np.transpose(b.analyze(np.transpose(x, perm), neuron_selection=target, inputs=inputs_b), back)
    y_b = _explained_values(b, "index" if neuron == "max" else neuron)
    same_outputs = y_a is not None and y_b is not None and y_a.shape == y_b.shape
    if neuron == "max" and same_outputs:
        choice_b = y_b.reshape(len(x), -1).argmax(1)
    if map_a.shape != map_b.shape:
        raise UsageError(f"the maps differ in shape ({list(map_a.shape)} and {list(map_b.shape)} in the first "
                         "model's layout); give perm")
    result = Comparison(a.method.name, neuron, tuple(int(p) for p in perm), maps=(map_a, map_b))
    for i in range(len(x)):
        ra, rb = map_a[i].astype(np.float64).ravel(), map_b[i].astype(np.float64).ravel()
        scale = np.abs(ra).max() or np.abs(rb).max() or 1.0
        out_diff = None
        if same_outputs:
            ya, yb = y_a[i].astype(np.float64), y_b[i].astype(np.float64)
            out_diff = float(np.abs(ya - yb).max() / (np.abs(ya).max() or 1.0))
        result.samples.append(SampleDiff(
            output_diff=out_diff,
            choice_a=None if choice_a is None else int(choice_a[i]),
            choice_b=None if choice_b is None else int(choice_b[i]),
            relevance_diff=float(np.abs(ra - rb).max() / scale),
            correlation=_pearson(ra, rb),
            top_shared=_top_shared(ra, rb)))
    return result
