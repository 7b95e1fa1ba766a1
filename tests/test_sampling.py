"""onnxattr/sampling.py: the Loop over samples equals the sum of single gradients, and its body holds
its own copies of the weights (onnxruntime optimizes a subgraph's own initializers only)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxattr
from tests.lrp.nets import resnet_like
from tests.models import mlp


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["relevance"], {session.get_inputs()[0].name: x})[0]


def loop_body(model):
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    return next(a.g for a in loop.attribute if a.name == "body")


@pytest.mark.parametrize("chunk", [1, 6, 16])
def test_integrated_gradients_is_the_mean_of_path_gradients(chunk):
    """IG = x * mean_k grad(k/steps * x) (zero reference, seed on every logit), with gradients from the compiled gradient
    graph one point at a time; 7 steps of a batch of 2 in chunks of 1 row (one point a trip), 6 rows (3 points: a
    partial last trip) and 16 rows (8 points: one trip)."""
    model = resnet_like(bias=True)
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32)
    gradient = onnxattr.compile(model, "gradient", neuron="all")
    expected = x * np.mean([run(gradient, (k / 7 * x).astype(np.float32)) for k in range(7)], axis=0)
    ig = onnxattr.compile(model, "integrated_gradients", neuron="all", steps=7, chunk_size=chunk)
    np.testing.assert_allclose(run(ig, x), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_points_per_trip_count_rows():
    """A trip runs chunk // N points for a batch of N, at least one: an int where N is fixed, else computed at run
    time (a batch of 0 samples divides by nothing)."""
    from onnx import TensorProto, helper

    from onnxattr.graph import GraphBuilder
    from onnxattr.sampling import points_per_trip

    for rows, chunk, points in ((1, 16, 16), (4, 16, 4), (5, 16, 3), (32, 16, 1), (4, 1, 1)):
        fixed = helper.make_model(helper.make_graph(
            [], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 3])], []))
        assert points_per_trip(GraphBuilder(fixed), "x", chunk) == points
    model = helper.make_model(helper.make_graph(
        [], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])], []),
        opset_imports=[helper.make_opsetid("", 17)])
    b = GraphBuilder(model)
    per = points_per_trip(b, "x", 16)
    model.graph.node.extend(b.nodes)
    b.write_initializers(model.graph.initializer)
    model.graph.output.append(helper.make_tensor_value_info(per, TensorProto.INT64, []))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for rows, points in ((1, 16), (4, 4), (5, 3), (16, 1), (40, 1), (0, 16)):
        assert session.run(None, {"x": np.zeros((rows, 3), np.float32)})[0] == points


def test_body_holds_its_weights():
    model = resnet_like(bias=True)
    ig = onnxattr.compile(model, "integrated_gradients", steps=4)
    body = loop_body(ig)
    body_inits = {t.name: numpy_helper.to_array(t) for t in body.initializer}
    outer = {t.name for t in ig.graph.initializer}
    large = lambda t: t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 2  # noqa: E731
    # every large float constant a body node reads is the body's own
    for node in body.node:
        for name in node.input:
            assert name not in outer or not large(next(t for t in ig.graph.initializer if t.name == name)), name
    # each of the forward's float weights appears in the body, bit for bit
    body_values = list(body_inits.values())
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t)
        if large(t):
            assert any(v.shape == w.shape and np.array_equal(v, w) for v in body_values), t.name


def test_body_holds_the_float_values_of_quantized_weights():
    """A quantized net's weights are DequantizeLinear nodes of int8 codes, which the main graph keeps (onnxruntime
    fuses them into integer kernels there); the body holds their float values as its own initializers, bit for bit
    DequantizeLinear's, so that onnxruntime packs them for its blocked convolutions (ResNet18 quantized by
    quantize_static: IG-16 665 -> 596 ms; the float net's 452 ms)."""
    import os

    from onnxattr.graph import GraphBuilder

    path = os.path.join(os.path.dirname(__file__), "oracles", "data", "quant_cnn.onnx")
    model = onnx.load(path)
    inits = {t.name for t in model.graph.initializer}
    weights = [n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weights) >= 3
    values = GraphBuilder(model)
    ig = onnxattr.compile(model, "integrated_gradients", steps=4)
    body = loop_body(ig)
    body_values = [numpy_helper.to_array(t) for t in body.initializer]
    read = {i for n in body.node for i in n.input}
    for name in weights:
        assert name not in read, name  # the body reads its own copy
        w = values.value(name)
        assert w.dtype == np.float32 and any(v.shape == w.shape and np.array_equal(v, w) for v in body_values), name


def test_integrated_gradients_with_a_reference():
    """IG(x; r) = (x - r) * mean_k grad(r + k/steps * (x - r)), for a per-channel reference array."""
    model = resnet_like(bias=True)
    x = np.random.default_rng(1).standard_normal((2, 2, 8, 8)).astype(np.float32)
    ref = np.array([0.5, -0.25], np.float32).reshape(2, 1, 1)
    gradient = onnxattr.compile(model, "gradient", neuron="all")
    points = [(ref + k / 5 * (x - ref)).astype(np.float32) for k in range(5)]
    expected = (x - ref) * np.mean([run(gradient, p) for p in points], axis=0)
    ig = onnxattr.compile(model, "integrated_gradients", neuron="all", steps=5, reference_inputs=ref, chunk_size=2)
    got = run(ig, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    zero_ref = run(onnxattr.compile(model, "integrated_gradients", neuron="all", steps=5), x)
    assert np.abs(got - zero_ref).max() > 1e-2 * np.abs(zero_ref).max()  # the reference matters here


@pytest.mark.parametrize("post,fn", [("abs", np.abs), ("square", np.square)])
def test_smoothgrad_postprocess_applies_to_each_sample(post, fn):
    """With noise_scale = 0 every sample is the gradient itself: the map is post(gradient); with noise,
    the mean of post(g_k) is not post(mean g_k), which a post applied after the mean would give."""
    model = resnet_like(bias=True)
    x = np.random.default_rng(2).standard_normal((2, 2, 8, 8)).astype(np.float32)
    grad = run(onnxattr.compile(model, "gradient"), x)
    noiseless = run(onnxattr.compile(model, "smoothgrad", augment_by_n=3, noise_scale=0.0, postprocess=post), x)
    np.testing.assert_allclose(noiseless, fn(grad), rtol=1e-5, atol=1e-7 * np.abs(fn(grad)).max())
    assert (noiseless >= 0).all()
    plain = run(onnxattr.compile(model, "smoothgrad", augment_by_n=8, noise_scale=1.0, seed=3), x)
    post_each = run(onnxattr.compile(model, "smoothgrad", augment_by_n=8, noise_scale=1.0, seed=3,
                                     postprocess=post), x)
    assert (post_each >= fn(plain) - 1e-6).all() and np.abs(post_each - fn(plain)).max() > 1e-3 * post_each.max()


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_a_batch_of_0_samples_gives_an_empty_map(method):
    """Run directly in onnxruntime (the API refuses empty data), a dynamic batch of 0 goes through the
    Loop: the accumulator's reshape takes the chunk's count, and its 0 is a size, not 'copy'."""
    model, _ = mlp()  # (resnet_like's own forward cannot take 0 samples: its Reshape infers a -1)
    compiled = onnxattr.compile(model, method, steps=3) if method == "integrated_gradients" else \
        onnxattr.compile(model, method, augment_by_n=3)
    assert run(compiled, np.zeros((0, 6), np.float32)).shape == (0, 6)


def masked_attention():
    """x [N, S, D] -> softmax(x x^T + (1 - mask) * -1e4) x, scaled by a shared feed w [D], mean over S, @ W:
    mask [N, S] is per sample (its first axis has x's name), w is the same for every sample. The mask's
    bias is flattened and reshaped by x's [N, S]."""
    from onnx import helper

    mask_nodes = [helper.make_node("Sub", ["one", "mask"], ["off"]), helper.make_node("Mul", ["off", "big"], ["bias2"]),
                  # flattened outside, reshaped by x's own [N, S] as torch's attention does: only a mask
                  # recomputed from repeated rows inside the Loop fits the points
                  helper.make_node("Reshape", ["bias2", "flat"], ["bias_flat"]),
                  helper.make_node("Shape", ["x"], ["x_shape"], end=2),
                  helper.make_node("Reshape", ["bias_flat", "x_shape"], ["bias_ns"]),
                  helper.make_node("Unsqueeze", ["bias_ns", "axis1"], ["bias"])]
    return _attention(mask_nodes, [("x", "float", ["batch", 5, 4]), ("mask", "float", ["batch", 5]),
                                   ("w", "float", [4])],
                      [numpy_helper.from_array(np.array([-1], np.int64), "flat")], shared="w")


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_a_feed_with_the_batch_axis_is_repeated_for_every_point(method):
    """A per-sample feed (an attention mask [N, S]) goes with its sample's points inside the Loop; a feed
    without the batch axis (w [D]) is shared. IG equals x times the mean of the gradient graph's maps
    at k/steps * x with the same feeds; SmoothGrad without noise equals the gradient. Each sample's map
    equals that sample explained alone, and the mask changes it."""
    model = masked_attention()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    feeds = {"mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 0, 1]], np.float32),
             "w": np.array([1.0, -0.5, 2.0, 0.25], np.float32)}
    gradient = ort.InferenceSession(onnxattr.compile(model, "gradient", neuron="all", input="x").SerializeToString())
    grad_at = lambda p: gradient.run(["relevance"], {"x": p.astype(np.float32), **feeds})[0]  # noqa: E731
    if method == "integrated_gradients":
        compiled = onnxattr.compile(model, method, neuron="all", input="x", steps=6, chunk_size=4)
        expected = x * np.mean([grad_at(k / 6 * x) for k in range(6)], axis=0)
    else:
        compiled = onnxattr.compile(model, method, neuron="all", input="x", augment_by_n=5, noise_scale=0.0, chunk_size=2)
        expected = grad_at(x)
    session = ort.InferenceSession(compiled.SerializeToString())
    got = session.run(["relevance"], {"x": x, **feeds})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    for n in range(3):
        alone = session.run(["relevance"], {"x": x[n:n + 1], "mask": feeds["mask"][n:n + 1], "w": feeds["w"]})[0]
        np.testing.assert_allclose(got[n:n + 1], alone, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    unmasked = session.run(["relevance"], {"x": x, "mask": np.ones((3, 5), np.float32), "w": feeds["w"]})[0]
    assert np.abs(unmasked[0] - got[0]).max() > 1e-2 * np.abs(got[0]).max()


def _attention(mask_nodes, inputs, extra_inits=(), x_from=None, shared=None):
    """softmax(x x^T + bias) x, mean over S, @ W -> y [N, 3] (S = 5, D = 4), with bias [N?, 1, S] made by
    ``mask_nodes``; ``x_from``: nodes making x from another input; ``shared``: an input [D] scaling the
    context before the mean."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(6)
    scaled = [helper.make_node("Mul", ["hh", shared], ["hs"])] if shared else []
    nodes = list(x_from or []) + list(mask_nodes) + [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]), helper.make_node("MatMul", ["x", "xt"], ["sc"]),
        helper.make_node("Add", ["sc", "bias"], ["msc"]), helper.make_node("Softmax", ["msc"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "x"], ["hh"]), *scaled,
        helper.make_node("ReduceMean", ["hs" if shared else "hh", "axis1"], ["pool"], keepdims=0),
        helper.make_node("MatMul", ["pool", "W"], ["y"])]
    inits = [numpy_helper.from_array(np.array(1, np.float32), "one"),
             numpy_helper.from_array(np.array(-1e4, np.float32), "big"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"), *extra_inits]
    g = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info(n, TensorProto.FLOAT if k != "bool" else
                                                                            TensorProto.BOOL, s)
                                               for n, k, s in inputs],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


MASK = np.array([[1, 1, 0, 0, 0], [1] * 5, [1, 0, 1, 0, 1]], np.float32)


def _ig_by_points(model, x, feeds, steps=6, input="x"):
    gradient = ort.InferenceSession(onnxattr.compile(model, "gradient", neuron="all", input=input).SerializeToString())
    return x * np.mean([gradient.run(["relevance"], {input: (k / steps * x).astype(np.float32), **feeds})[0]
                        for k in range(steps)], axis=0)


def test_a_mask_read_inside_an_if_branch_goes_with_the_points():
    """The bias is made from the mask inside an If branch (an outer-scope read): the branch is copied into
    the Loop with the repeated mask (before, the mask reached it unrepeated and onnxruntime failed)."""
    from onnx import TensorProto, helper

    vi = helper.make_tensor_value_info
    then_g = helper.make_graph([helper.make_node("Sub", ["one", "mask"], ["t1"]),
                                helper.make_node("Mul", ["t1", "big"], ["t2"]),
                                helper.make_node("Unsqueeze", ["t2", "axis1"], ["tb"])], "then", [],
                               [vi("tb", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["zero3"], ["eb"])], "else", [],
                               [vi("eb", TensorProto.FLOAT, None)])
    model = _attention([helper.make_node("If", ["use_mask"], ["bias"], then_branch=then_g, else_branch=else_g)],
                       [("x", "float", ["batch", 5, 4]), ("mask", "float", ["batch", 5]), ("use_mask", "bool", [])],
                       [numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero3")])
    x = np.random.default_rng(8).standard_normal((3, 5, 4)).astype(np.float32)
    feeds = {"mask": MASK, "use_mask": np.array(True)}
    got = onnxattr.create_analyzer("integrated_gradients", model, input="x", neuron_selection_mode="all", steps=6,
                                   chunk_size=4).analyze(x, inputs=feeds)
    want = _ig_by_points(model, x, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_an_intermediate_x_whose_batch_axis_inference_renamed():
    """x = Reshape(inp, [-1, S, D]): shape inference names x's first axis afresh, but inp declares it
    "batch", as the mask does: the mask is still repeated for the points (before, it was not, and the map
    failed at run time). IG at x equals IG at inp, reshaped (the Reshape is linear)."""
    from onnx import helper

    model = _attention([helper.make_node("Sub", ["one", "mask"], ["t1"]), helper.make_node("Mul", ["t1", "big"], ["t2"]),
                        helper.make_node("Unsqueeze", ["t2", "axis1"], ["bias"])],
                       [("inp", "float", ["batch", 20]), ("mask", "float", ["batch", 5])],
                       [numpy_helper.from_array(np.array([-1, 5, 4], np.int64), "shp")],
                       x_from=[helper.make_node("Reshape", ["inp", "shp"], ["x"])])
    inp = np.random.default_rng(9).standard_normal((3, 20)).astype(np.float32)
    got = onnxattr.create_analyzer("integrated_gradients", model, input="x", neuron_selection_mode="all", steps=6,
                                   chunk_size=4).analyze(inp, inputs={"mask": MASK})
    want = onnxattr.create_analyzer("integrated_gradients", model, input="inp", neuron_selection_mode="all", steps=6,
                                    chunk_size=4).analyze(inp, inputs={"mask": MASK})
    np.testing.assert_allclose(got.reshape(3, 20), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    unmasked = onnxattr.create_analyzer("integrated_gradients", model, input="x", neuron_selection_mode="all",
                                        steps=6).analyze(inp, inputs={"mask": np.ones_like(MASK)})
    assert np.abs(unmasked - got).max() > 1e-2 * np.abs(got).max()  # the mask matters


def test_points_the_model_mixes_are_refused_and_chunk_size_1_explains_them():
    """x [N, S, D] and mask [M, S] under different names, and the model reshapes by the mask's batch size:
    the chunk's points would fold into the sequence axis and give a wrong map without a word. The output
    must come out with one row per point, so the API says so; chunk_size=1 gives the right map. chunk_size counts
    rows: at N = 2, chunk_size=4 runs two points a trip, and chunk_size=2 one point (the right map too)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(10)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Tanh", ["a"], ["t"]),
             helper.make_node("Shape", ["mask"], ["msh"], end=1), helper.make_node("Concat", ["msh", "rest"], ["shp"],
                                                                                  axis=0),
             helper.make_node("Reshape", ["t", "shp"], ["t2"]),
             helper.make_node("ReduceMean", ["t2", "axis1"], ["pool"], keepdims=0),
             helper.make_node("MatMul", ["pool", "W2"], ["y"])]
    inits = [numpy_helper.from_array(rng.standard_normal((3, 3)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((3, 2)).astype(np.float32), "W2"),
             numpy_helper.from_array(np.array([-1, 3], np.int64), "rest"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "mixing", [vi("x", TensorProto.FLOAT, ["N", 4, 3]), vi("mask", TensorProto.FLOAT,
                                                                                        ["M", 4])],
                          [vi("y", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    x, feeds = rng.standard_normal((2, 4, 3)).astype(np.float32), {"mask": np.ones((2, 4), np.float32)}
    mixed = onnxattr.create_analyzer("integrated_gradients", model, input="x", neuron_selection_mode="all", steps=4,
                                     chunk_size=4)
    with pytest.raises(onnxattr.errors.DataError, match="one row per point.*a feed \\(mask\\).*chunk_size=1"):
        mixed.analyze(x, inputs=feeds)
    for rows in (1, 2):
        got = onnxattr.create_analyzer("integrated_gradients", model, input="x", neuron_selection_mode="all", steps=4,
                                       chunk_size=rows).analyze(x, inputs=feeds)
        np.testing.assert_allclose(got, _ig_by_points(model, x, feeds, 4), rtol=1e-5, atol=1e-7)


def test_what_does_not_vary_with_x_is_repeated_not_recomputed():
    """IG at resnet_like's c3: the skip Add reads p1, computed from the graph input before c3. p1 has the
    batch axis, so the Loop repeats it instead of running the Conv/MaxPool prefix again for every point;
    the map equals one point per trip."""
    model = resnet_like(bias=True)
    x = np.random.default_rng(11).standard_normal((2, 2, 8, 8)).astype(np.float32)
    chunked = onnxattr.compile(model, "integrated_gradients", input="c3", steps=4, chunk_size=4)
    assert not any(n.op_type in ("Conv", "MaxPool") for n in loop_body(chunked).node)
    one = onnxattr.compile(model, "integrated_gradients", input="c3", steps=4, chunk_size=1)
    np.testing.assert_allclose(run(chunked, x), run(one, x), rtol=1e-5, atol=1e-6 * np.abs(run(one, x)).max())


def test_a_symbolic_axis_that_is_not_the_batch_is_never_repeated():
    """x = a [N, S, E] + p [S, E] (a position table fed at run time), then c [S, S] @ x: S is p's first axis
    but a's second, so it is no batch name. Before, c was tiled as if per sample and IG, in chunks, came
    out wrong without a word (off by 8.7); numpy's IG of sum(tanh(c x)) is the reference."""
    from onnx import TensorProto, helper

    vi = helper.make_tensor_value_info
    g = helper.make_graph([helper.make_node("Add", ["a", "p"], ["x"]), helper.make_node("MatMul", ["c", "x"], ["z"]),
                           helper.make_node("Tanh", ["z"], ["t"]),
                           helper.make_node("ReduceSum", ["t", "axis1"], ["y"], keepdims=0)], "g",
                          [vi("a", TensorProto.FLOAT, ["N", "S", 4]), vi("p", TensorProto.FLOAT, ["S", 4]),
                           vi("c", TensorProto.FLOAT, ["S", "S"])], [vi("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(14)
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    feeds = {"p": rng.standard_normal((3, 4)).astype(np.float32), "c": rng.standard_normal((3, 3)).astype(np.float32)}
    x = a + feeds["p"]
    grad = lambda v: feeds["c"].T @ (1 - np.tanh(feeds["c"] @ v) ** 2)  # noqa: E731
    want = x * np.mean([grad(x * k / 4) for k in range(4)], axis=0)
    got = onnxattr.create_analyzer("integrated_gradients", model, neuron_selection_mode="all", input="x", steps=4,
                                   chunk_size=16).analyze(a, inputs=feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooled", [False, True])
def test_rows_per_point_follow_the_output_not_the_input(pooled):
    """A token model that flattens its logits (x [N, S, E] -> y [N*S, C]) has S rows per point and mixes
    none: IG in chunks equals one point per trip (before: refused, chunk_size=1 too). A model that averages
    over the batch (y [1, C]) mixes them: refused in chunks (before the check fed the Loop's condition,
    onnxruntime dropped it and the map came out 8x too small), right with chunk_size=1."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(15)
    tail = [helper.make_node("ReduceMean", ["t", "axis0"], ["y"], keepdims=1)] if pooled else \
        [helper.make_node("Reshape", ["t", "flat"], ["y"])]
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Tanh", ["h"], ["t"])] + tail,
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None if pooled else ["M", 3])],
                          [numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"),
                           numpy_helper.from_array(np.array([-1, 3], np.int64), "flat"),
                           numpy_helper.from_array(np.array([0], np.int64), "axis0")])
    if pooled:
        g.output[0].type.tensor_type.shape.dim.add().dim_value = 1
        for _ in range(2):
            g.output[0].type.tensor_type.shape.dim.add().dim_param = "?"
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    one = onnxattr.create_analyzer("integrated_gradients", model, neuron_selection_mode="all", steps=8,
                                   chunk_size=1).analyze(x)
    chunked = onnxattr.create_analyzer("integrated_gradients", model, neuron_selection_mode="all", steps=8,
                                       chunk_size=16)
    if pooled:
        with pytest.raises(onnxattr.errors.DataError, match="one row per point.*chunk_size=1"):
            chunked.analyze(x)
    else:
        np.testing.assert_allclose(chunked.analyze(x), one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad", "gradient_shap", "deep_lift_shap"])
def test_an_unsupported_node_is_named_as_the_model_names_it(method):
    """An If on the explained path: the Loop methods named the body's copy of it ('oa/If_57') before."""
    from onnx import TensorProto, helper

    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    g = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                           helper.make_node("Greater", ["s", "zero"], ["c"]),
                           helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="my_if")],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(np.array(0, np.float32), "zero")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(onnxattr.errors.UnsupportedModelError, match="control flow on the explained path is not "
                                                                    "supported: If 'my_if' \\(its condition is "
                                                                    "computed at run time\\)$"):
        onnxattr.compile(model, method)
