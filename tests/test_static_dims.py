"""onnxattr/static_dims.py: the known entries of shape tensors are followed from Shape to their use, and a tensor
known in full becomes an initializer; anything that depends on a symbolic size stays computed."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxattr.static_dims import fold_static_dims


def shape_model(nodes, outputs, inits=()):
    """x [N, 7, 3] (N symbolic) -> the shape arithmetic in ``nodes``; ``outputs``: int64 results to return."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7, 3])],
                          [helper.make_tensor_value_info(o, TensorProto.INT64, None) for o in outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def run(model, batch=2):
    x = np.zeros((batch, 7, 3), np.float32)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def folded_names(model):
    return {t.name for t in model.graph.initializer}


INITS = [("one", np.array([1], np.int64)), ("two", np.array([2], np.int64)), ("zero", np.array(0, np.int64)),
         ("neg", np.array([-1], np.int64)), ("idx", np.array([2, 1], np.int64))]


def test_known_entries_fold_and_the_symbolic_ones_stay():
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Cast", ["shape"], ["shape32"], to=TensorProto.INT32),  # tf2onnx casts before slicing
             helper.make_node("Slice", ["shape32", "one", "two"], ["steps32"]),
             helper.make_node("Cast", ["steps32"], ["steps1"], to=TensorProto.INT64),
             helper.make_node("Squeeze", ["steps1"], ["steps"]),
             helper.make_node("Gather", ["shape", "idx"], ["tail"]),                   # [3, 7]
             helper.make_node("Mul", ["tail", "two"], ["tail2"]),                      # [6, 14]
             helper.make_node("Concat", ["tail2", "neg"], ["new_shape"], axis=0),      # [6, 14, -1]
             helper.make_node("Gather", ["shape", "zero"], ["batch"]),                  # N: symbolic
             helper.make_node("Unsqueeze", ["batch", "zero1"], ["batch1"]),
             helper.make_node("Concat", ["batch1", "tail"], ["with_batch"], axis=0),   # [N, 3, 7]
             helper.make_node("Sub", ["with_batch", "one"], ["minus"]),               # [N - 1, 2, 6]
             helper.make_node("Size", ["x"], ["size"]),                               # 21 N
             helper.make_node("Shape", ["x"], ["last"], start=-1),                    # [3]
             helper.make_node("Add", ["last", "one"], ["last1"])]
    outputs = ["steps", "new_shape", "with_batch", "minus", "size", "last1"]
    model = shape_model(nodes, outputs, INITS + [("zero1", np.array([0], np.int64))])
    want = run(model)
    assert fold_static_dims(model)
    folded = folded_names(model)
    assert {"steps32", "tail", "last"} <= folded  # a known node fed by a partly known one
    assert not {"batch", "batch1", "with_batch", "minus", "size"} & folded
    assert "new_shape" not in folded and "steps" not in folded  # graph outputs stay, computed from what folded
    for a, b in zip(run(model), want):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(run(model, batch=5)[2], [5, 3, 7])


def test_a_slice_backwards_and_past_the_end():
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Slice", ["shape", "big", "zero1", "zero1", "neg"], ["reversed"]),  # [3, 7]
             helper.make_node("Slice", ["shape", "one", "big"], ["rest"]),                       # [7, 3]
             helper.make_node("Add", ["reversed", "rest"], ["sums"])]
    model = shape_model(nodes, ["sums"], INITS + [("zero1", np.array([0], np.int64)),
                                                  ("big", np.array([100], np.int64))])
    assert fold_static_dims(model)
    assert {"reversed", "rest"} <= folded_names(model)
    np.testing.assert_array_equal(run(model)[0], [10, 10])


def test_nothing_known_changes_nothing():
    model = shape_model([helper.make_node("Shape", ["x"], ["shape"], end=1)], ["shape"])
    before = model.SerializeToString()
    assert not fold_static_dims(model)
    assert model.SerializeToString() == before


def _channel_shuffle(t, k, groups=2):
    """TorchScript's channel_shuffle(t, groups) of a [N, C, H, W] tensor: view(N, groups, C // groups, H, W),
    transpose(1, 2), view(N, C, H, W), every size read from Shape(t)."""
    p = f"s{k}_"
    nodes = [helper.make_node("Shape", [t], [p + "shape"])]
    for axis in range(4):
        nodes.append(helper.make_node("Gather", [p + "shape", f"i{axis}"], [p + f"d{axis}"]))
        nodes.append(helper.make_node("Unsqueeze", [p + f"d{axis}", "zero1"], [p + f"u{axis}"]))
    nodes += [helper.make_node("Div", [p + "d1", "groups"], [p + "per"]),
              helper.make_node("Cast", [p + "per"], [p + "per_i"], to=TensorProto.INT64),
              helper.make_node("Unsqueeze", [p + "per_i", "zero1"], [p + "per1"]),
              helper.make_node("Concat", [p + "u0", "groups1", p + "per1", p + "u2", p + "u3"], [p + "split"], axis=0),
              helper.make_node("Reshape", [t, p + "split"], [p + "grouped"]),
              helper.make_node("Transpose", [p + "grouped"], [p + "swapped"], perm=[0, 2, 1, 3, 4]),
              helper.make_node("Concat", [p + "u0", p + "u1", p + "u2", p + "u3"], [p + "back"], axis=0),
              helper.make_node("Reshape", [p + "swapped", p + "back"], [f"t{k + 1}"])]
    return nodes


def test_shapes_after_a_folded_reshape_are_known_to_the_next_round():
    """A ShuffleNet block as the TorchScript exporter writes it: a channel shuffle, a chunk (a Slice whose end is
    computed from Shape), a channel shuffle of that: the second's sizes are read from the Slice's output, whose
    shape inference knows only once the Slice's end is folded; each round infers shapes anew."""
    from onnxattr.light import declared_dims, infer_shapes

    chunk = [helper.make_node("Shape", ["t1"], ["c_shape"]),  # TorchScript's t1.chunk(2, dim=1)[0]
             helper.make_node("Gather", ["c_shape", "one1"], ["c_channels"]),
             helper.make_node("Add", ["c_channels", "one1"], ["c_plus"]),
             helper.make_node("Div", ["c_plus", "groups1"], ["c_half"]),
             helper.make_node("Slice", ["t1", "zero1", "c_half", "one1"], ["h"])]
    g = helper.make_graph(_channel_shuffle("t0", 0) + chunk + _channel_shuffle("h", 1), "g",
                          [helper.make_tensor_value_info("t0", TensorProto.FLOAT, ["N", 8, 3, 5])],
                          [helper.make_tensor_value_info("t2", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
                           [("zero1", [0]), ("one1", [1]), ("groups", 2), ("groups1", [2])]
                           + [(f"i{a}", a) for a in range(4)]])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.arange(2 * 8 * 3 * 5, dtype=np.float32).reshape(2, 8, 3, 5)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"t0": x})[0]
    assert fold_static_dims(model)
    typed = infer_shapes(model).graph
    shapes = {vi.name: declared_dims(vi) for vi in list(typed.value_info) + list(typed.output)}
    assert shapes["s1_grouped"] == ["N", 2, 2, 3, 5] and shapes["t2"] == ["N", 4, 3, 5]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"t0": x})[0], want)


def canonical_like(nodes, inits):
    """A float model x [N, 7, 3] -> y of ``nodes``, canonicalized: the canonical model gives the original's output at
    batch 1 and 3. Returns it and its inferred shapes by name."""
    from onnxattr.canonicalize import canonicalize

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    canon = canonicalize(model)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 7, 3)).astype(np.float32)
        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        got = ort.InferenceSession(canon.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        np.testing.assert_array_equal(got[0], want[0])
    shapes = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in (*canon.graph.value_info, *canon.graph.output)}
    return canon, shapes


def test_a_reshape_that_repeats_its_input_dims_gets_a_constant_target():
    """x.flatten(2) and x.view(x.size(0), h, w, c) under a symbolic batch, as the TorchScript exporter writes them
    (the target computed from Shape): the entries that repeat the Reshape's own input dimension at the same place,
    the same tensor's axis or the same symbolic name, become 0 (copy), so the target is a constant and the shapes
    after it are known; the outputs are the same for every batch size."""
    n = helper.make_node
    nodes = [n("Shape", ["x"], ["s"]), n("Slice", ["s", "zero1", "two"], ["n_c"]),     # [N, 7]
             n("Concat", ["n_c", "neg"], ["flat"], axis=0), n("Reshape", ["x", "flat"], ["f"]),   # [N, 7, 3]
             n("Transpose", ["f"], ["t"], perm=[0, 2, 1]),                          # [N, 3, 7]
             n("Gather", ["s", "zero"], ["batch"]), n("Unsqueeze", ["batch", "zero1"], ["batch1"]),
             n("Concat", ["batch1", "three_seven"], ["target"], axis=0),            # [N (of x), 3, 7, 1]
             n("Reshape", ["t", "target"], ["y"])]
    inits = [("zero1", np.array([0], np.int64)), ("two", np.array([2], np.int64)), ("neg", np.array([-1], np.int64)),
             ("zero", np.array(0, np.int64)), ("three_seven", np.array([3, 7, 1], np.int64))]
    canon, shapes = canonical_like(nodes, inits)
    assert shapes["f"] == ["N", 7, 3] and shapes["y"] == ["N", 3, 7, 1]
    assert "Shape" not in [node.op_type for node in canon.graph.node]


def test_an_expand_to_the_batch_written_through_equal_and_where_gets_a_known_shape():
    """TorchScript's cls.expand(n, -1, -1): the target is Where(Equal(s, -1), 1, s) with s = [N, -1, -1] read from
    Shape(x). A dimension is never -1, so the entries are [N, 1, 1]; the target is spelled as Shape(x, 0, 1) and a
    constant, which shape inference follows: the Expand's output, and the tokens Concat after it, have known shapes
    (a BEiT's token count was unknown without a position embedding to broadcast against)."""
    n = helper.make_node
    nodes = [n("Shape", ["x"], ["s"]), n("Gather", ["s", "zero"], ["batch"]), n("Unsqueeze", ["batch", "zero1"], ["b1"]),
             n("Concat", ["b1", "neg", "neg"], ["nmm"], axis=0), n("Reshape", ["nmm", "neg"], ["flat"]),
             n("Equal", ["flat", "negs"], ["is_neg"]), n("Where", ["is_neg", "ones", "flat"], ["target"]),
             n("Expand", ["cls", "target"], ["c"]),
             # known in the same round, after the Expand: folding it must not be thrown off by the nodes inserted
             n("Cast", ["s"], ["s64"], to=TensorProto.INT64),  # stops graphsurgeon's own shape folding
             n("Slice", ["s64", "one1", "three1"], ["tail"]), n("Concat", ["neg", "tail"], ["same"], axis=0),
             n("Reshape", ["x", "same"], ["x2"]), n("Concat", ["c", "x2"], ["y"], axis=1)]
    inits = [("zero", np.array(0, np.int64)), ("zero1", np.array([0], np.int64)), ("neg", np.array([-1], np.int64)),
             ("negs", np.array([-1, -1, -1], np.int64)), ("ones", np.array([1, 1, 1], np.int64)),
             ("cls", np.arange(3, dtype=np.float32).reshape(1, 1, 3)), ("one1", np.array([1], np.int64)),
             ("three1", np.array([3], np.int64))]
    _, shapes = canonical_like(nodes, inits)
    assert shapes["c"] == ["N", 1, 3] and shapes["y"] == ["N", 8, 3]
