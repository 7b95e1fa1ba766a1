"""onnxattr/lrp/gates.py: which operand of a product of two activations is a gate the other is computed from,
and which subtraction is a norm's centring, read off small graphs."""

import pytest

from onnxattr.lrp import gates
from tests.lrp.nets import gated_net, layernorm_net, swish_net


def parts(model):
    """(producer, live, nodes by name) of a graph explained from x: every node output varies with x."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    return producer, {"x"} | set(producer), {n.name: n for n in nodes}


@pytest.mark.parametrize("x_first", [True, False])
def test_silu_written_out_is_an_element_wise_gate_in_either_order(x_first):
    producer, live, named = parts(swish_net(x_first))
    keep, branch = gates.gate_branch(producer, live, "x", named["silu"], norms=False)
    assert named["silu"].input[keep] == "h" and [n.op_type for n in branch] == ["Sigmoid"]


@pytest.mark.parametrize("gate_first", [True, False])
def test_a_gate_through_a_pool_and_a_layer_is_none(gate_first):
    """A squeeze-excitation's sigmoid(mean(a) W) mixes features: neither operand is computed from the other
    element-wise, nor as a norm."""
    producer, live, named = parts(gated_net(gate_first))
    for norms in (False, True):
        assert gates.gate_branch(producer, live, "x", named["gate"], norms=norms) is None


def test_layernorm_written_out_divides_by_a_norm_not_an_element_wise_gate():
    producer, live, named = parts(layernorm_net("torch"))
    assert gates.gate_branch(producer, live, "x", named["normalize"], norms=False) is None
    keep, branch = gates.gate_branch(producer, live, "x", named["normalize"], norms=True)
    assert keep == 0 and {n.name for n in branch} == {"std", "add_eps", "var", "square"}


@pytest.mark.parametrize("form,extra", [("torch", []), ("tf", []), ("tf_beta", ["shift"]), ("tf_neg", ["negate"])])
def test_centring_is_found_in_every_spelling_and_nowhere_else(form, extra):
    """The centrings of a LayerNorm written out, with the nodes that belong to them: the mean's ReduceMean (and
    its Reshape), and on tf2onnx's way the shift beta - m s or the Neg; the variance's own centring too."""
    producer, live, named = parts(layernorm_net(form))
    found = {name for name, n in named.items() if gates.centring_parts(producer, live, n) is not None}
    assert found == ({"centre"} if form == "torch" else {"centre", "centre_var"}), found
    inside = gates.centring_parts(producer, live, named["centre"])
    assert inside[0].name == "mean" and [n.name for n in inside[1:] if n.op_type not in ("Reshape", "Mul")] == extra
    assert sorted(n.input[0] for n in inside if n.op_type == "Mul") == ([] if form == "torch" else ["h", "m"])
    producer, live, named = parts(gated_net(True))
    assert not any(gates.centring_parts(producer, live, n) is not None for n in named.values())
