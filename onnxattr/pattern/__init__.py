"""PatternNet / PatternAttribution support: learn signal patterns from data (fit), store them, check
they belong to the model being compiled. The methods themselves live in onnxattr.methods.pattern."""

from onnxattr.pattern.fit import fit_patterns
from onnxattr.pattern.stats import PATTERN_TYPES
from onnxattr.pattern.store import DegeneratePatternWarning, Patterns, load_patterns

__all__ = ["DegeneratePatternWarning", "PATTERN_TYPES", "Patterns", "fit_patterns", "load_patterns"]
