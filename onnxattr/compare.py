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

from onnxattr.api import Analyzer, explained_output, non_finite_told_by_caller
from onnxattr.errors import DataError, SelectionError, UsageError
from onnxattr.runner_io import data_input
from onnxattr.select import declared_input_shape

TOP_FRACTION = 0.1  # the share of elements, by |relevance|, whose overlap is reported
SIGNIFICANT = 1e-6  # elements below this fraction of a map's largest |value| are not counted among its top
LAYOUT_BOUND = ("occlusion", "feature_ablation", "feature_permutation", "shapley_values", "shapley_value_sampling",
                "kernel_shap", "lime")  # windows, groups: they follow the input's axis order


@dataclass(frozen=True)
class SampleDiff:
    """One sample. ``output_diff``: max |y_a - y_b| / max |y_a| over the explained output (None when it
    cannot be compared: not a graph output, or of another shape); ``choice_a`` / ``choice_b``: the neuron
    each model picks by itself in mode "max", as a flat index in model a's output layout (None otherwise);
    ``relevance_diff``: max |R_a - R_b| / max |R_a| (over max |R_b| where map a is 0, over 1 where both are;
    NaN when a map is not finite); ``correlation``:
    Pearson's r of the two maps (NaN for two different constant maps); ``top_shared``: the fraction of map
    a's top 10 % of elements by |R| (those above 1e-6 of its largest) that are also in map b's."""

    output_diff: float | None
    choice_a: int | None
    choice_b: int | None
    relevance_diff: float
    correlation: float
    top_shared: float
    finite: bool = True


def _worst(values, pick):
    """pick (max or min) of the values that are not None; NaN when one of them is NaN, None when none is
    left (Python's max and min keep or drop a NaN depending on where it stands)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return float("nan") if any(np.isnan(v) for v in values) else pick(values)


@dataclass
class Comparison:
    method: str
    neuron: str
    perm: tuple[int, ...]  # the data of model a, transposed by perm, are model b's
    samples: list[SampleDiff] = field(default_factory=list)
    maps: tuple[np.ndarray, np.ndarray] | None = None  # both in model a's layout
    other_orders: int = 0  # axis orders besides perm that also fit model b's declared input (perm not given)
    outputs_compared: bool = True  # both explained outputs read and of one shape (in model a's layout)

    @property
    def worst_relevance_diff(self) -> float:
        return _worst([s.relevance_diff for s in self.samples], max)

    @property
    def choices_compared(self) -> bool:
        return any(s.choice_b is not None for s in self.samples)

    @property
    def choices_agree(self) -> bool:
        """No sample where both models' own choices are known and differ."""
        return all(s.choice_b is None or s.choice_a == s.choice_b for s in self.samples)

    def problems(self, tolerance: float) -> list[str]:
        """Why the comparison fails at ``tolerance``: an empty list when it holds."""
        out = []
        bad = [i for i, s in enumerate(self.samples) if not s.finite]
        if bad:
            out.append(f"a map is not finite (NaN or inf) for sample{'s' if len(bad) > 1 else ''} "
                       f"{', '.join(map(str, bad[:8]))}")
        differ = [i for i, s in enumerate(self.samples) if s.choice_b is not None and s.choice_a != s.choice_b]
        if differ:
            out.append(f"the models pick different neurons for sample{'s' if len(differ) > 1 else ''} "
                       f"{', '.join(map(str, differ[:8]))}")
        worst = self.worst_relevance_diff
        if not np.isnan(worst) and worst > tolerance:
            out.append(f"the maps differ by up to {worst:.3g} of map a's largest value")
        return out

    def within(self, tolerance: float) -> bool:
        """Every map finite and within ``tolerance`` (relative to map a's largest magnitude), every choice
        alike."""
        return not self.problems(tolerance)

    def as_dict(self) -> dict:
        """The report as plain data (JSON-ready: NaN as None): the method, mode and permutation, and per
        sample the fields of SampleDiff."""
        clean = lambda v: None if isinstance(v, float) and np.isnan(v) else v  # noqa: E731
        return {"method": self.method, "neuron": self.neuron, "perm": list(self.perm),
                "outputs_compared": self.outputs_compared, "other_orders": self.other_orders,
                "samples": [{k: clean(v) for k, v in vars(s).items()} for s in self.samples]}

    def table(self) -> str:
        """One line per sample, then the worst of each column."""
        rows = [("sample", "choice a/b", "output diff", "relevance diff", "correlation",
                 f"top {TOP_FRACTION:.0%} shared")]
        fmt = lambda v: "-" if v is None else f"{v:.2e}"  # noqa: E731
        share = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
        corr = lambda v: "-" if v is None else f"{v:.6f}"  # noqa: E731
        for i, s in enumerate(self.samples):
            choice = "-" if s.choice_b is None else f"{s.choice_a}/{s.choice_b}" + (
                "" if s.choice_a == s.choice_b else " (differ)")
            rows.append((str(i), choice, fmt(s.output_diff), fmt(s.relevance_diff), corr(s.correlation),
                         share(s.top_shared)))
        choices = "-" if not self.choices_compared else "alike" if self.choices_agree else "differ"
        rows.append(("worst", choices, fmt(_worst([s.output_diff for s in self.samples], max)),
                     fmt(self.worst_relevance_diff), corr(_worst([s.correlation for s in self.samples], min)),
                     share(_worst([s.top_shared for s in self.samples], min))))
        widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def layout_perms(shape_a, shape_b) -> list[tuple[int, ...]]:
    """Every axis permutation taking data of ``shape_a`` (a concrete shape, batch first) to a tensor declared
    as ``shape_b`` (ints, or names/None for dims fixed at run time), the batch axis first; sorted so the
    one that moves the fewest axes past each other (an exporter's channel move keeps the spatial order)
    comes first. A DataError when the ranks differ or no order fits."""
    if len(shape_a) != len(shape_b):
        raise DataError(f"the models' inputs differ in rank: data of shape {list(shape_a)} for the first, an "
                        f"input declared {list(shape_b)} for the second")
    fits = [(0,) + p for p in itertools.permutations(range(1, len(shape_a)))
            if all(not isinstance(shape_b[k], int) or shape_b[k] == shape_a[p[k - 1]]
                   for k in range(1, len(shape_a)))]
    if not fits:
        raise DataError(f"data of shape {list(shape_a)} fit the second model's input {list(shape_b)} in no axis "
                        "order; are these exports of one model?")
    inversions = lambda p: sum(a > b for a, b in itertools.combinations(p, 2))  # noqa: E731
    return sorted(fits, key=lambda p: (inversions(p), p))


def layout_perm(shape_a, shape_b) -> tuple[int, ...]:
    """The first of layout_perms."""
    return layout_perms(shape_a, shape_b)[0]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r; 1 for two equal constant maps, NaN for two different ones (r is undefined there)."""
    da, db = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((da * da).sum() * (db * db).sum()))
    if norm == 0:
        return 1.0 if np.array_equal(a, b) else float("nan")
    return float((da * db).sum() / norm)


def _top_shared(a: np.ndarray, b: np.ndarray) -> float:
    """The share of a's top 10 % by |value| (only elements above 1e-6 of its largest count, so the zeros of
    a sparse map are no top) that are among b's as many largest."""
    mag_a, mag_b = np.abs(a), np.abs(b)
    significant = int((mag_a > SIGNIFICANT * mag_a.max()).sum()) if mag_a.max() > 0 else 0
    k = min(max(1, int(round(TOP_FRACTION * a.size))), significant)
    if k == 0:
        return 1.0 if not (mag_b > 0).any() else 0.0
    top_a = np.argpartition(-mag_a, k - 1)[:k]
    top_b = np.argpartition(-mag_b, k - 1)[:k]
    return len(np.intersect1d(top_a, top_b)) / k


def compare(model_a, model_b, method: str, x, neuron: str = "max", target=None, perm=None,
            inputs_a: dict | None = None, inputs_b: dict | None = None, input_a: str | None = None,
            input_b: str | None = None, output_a: str | None = None, output_b: str | None = None,
            device: str | None = None, providers=None, batch_size: int | str | None = "auto",
            **params) -> Comparison:
    """Explain ``x`` (in model a's layout) with ``method`` in both models and compare per sample.
    ``neuron``: "max" (model b explains model a's choice), "index" (``target``: one per sample or one for
    all) or "all"; ``perm``: the axes of x in model b's order (found from the declared shapes when None);
    ``inputs_a`` / ``inputs_b``: each model's other graph inputs (an attention mask); ``batch_size``: analyze's,
    for both models (by default "auto": slices of 16 images' values)."""
    if neuron not in ("max", "index", "all"):
        raise UsageError(f"neuron must be max, index or all, not '{neuron}'")
    a, b = (Analyzer(method, m, neuron_selection_mode=neuron, input=i, output=o, device=device, providers=providers,
                     **params) for m, i, o in ((model_a, input_a, output_a), (model_b, input_b, output_b)))
    return compare_analyzers(a, b, x, target, perm, inputs_a, inputs_b, batch_size)


def _declared_input(analyzer: Analyzer):
    """The declared shape (ints, or names/None) of the graph input the analyzer explains, chosen as the
    compile chooses it (select.choose_input); None when that fails (the compile names why) or the input is
    an intermediate tensor or has no declared shape."""
    try:
        return declared_input_shape(analyzer.model, analyzer.input)
    except SelectionError:
        return None


def _layout_bound(analyzer: Analyzer) -> str | None:
    """What in the method depends on the input's axis order (so it cannot be shared across layouts)."""
    if analyzer.method.name in LAYOUT_BOUND:
        return f"{analyzer.method.name}'s windows and groups"
    arrays = [k for k, v in analyzer.params.items() if isinstance(v, (np.ndarray, list, tuple)) and np.ndim(v) > 0]
    return f"the array parameter{'s' if len(arrays) > 1 else ''} {', '.join(arrays)}" if arrays else None


def _inverse(perm) -> tuple[int, ...]:
    """The permutation that undoes ``perm``."""
    return tuple(int(k) for k in np.argsort(perm))


def _index_translation(out_a: tuple, declared_b):
    """(out_perm, to_b): the output's axis order in model b (found like the input's) and a function taking
    flat neuron indices in model a's output layout [*out_a] to model b's."""
    if declared_b is None or len(declared_b) != len(out_a) + 1:
        return None, lambda f: f
    try:
        out_perm = layout_perm((1, *out_a), declared_b)
    except DataError:
        return None, lambda f: f
    if out_perm == tuple(range(len(out_perm))):
        return out_perm, lambda f: f
    b_shape = [out_a[k - 1] for k in out_perm[1:]]

    def to_b(f):
        multi = np.unravel_index(np.asarray(f, np.int64), out_a)
        return np.ravel_multi_index([multi[k - 1] for k in out_perm[1:]], b_shape).astype(np.int64)
    return out_perm, to_b


def compare_analyzers(a: Analyzer, b: Analyzer, x, target=None, perm=None, inputs_a: dict | None = None,
                      inputs_b: dict | None = None, batch_size: int | str | None = "auto",
                      progress: bool = False) -> Comparison:
    """compare() with the two analyzers made (one method, one neuron mode); ``progress``: a bar over each model's
    slices."""
    neuron = a.mode
    if (target is not None) != (neuron == "index"):
        raise UsageError("a target picks the neuron for neuron selection 'index' (and that needs one)")
    x = np.asarray(x)
    identity = tuple(range(x.ndim))
    with non_finite_told_by_caller():  # the table says so
        map_a = a.analyze(x, neuron_selection=target, inputs=inputs_a, batch_size=batch_size, progress=progress)
    y_a, _, choosable, through_a, _ = explained_output(a, neuron)
    scalar = y_a is not None and y_a.ndim == 0  # a loss: its own only neuron, explained as it is
    mode_b = "index" if target is not None or (neuron == "max" and not scalar) else b.mode
    declared = _declared_input(b)  # read off the model, so a layout refusal comes before b compiles
    if declared is None:
        runner_b = b.runner(mode_b)
        declared = data_input(runner_b).shape
    others = 0
    if perm is None:
        fits = layout_perms(x.shape, declared)
        perm, others = fits[0], len(fits) - 1
        if _declared_input(a) == list(declared) and perm == identity:
            others = 0  # both declare one shape: one layout, however many orders the sizes allow
    else:
        perm = tuple(int(p) for p in perm)
        if sorted(perm) != list(identity) or perm[0] != 0:
            raise UsageError(f"perm {list(perm)} is not an order of the data's {x.ndim} axes with the batch first")
    bound = _layout_bound(a) if perm != identity else None
    if bound:
        raise UsageError(f"{bound} follow the first model's axis order, and the second takes the data transposed "
                         f"{list(perm)}; compare a method without them, or two exports of one layout")

    choice_a = None
    if neuron == "max" and not scalar:
        if y_a is None or not choosable:
            raise UsageError("neuron 'max' compares the maps at the first model's choice, which needs the "
                             "explained tensor (or a softmax of it over [N, K]) among its outputs; explain a "
                             "graph output, or use 'index'")
        choice_a = y_a.reshape(len(x), -1).argmax(1)
        target = choice_a
    _, declared_out, _, _, _ = explained_output(b, mode_b)
    out_perm, to_b = _index_translation(y_a.shape[1:], declared_out) if y_a is not None and not scalar \
        else (None, lambda f: f)
    try:
        with non_finite_told_by_caller():
            map_b = b.analyze(np.transpose(x, perm), neuron_selection=None if target is None else to_b(target),
                              inputs=inputs_b, batch_size=batch_size, progress=progress)
    except UsageError as e:  # a graph input the second model lacks, or needs
        raise UsageError(f"the second model: {e}") from None
    except DataError as e:
        hint = "" if perm != identity or not others else "; give perm if it takes another axis order"
        raise DataError(f"the second model: {e}" + (f" (the data went in axis order {list(perm)}{hint})"
                                                    if perm != identity or others else "")) from None
    if map_b.ndim == len(perm):
        map_b = np.transpose(map_b, _inverse(perm))
    elif perm != identity:  # a map of another rank than the data (token ids -> embeddings): no way back
        raise UsageError(f"the maps have rank {map_b.ndim}, the data {x.ndim}: the second model's map cannot be "
                         "put back in the first's layout; compare two exports of one layout")
    if map_a.shape != map_b.shape:
        raise UsageError(f"the maps differ in shape ({list(map_a.shape)} and {list(map_b.shape)} in the first "
                         "model's layout); give perm")
    y_b, _, _, through_b, _ = explained_output(b, mode_b)
    if y_b is not None and out_perm is not None and y_b.ndim == len(out_perm):
        y_b = np.transpose(y_b, _inverse(out_perm))
    if y_a is not None and y_b is not None and y_a.shape != y_b.shape and y_a.size == y_b.size \
            and [d for d in y_a.shape if d != 1] == [d for d in y_b.shape if d != 1]:
        y_b = y_b.reshape(y_a.shape)  # [N, K, 1, 1] against [N, K]: the same neurons in the same order
    # probabilities of one export against logits of the other are no output difference
    same_outputs = y_a is not None and y_b is not None and y_a.shape == y_b.shape and through_a == through_b
    choice_b = y_b.reshape(len(x), -1).argmax(1) if choice_a is not None and same_outputs else None
    result = Comparison(a.method.name, neuron, tuple(int(p) for p in perm), maps=(map_a, map_b),
                        other_orders=others, outputs_compared=same_outputs)
    for i in range(len(x)):
        ra, rb = map_a[i].astype(np.float64).ravel(), map_b[i].astype(np.float64).ravel()
        finite = bool(np.isfinite(ra).all() and np.isfinite(rb).all())
        scale = np.abs(ra).max() or np.abs(rb).max() or 1.0
        out_diff = None
        if same_outputs:
            ya, yb = (y_a, y_b) if scalar else (y_a[i], y_b[i])
            ya, yb = np.asarray(ya, np.float64), np.asarray(yb, np.float64)
            out_diff = float(np.abs(ya - yb).max() / (np.abs(ya).max() or 1.0))
        result.samples.append(SampleDiff(
            output_diff=out_diff,
            choice_a=None if choice_a is None else int(choice_a[i]),
            choice_b=None if choice_b is None else int(choice_b[i]),
            relevance_diff=float(np.abs(ra - rb).max() / scale) if finite else float("nan"),
            correlation=_pearson(ra, rb) if finite else float("nan"),
            top_shared=_top_shared(ra, rb) if finite else float("nan"),
            finite=finite))
    return result
