"""Learned patterns: one array per layer (keyed by node name, in the layout of the layer's weight), the
pattern_type they were learned with, and the sha256 of the model they belong to. Saved as .npz with a
``__meta__`` entry (JSON); read back with allow_pickle=False. Patterns that are all zero for a layer
are reported (by fit and by the pattern methods) as a DegeneratePatternWarning, defined here."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from onnxattr.errors import OnnxAttrWarning, OutputFileError, PatternError
from onnxattr.output import atomic_path

FORMAT = "onnxattr.patterns/1"
META = "__meta__"


class DegeneratePatternWarning(OnnxAttrWarning):
    """A layer's patterns are all zero: the data never activated it or gave it no covariance (one
    sample, constant inputs), so PatternNet/PatternAttribution pass no signal through it."""

    exit_code = 7  # as an error: a problem of the data


def all_zero(names: list, total: int) -> str:
    """'the patterns of 2 of 5 layers are all zero ('fc1', 'fc2')', at most five names listed."""
    listed = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
    return f"the patterns of {len(names)} of {total} layers are all zero ({listed})"


@dataclass
class Patterns:
    model_sha256: str
    pattern_type: str
    arrays: dict = field(default_factory=dict)  # node name -> pattern (weight layout)
    samples: int = 0  # input samples seen by fit

    def __repr__(self) -> str:  # short: it lands in the compiled model's metadata
        return (f"Patterns({self.pattern_type}, {len(self.arrays)} layers, {self.samples} samples, "
                f"model sha256 {self.model_sha256[:12]})")

    def save(self, path) -> None:
        meta = {"format": FORMAT, "model_sha256": self.model_sha256, "pattern_type": self.pattern_type,
                "samples": self.samples, "layers": list(self.arrays)}
        if META in self.arrays:
            raise PatternError(f"a layer is named '{META}'; cannot save")
        try:
            with atomic_path(os.fspath(path)) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **{META: np.array(json.dumps(meta))}, **self.arrays)
        except OSError as e:
            raise OutputFileError(f"{path}: cannot write ({e.strerror})") from None

    def check(self, digest: str, pattern_type: str) -> None:
        """Refuse patterns of another model or another estimator."""
        if digest != self.model_sha256:
            raise PatternError(
                f"these patterns were learned for another model (sha256 {self.model_sha256[:12]}..., this "
                f"model is {digest[:12]}...): run fit on this model")
        if pattern_type != self.pattern_type:
            raise PatternError(
                f"these patterns were learned with pattern_type={self.pattern_type}; compile with "
                f"pattern_type={self.pattern_type} or fit again with pattern_type={pattern_type}")


def load_patterns(path) -> Patterns:
    """Read a file written by Patterns.save (``onnxattr fit``)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise PatternError(f"{path}: is a folder, not a pattern file (make one with `onnxattr fit`)")
    if not os.path.isfile(path):
        raise PatternError(f"{path}: no such pattern file (make one with `onnxattr fit`)")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z[META]))
            if meta.get("format") != FORMAT:
                raise PatternError(f"{path}: not an onnxattr pattern file (format {meta.get('format')!r})")
            arrays = {name: z[name] for name in meta["layers"]}
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise PatternError(f"{path}: not a readable onnxattr pattern file ({e})") from None
    bad = next((name for name, a in arrays.items() if a.dtype.kind != "f" or not np.isfinite(a).all()), None)
    if bad is not None:
        raise PatternError(f"{path}: the pattern of layer '{bad}' is not finite floats; fit again")
    return Patterns(meta["model_sha256"], meta["pattern_type"], arrays, int(meta.get("samples", 0)))
