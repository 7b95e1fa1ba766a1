"""The nine ONNX "light" zoo graphs (shipped inside the onnx package) compile for the gradient family and
the main LRP presets; the compiled graphs pass the checker, give finite maps of the input's shape and
return the original outputs bit for bit. The three biggest graphs are run for two methods only (their
LRP maps take 10-20 s each on two cores); every method still compiles and is checked for them."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxattr

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
ZOO = sorted(f for f in os.listdir(LIGHT) if f.endswith(".onnx"))
METHODS = ["gradient", "guided_backprop", "lrp.epsilon_plus_flat", "lrp.sequential_preset_a", "deep_taylor"]
HEAVY = {"light_vgg19.onnx", "light_resnet50.onnx", "light_zfnet512.onnx"}
_models = {}


def session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def load(name):
    if name not in _models:
        model = onnx.load(os.path.join(LIGHT, name))
        inits = {t.name for t in model.graph.initializer}
        inp = next(i for i in model.graph.input if i.name not in inits)
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        x = np.random.default_rng(0).random(shape).astype(np.float32)
        _models[name] = model, inp.name, x, session(model).run(None, {inp.name: x})
    return _models[name]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ZOO)
def test_zoo_graph_compiles_and_runs(name, method):
    model, x_name, x, original = load(name)
    compiled = onnxattr.compile(model, method)  # includes onnx.checker full_check
    assert [o.name for o in compiled.graph.output] == [o.name for o in model.graph.output] + ["relevance"]
    if name in HEAVY and method not in ("gradient", "lrp.epsilon_plus_flat"):
        return
    *outputs, relevance = session(compiled).run(None, {x_name: x})
    for a, b in zip(original, outputs):
        np.testing.assert_array_equal(a, b)
    assert relevance.shape == x.shape and np.isfinite(relevance).all()
    assert np.abs(relevance).max() > 0
