"""The reference point of the path methods (integrated gradients, conductance, DeepLIFT) at the explained input x.

``reference_inputs`` gives it in x's own space. Where x is an intermediate tensor (``--input`` naming a token
embedding), ``reference_data`` gives it in the data's space instead, as Captum's layer methods take their
baselines: the model's own nodes from the data input to x run on that data (padding token ids, say), and x's
value there is the reference. In the graph: a copy of those nodes reading the constant in place of the input.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnxattr.errors import UsageError
from onnxattr.methods.base import Param, Target, reference_constant
from onnxattr.methods.feature_groups import array_or_npy_check, loaded, parse_array_or_npy
from onnxattr.sampling import checked_tensor, copy_nodes, first_size, forward_subgraph


def _array_error(arr: np.ndarray) -> str | None:
    return None if arr.ndim >= 1 and arr.size and arr.dtype.kind in "biuf" else "must be a non-empty numeric array"


REFERENCE_INPUTS = Param("reference_inputs", 0.0, "the reference (baseline): a number, or via the Python API an array "
                         "that broadcasts to x: one row, or one per sample", per_sample=True)
REFERENCE_DATA = Param(
    "reference_data", None, "the reference as data (in the space of the graph input that takes the data), when "
    "--input names an intermediate tensor: that tensor's value on it is the reference (Captum's layer methods' "
    "baselines; e.g. padding token ids [1, S], or one row per sample); on the command line a .npy file",
    parse_array_or_npy, array_or_npy_check("an array of the data input's rank", _array_error), optional=True,
    per_sample=True)


def path_reference(t: Target, p: dict) -> str:
    """The reference at x: ``reference_inputs`` broadcast to x, or x computed from ``reference_data``."""
    b, x = t.b, t.x
    given = p.get("reference_data")
    if given is None:
        return reference_constant(b, x, p["reference_inputs"])
    data = t.data or x
    if data == x:
        raise UsageError(f"reference_data gives the reference as data for an explained intermediate tensor (--input "
                         f"naming, say, a token embedding); here the data input '{x}' is the explained input itself: "
                         "use reference_inputs")
    if not (np.ndim(p["reference_inputs"]) == 0 and float(p["reference_inputs"]) == 0.0):
        raise UsageError("give the reference either as reference_inputs (in the space of the explained tensor "
                         f"'{x}') or as reference_data (in the data's, '{data}'), not both")
    arr = np.asarray(loaded(given, "reference_data", _array_error))
    elem = b.types.get(data)
    dtype = helper.tensor_dtype_to_np_dtype(elem) if elem else arr.dtype
    shape = b.shape(data)
    if shape is not None and (arr.ndim != len(shape) or any(
            isinstance(d, int) and a != d and (k or a != 1) for k, (a, d) in enumerate(zip(arr.shape, shape)))):
        shown = [d if isinstance(d, int) else "?" for d in shape]
        raise UsageError(f"reference_data of shape {list(arr.shape)} does not fit the data input '{data}' {shown}: "
                         "one row, or one per sample, of the data's shape")
    if np.dtype(dtype).kind in "iu":
        if not np.array_equal(arr, np.round(arr)):
            raise UsageError(f"reference_data: the data input '{data}' takes integers (token ids?), and the array "
                             "holds fractions")
        limits = np.iinfo(dtype)
        if arr.min() < limits.min or arr.max() > limits.max:
            raise UsageError(f"reference_data: values from {arr.min()} to {arr.max()} do not fit the data input "
                             f"'{data}' ({np.dtype(dtype).name})")
    if shape is not None and isinstance(shape[0], int) and len(arr) == 1:  # a model of static batch: its rows
        arr = np.repeat(arr, shape[0], axis=0)
    rename = {data: b.const(arr.astype(dtype), dtype, "reference_data")}
    copies = copy_nodes(b, forward_subgraph(t.nodes, data, x), rename)
    b.nodes.extend(copies)
    for node in copies:  # a row of reference data gives one row where the model's shapes say N
        for o in node.output:
            b.shapes.pop(o, None)
    return fitting(b, rename[x], x)


def fitting(b, ref: str, x: str) -> str:
    """The reference at x, checked at run time to broadcast to x as a reference should: one row or one per sample,
    and x's other sizes (token ids of another length than the data's would give a map of the reference's shape)."""
    ref_rows = first_size(b, ref)
    rows = b.op("Or", [b.op("Equal", [ref_rows, b.ints([1])]), b.op("Equal", [ref_rows, first_size(b, x)])])
    rest = lambda t: b.op("Slice", [b.op("Shape", [t]), b.ints([1]), b.ints([2 ** 62])])  # noqa: E731
    differing = b.op("Cast", [b.op("Not", [b.op("Equal", [rest(ref), rest(x)])])], to=TensorProto.INT64)
    same = b.op("Equal", [b.op("ReduceSum", [differing], keepdims=1), b.ints([0])])  # x of rank 1: nothing differs
    ok = b.op("Reshape", [b.op("And", [rows, same]), b.ints([])])
    return checked_tensor(b, ref, ok, "reference_data")
