"""onnxattr/emitters/einsum.py: the Einsum VJP on the equations transformers export (batched matmuls, Keras
dense projections, attention scores), implicit outputs, ellipses, letters summed over one operand alone,
and the refusals."""

import numpy as np
import pytest

import onnxattr
from onnxattr.errors import UnsupportedModelError
from tests.vjp_check import check_vjp, node_model

rng = np.random.default_rng(5)
r = rng.standard_normal


@pytest.mark.parametrize("eq,shapes", [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),   # attention scores Q K^T
    ("abc,cde->abde", [(2, 3, 4), (4, 2, 3)]),           # Keras MultiHeadAttention's query projection
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),                         # implicit output: ik
    ("ij,j->i", [(3, 4), (4,)]),
    ("i,i->", [(4,), (4,)]),                             # a dot product: a scalar output
    ("ij->ji", [(3, 4)]),
    ("bij->bi", [(2, 3, 4)]),                            # j summed over one operand alone
    ("ij,kl->ijkl", [(2, 3), (3, 2)]),
    ("bij,bj->bi", [(2, 3, 4), (2, 4)]),
])
def test_einsum_vjp(eq, shapes):
    names = "abc"[:len(shapes)]
    check_vjp("Einsum", [(n, r(s), False) for n, s in zip(names, shapes)], {"equation": eq}, wrt=list(names))


def test_einsum_vjp_with_a_constant_weight_and_dynamic_batch():
    check_vjp("Einsum", [("a", r((2, 3, 4)), False), ("w", r((4, 5)), True)], {"equation": "btd,de->bte"},
              wrt=["a"], dynamic=(0,))


@pytest.mark.parametrize("eq,shapes", [
    ("...ij,...jk->...ik", [(2, 3, 4), (1, 4, 5)]),    # an ellipsis dim of 1 broadcast
    ("...ij,jk->...ik", [(2, 3, 4), (4, 5)]),          # one ellipsis
])
def test_einsum_vjp_broadcast_ellipsis(eq, shapes):
    check_vjp("Einsum", [(n, r(s), False) for n, s in zip("ab", shapes)], {"equation": eq}, wrt=["a", "b"])


@pytest.mark.parametrize("eq,shapes,dynamic", [
    ("ii->i", [(4, 4)], ()),                              # torch.diagonal
    ("ii", [(4, 4)], ()),                                 # a trace (implicit output: none)
    ("bii->b", [(2, 3, 3)], (0,)),                        # batched traces
    ("...ii->...i", [(2, 3, 3)], (0,)),                   # onnx's test_einsum_batch_diagonal
    ("bii,bij->bj", [(2, 3, 3), (2, 3, 4)], (0,)),        # a diagonal read by a product
    ("iij,jk->ik", [(3, 3, 4), (4, 2)], ()),
    ("ijij->ij", [(2, 3, 2, 3)], ()),                     # two letters repeated
    ("bii->bi", [(2, 3, 3)], {"a": (0, 1, 2)}),           # sizes known at run time only: EyeLike
])
def test_einsum_repeated_letter(eq, shapes, dynamic):
    """A letter repeated within an operand (a diagonal or trace) is differentiated as the same sum written with a
    new letter and an identity operand: the gradient puts g on the diagonal."""
    names = "abc"[:len(shapes)]
    check_vjp("Einsum", [(n, r(s), False) for n, s in zip(names, shapes)], {"equation": eq}, wrt=list(names),
              dynamic=dynamic)


def test_einsum_repeated_output_letter_is_refused():
    with pytest.raises(UnsupportedModelError, match="Einsum node 'node' .i->ii.: the subscripts 'ii' repeat"):
        check_vjp("Einsum", [("a", r(4), False)], {"equation": "i->ii"})


def test_einsum_letter_broadcast_from_one_is_refused():
    """"bhqd,bhkd->bhqk" with b = 1 against 2: onnxruntime broadcasts b, the VJP would not sum it back into
    the size-1 operand's gradient; a weight with the 1 (its gradient not needed) is fine."""
    model = node_model("Einsum", [("a", r((1, 2, 3, 4)), False), ("c", r((2, 2, 5, 4)), True)],
                       {"equation": "bhqd,bhkd->bhqk"})
    with pytest.raises(UnsupportedModelError, match="letter b has size 1 in one operand"):
        onnxattr.compile(model, "gradient", neuron="all")
    check_vjp("Einsum", [("a", r((2, 4, 5)), False), ("w", r((1, 5, 3)), True)], {"equation": "bij,bjk->bik"},
              wrt=["a"])


def test_einsum_letter_broadcast_known_only_at_run_time():
    """"bi,bj->bij" with a's b declared "p" and c's "q": at run time a has 1 and c 3, which onnxruntime
    broadcasts; a's gradient sums over b back to 1 (before, it came out [3, 4]). With equal sizes the same
    graph gives the plain VJP."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Einsum", ["a", "c"], ["y"], equation="bi,bj->bij")], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["p", 4]),
                           helper.make_tensor_value_info("c", TensorProto.FLOAT, ["q", 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["q", None, 2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(onnxattr.compile(model, "gradient", input="a", neuron="all").SerializeToString())
    for rows in (1, 3):
        a, c = r((rows, 4)).astype(np.float32), r((3, 2)).astype(np.float32)
        got = session.run(["relevance"], {"a": a, "c": c})[0]
        # y[b, i, j] = a[b or 0, i] c[b, j] with a ones seed: dA[., i] = sum over b (if broadcast) and j of c
        want = np.broadcast_to(c.sum(1, keepdims=True), (3, 4)).sum(0, keepdims=True) if rows == 1 else \
            np.broadcast_to(c.sum(1, keepdims=True), (3, 4))
        np.testing.assert_allclose(got, want, rtol=1e-6)
