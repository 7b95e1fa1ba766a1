"""Errors a user can cause, each with its own exit code for the CLI.

Every error here is meant to be printed as one line (``onnxattr: error: ...``) with no traceback.
The exit codes are part of the documented contract (README, "Exit codes").
"""

import contextlib
import os
import sys
import warnings

import numpy as np


class OnnxAttrError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""

    exit_code = 1


class OnnxAttrWarning(RuntimeWarning):
    """Base class of onnxattr's warnings (the work is done, but look at this); the CLI prints them as
    one line, and exits with ``exit_code`` when a warnings filter turns one into an error."""

    exit_code = 1


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def warn(message: str, category: type[OnnxAttrWarning]) -> None:
    """Warn at the caller's line outside onnxattr (where the user called the API), whatever the depth
    inside the package, so that the location is theirs and module filters match."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is warn's caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE + os.sep):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)


class UsageError(OnnxAttrError):
    """Unknown method or parameter, bad parameter value, conflicting options."""

    exit_code = 2


def check_positive_int(name: str, value) -> int:
    """``value`` as an int when it is a positive integer (numpy's too, not a bool), else a UsageError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class ModelFileError(OnnxAttrError):
    """The model file is missing, unreadable, not ONNX, truncated, or escapes its folder."""

    exit_code = 3


class InvalidModelError(OnnxAttrError):
    """The model loads but fails onnx.checker, or cannot be canonicalized."""

    exit_code = 4


class UnsupportedModelError(OnnxAttrError):
    """An op on the explained path has no emitter, or the path holds control flow."""

    exit_code = 5


class SelectionError(OnnxAttrError):
    """No (or no unambiguous) input/output to explain."""

    exit_code = 6


class DataError(OnnxAttrError):
    """Input data whose shape or dtype does not fit, or a target index out of range."""

    exit_code = 7


class OutputFileError(OnnxAttrError):
    """The output path would overwrite the input, or cannot be written."""

    exit_code = 8


class PatternError(OnnxAttrError):
    """pattern.* methods: no patterns given (run fit first), an unreadable pattern file, or patterns
    learned for another model or with another pattern_type."""

    exit_code = 9


EXIT_CODES = {
    cls.__name__: cls.exit_code
    for cls in (
        UsageError,
        ModelFileError,
        InvalidModelError,
        UnsupportedModelError,
        SelectionError,
        DataError,
        OutputFileError,
        PatternError,
    )
}


@contextlib.contextmanager
def naming_the_model(label: str):
    """Errors about the model raised inside get ``label: `` in front unless they already name it (a
    message from deep in the compiler names the node, not the file)."""
    try:
        yield
    except (InvalidModelError, UnsupportedModelError, SelectionError, PatternError) as e:
        if label and label not in str(e):
            raise type(e)(f"{label}: {e}") from None
        raise
