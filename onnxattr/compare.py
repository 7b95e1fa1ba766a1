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
from onnxattr.feeds import sliceable
from onnxattr.runner_io import batch_axis_inputs, data_input
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


def _worst_at(values, pick) -> int | None:
    """The sample of the worst of ``values``: pick (max or min) of those that are not None, the first NaN where
    one is NaN (Python's max and min keep or drop a NaN depending on where it stands); None when none is left."""
    known = [(i, v) for i, v in enumerate(values) if v is not None]
    if not known:
        return None
    nan = next((i for i, v in known if np.isnan(v)), None)
    return nan if nan is not None else pick(known, key=lambda item: item[1])[0]


def _worst(values, pick):
    """The worst of ``values`` (see _worst_at): NaN when one of them is NaN, None when none is left."""
    values = list(values)
    at = _worst_at(values, pick)
    return None if at is None else values[at]


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

    def table(self, shown: int | None = None) -> str:
        """One line per sample (the first ``shown`` of them, and a line counting the rest), then the worst of each
        column over every sample (and, where samples are left out, which sample that is)."""
        rows = [("sample", "choice a/b", "output diff", "relevance diff", "correlation",
                 f"top {TOP_FRACTION:.0%} shared")]
        fmt = lambda v: "-" if v is None else f"{v:.2e}"  # noqa: E731
        share = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
        corr = lambda v: "-" if v is None else f"{v:.6f}"  # noqa: E731
        columns = (("output_diff", max, fmt), ("relevance_diff", max, fmt), ("correlation", min, corr),
                   ("top_shared", min, share))  # the field, which end is worst, how it is written
        for i, s in enumerate(self.samples[:shown]):
            choice = "-" if s.choice_b is None else f"{s.choice_a}/{s.choice_b}" + (
                "" if s.choice_a == s.choice_b else " (differ)")
            rows.append((str(i), choice, *(f(getattr(s, k)) for k, _, f in columns)))
        hidden = len(self.samples) - len(rows) + 1
        if hidden > 0:
            rows.append((f"({hidden} more)", "", "", "", "", ""))
        choices = "-" if not self.choices_compared else "alike" if self.choices_agree else "differ"
        at = [_worst_at([getattr(s, k) for s in self.samples], pick) for k, pick, _ in columns]
        rows.append(("worst", choices, *(f(None if i is None else getattr(self.samples[i], k))
                                         for (k, _, f), i in zip(columns, at))))
        if hidden > 0:  # the worst rows may be among those left out: name them
            differ = next((i for i, s in enumerate(self.samples) if s.choice_a != s.choice_b), None) \
                if self.choices_compared else None
            rows.append(("at sample", *("-" if i is None else str(i) for i in [differ, *at])))
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
            keep_maps: bool = True, **params) -> Comparison:
    """Explain ``x`` (in model a's layout) with ``method`` in both models and compare per sample.
    ``neuron``: "max" (model b explains model a's choice), "index" (``target``: one per sample or one for
    all) or "all"; ``perm``: the axes of x in model b's order (found from the declared shapes when None);
    ``inputs_a`` / ``inputs_b``: each model's other graph inputs (an attention mask); ``batch_size``: analyze's,
    for both models (by default "auto": slices of 16 images' values), which are compared a slice at a time (x may be
    read by rows: a memory-mapped .npy, onnxattr.read_images); ``keep_maps``: keep both maps for ``.maps`` (False:
    the per-sample report only)."""
    if neuron not in ("max", "index", "all"):
        raise UsageError(f"neuron must be max, index or all, not '{neuron}'")
    a, b = (Analyzer(method, m, neuron_selection_mode=neuron, input=i, output=o, device=device, providers=providers,
                     **params) for m, i, o in ((model_a, input_a, output_a), (model_b, input_b, output_b)))
    return compare_analyzers(a, b, x, target, perm, inputs_a, inputs_b, batch_size, keep_maps=keep_maps)


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
                      progress: bool = False, keep_maps: bool = True) -> Comparison:
    """compare() with the two analyzers made (one method, one neuron mode); ``progress``: a bar over the slices.
    The data (an array, or read by rows: a memory-mapped .npy, onnxattr.read_images) is compared a slice at a time
    (``batch_size`` as analyze's): model a explains a slice, model b the same slice at a's choices, and the slice's
    samples are compared; ``keep_maps``: keep both maps whole for ``.maps`` (False: only the per-sample report,
    whatever the data's size)."""
    neuron = a.mode
    if (target is not None) != (neuron == "index"):
        raise UsageError("a target picks the neuron for neuron selection 'index' (and that needs one)")
    x = _LastSlice(x) if sliceable(x) and not isinstance(x, np.ndarray) else np.asarray(x)
    plan, result, maps = None, None, ([], [])
    with non_finite_told_by_caller():  # the table says so
        for piece in a.analyze_slices(x, neuron_selection=target, inputs=inputs_a, batch_size=batch_size,
                                      progress=progress):
            y_a, _, choosable, through_a, _ = explained_output(a, neuron, piece.outputs)
            if plan is None:
                plan = _plan(a, b, x, y_a, choosable, target, perm, inputs_b)
                result = Comparison(a.method.name, neuron, plan.perm, other_orders=plan.others)
            rows = piece.rows
            map_b, y_b, through_b, choice_a = _second_model(b, plan, x[rows], rows, y_a, target, inputs_b)
            map_a = piece.relevance
            if map_a.shape != map_b.shape:
                raise UsageError(f"the maps differ in shape ({list(map_a.shape)} and {list(map_b.shape)} in the first "
                                 "model's layout); give perm")
            # probabilities of one export against logits of the other are no output difference
            same_outputs = y_a is not None and y_b is not None and y_a.shape == y_b.shape and through_a == through_b
            result.outputs_compared = result.outputs_compared and same_outputs  # (True until a slice says not)
            choice_b = y_b.reshape(len(map_a), -1).argmax(1) if choice_a is not None and same_outputs else None
            result.samples.extend(_sample_diffs(map_a, map_b, y_a if same_outputs else None, y_b, plan.scalar,
                                                choice_a, choice_b))
            if keep_maps:
                maps[0].append(map_a)
                maps[1].append(map_b)
    if keep_maps:
        result.maps = tuple(m[0] if len(m) == 1 else np.concatenate(m) for m in maps)
    return result


class _LastSlice:
    """Data read by rows, whose last slice is kept: model a reads it, then model b takes the same rows."""

    def __init__(self, data):
        self.data, self.shape, self.dtype = data, tuple(data.shape), getattr(data, "dtype", None)
        self._rows, self._values = None, None

    def __getitem__(self, rows):
        key = rows.indices(self.shape[0]) if isinstance(rows, slice) else None
        if key is None or key != self._rows:
            self._rows, self._values = key, self.data[rows]
        return self._values

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        values = self[0:self.shape[0]]
        return values if dtype is None else values.astype(dtype)


@dataclass
class _Plan:
    """What the first slice settles for all: model b's neuron mode, the data's axis order for b (and how many other
    orders fit), the output's translation to b's layout, b's inputs with one row per sample."""

    mode_b: str
    perm: tuple
    others: int
    scalar: bool
    out_perm: tuple | None
    to_b: object
    rows_b: set


def _plan(a: Analyzer, b: Analyzer, x, y_a, choosable: bool, target, perm, inputs_b) -> _Plan:
    """The plan, from the data's shape and model a's explained output on the first slice (``y_a``; ``choosable``:
    its per-sample argmax is the explained tensor's); refusals come before model b compiles."""
    neuron = a.mode
    identity = tuple(range(len(x.shape)))
    scalar = y_a is not None and y_a.ndim == 0  # a loss: its own only neuron, explained as it is
    mode_b = "index" if target is not None or (neuron == "max" and not scalar) else b.mode
    declared = _declared_input(b)  # read off the model, so a layout refusal comes before b compiles
    if declared is None:
        declared = data_input(b.runner(mode_b)).shape
    others = 0
    if perm is None:
        fits = layout_perms(x.shape, declared)
        perm, others = fits[0], len(fits) - 1
        if _declared_input(a) == list(declared) and perm == identity:
            others = 0  # both declare one shape: one layout, however many orders the sizes allow
    else:
        perm = tuple(int(p) for p in perm)
        if sorted(perm) != list(identity) or perm[0] != 0:
            raise UsageError(f"perm {list(perm)} is not an order of the data's {len(identity)} axes with the batch "
                             "first")
    bound = _layout_bound(a) if perm != identity else None
    if bound:
        raise UsageError(f"{bound} follow the first model's axis order, and the second takes the data transposed "
                         f"{list(perm)}; compare a method without them, or two exports of one layout")
    if neuron == "max" and not scalar and (y_a is None or not choosable):
        raise UsageError("neuron 'max' compares the maps at the first model's choice, which needs the explained "
                         "tensor (or a softmax of it over [N, K]) among its outputs; explain a graph output, or use "
                         "'index'")
    _, declared_out, _, _, _ = explained_output(b, mode_b)
    out_perm, to_b = _index_translation(y_a.shape[1:], declared_out) if y_a is not None and not scalar \
        else (None, lambda f: f)
    try:
        rows_b = batch_axis_inputs(b.runner(mode_b), inputs_b, x.shape[0]) if inputs_b else set()
    except (UsageError, DataError) as e:
        raise type(e)(f"the second model: {e}") from None
    return _Plan(mode_b, tuple(int(p) for p in perm), others, scalar, out_perm, to_b, rows_b)


def _second_model(b: Analyzer, plan: _Plan, xs, rows: slice, y_a, target, inputs_b):
    """(map_b and y_b in model a's layout and shape, whether y_b was read through a softmax, model a's choices or
    None) for the samples ``rows`` (xs: their data, in model a's layout)."""
    identity = tuple(range(xs.ndim))
    perm = plan.perm
    choice_a = None
    if plan.mode_b == "index" and target is None:  # neuron "max": b explains a's choices (checked by _plan)
        choice_a = chosen = y_a.reshape(len(xs), -1).argmax(1)
    else:
        chosen = target[rows] if np.ndim(target) == 1 else target
    feeds = {k: (v[rows] if k in plan.rows_b else v) for k, v in (inputs_b or {}).items()}
    try:
        map_b = b.analyze(np.transpose(xs, perm), neuron_selection=None if chosen is None else plan.to_b(chosen),
                          inputs=feeds, batch_size=None)
    except UsageError as e:  # a graph input the second model lacks, or needs
        raise UsageError(f"the second model: {e}") from None
    except DataError as e:
        hint = "" if perm != identity or not plan.others else "; give perm if it takes another axis order"
        raise DataError(f"the second model: {e}" + (f" (the data went in axis order {list(perm)}{hint})"
                                                    if perm != identity or plan.others else "")) from None
    if map_b.ndim == len(perm):
        map_b = np.transpose(map_b, _inverse(perm))
    elif perm != identity:  # a map of another rank than the data (token ids -> embeddings): no way back
        raise UsageError(f"the maps have rank {map_b.ndim}, the data {xs.ndim}: the second model's map cannot be "
                         "put back in the first's layout; compare two exports of one layout")
    y_b, _, _, through_b, _ = explained_output(b, plan.mode_b)
    if y_b is not None and plan.out_perm is not None and y_b.ndim == len(plan.out_perm):
        y_b = np.transpose(y_b, _inverse(plan.out_perm))
    if y_b is not None and y_a is not None and y_a.shape != y_b.shape and y_a.size == y_b.size \
            and [d for d in y_a.shape if d != 1] == [d for d in y_b.shape if d != 1]:
        y_b = y_b.reshape(y_a.shape)  # [N, K, 1, 1] against [N, K]: the same neurons in the same order
    return map_b, y_b, through_b, choice_a


def _sample_diffs(map_a, map_b, y_a, y_b, scalar: bool, choice_a, choice_b) -> list:
    """One SampleDiff per sample of two maps in one layout (``y_a``: None where the outputs are not compared)."""
    out = []
    for i in range(len(map_a)):
        ra, rb = map_a[i].astype(np.float64).ravel(), map_b[i].astype(np.float64).ravel()
        finite = bool(np.isfinite(ra).all() and np.isfinite(rb).all())
        scale = np.abs(ra).max() or np.abs(rb).max() or 1.0
        out_diff = None
        if y_a is not None:
            ya, yb = (y_a, y_b) if scalar else (y_a[i], y_b[i])
            ya, yb = np.asarray(ya, np.float64), np.asarray(yb, np.float64)
            out_diff = float(np.abs(ya - yb).max() / (np.abs(ya).max() or 1.0))
        out.append(SampleDiff(
            output_diff=out_diff,
            choice_a=None if choice_a is None else int(choice_a[i]),
            choice_b=None if choice_b is None else int(choice_b[i]),
            relevance_diff=float(np.abs(ra - rb).max() / scale) if finite else float("nan"),
            correlation=_pearson(ra, rb) if finite else float("nan"),
            top_shared=_top_shared(ra, rb) if finite else float("nan"),
            finite=finite))
    return out
