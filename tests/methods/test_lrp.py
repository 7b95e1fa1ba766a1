"""onnxattr/methods/lrp.py: what the presets' builder says about the model (the presets' rules themselves are
checked in tests/lrp/ and against iNNvestigate and Zennit in test_oracles.py)."""

import warnings
from pathlib import Path

import onnx
import pytest

import onnxattr
from onnxattr.errors import OnnxAttrWarning

LOSS_MODEL = Path(__file__).resolve().parents[1] / "oracles" / "data" / "torch_ce_loss.onnx"


def test_lrp_through_a_loss_node_warns_and_names_the_way_out():
    """A model exported with its loss (torch's cross_entropy: SoftmaxCrossEntropyLoss) is explained through the
    loss by its gradient, which conserves nothing: LRP methods warn and point to --output; explaining the
    logits instead is silent."""
    for method in ("lrp.epsilon", "deep_taylor", "attn_lrp"):
        with pytest.warns(OnnxAttrWarning, match=f"{method}: relevance crosses the loss SoftmaxCrossEntropyLoss node "
                                                 ".* --output NAME"):
            onnxattr.compile(str(LOSS_MODEL), method)
    logits = next(n.input[0] for n in onnx.load(LOSS_MODEL).graph.node if n.op_type == "SoftmaxCrossEntropyLoss")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onnxattr.compile(str(LOSS_MODEL), "lrp.epsilon", output=logits)
        onnxattr.compile(str(LOSS_MODEL), "gradient")  # the gradient of a loss is what it is
