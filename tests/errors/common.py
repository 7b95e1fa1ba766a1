"""Helpers of the error catalogue: a CLI run that must fail with one line, small models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxattr.cli import main
from onnxattr.errors import EXIT_CODES

vi = helper.make_tensor_value_info
ROOT = Path(__file__).resolve().parents[2]


def make_model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def fails(capsys, error: str, *args) -> str:
    """Run the CLI; assert exit code of ``error`` and one line on stderr; return that line."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxattr: error: "), err
    assert "Traceback" not in err
    assert code == EXIT_CODES[error], (code, err)
    return lines[0]


def no_temporaries(folder):
    return not [f for f in os.listdir(folder) if f.startswith(".onnxattr-")]


def save(tmp_path, model, name):
    p = tmp_path / name
    p.write_bytes(model.SerializeToString())
    return p


def token_model():
    """ids int64 [N, 5] -> Gather (embedding) -> mean over tokens -> MatMul: logits [N, 3]."""
    rng = np.random.default_rng(0)
    emb, w = rng.standard_normal((10, 4)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"], name="embed"),
             helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0, name="pool"),
             helper.make_node("MatMul", ["pooled", "W"], ["logits"], name="head")]
    m = make_model(nodes, [vi("ids", TensorProto.INT64, ["N", 5])], [vi("logits", TensorProto.FLOAT, ["N", 3])],
                   [numpy_helper.from_array(emb, "E"), numpy_helper.from_array(w, "W")])
    return m, w
