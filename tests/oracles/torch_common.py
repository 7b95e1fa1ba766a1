"""What the oracle families share: the modes, Captum's view of a mode, the export's tensor that holds a module's
output, and the arrays stored beside the maps."""

import contextlib

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

MODES = ("max", "index", "all")


class SumOutputs(nn.Module):
    """Wraps a classifier so its single output is the sum of all logits: the gradient of that output is the
    vector-Jacobian product with a ones seed, i.e. neuron mode "all". Captum then runs unchanged (target=0),
    and its ReLU hooks still find the wrapped model's nn.ReLU modules."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).sum(dim=1, keepdim=True)


def captum_target(mode, argmax, target):
    return {"max": argmax.tolist(), "index": target.tolist(), "all": 0}[mode]


def captum_model(model, mode):
    return SumOutputs(model).eval() if mode == "all" else model


def captum_call(model, mode, argmax, target):
    """(the model Captum is given, its target, the manifest's note on the seed) for one mode."""
    note = "captum target" if mode != "all" else "captum on SumOutputs(model) with target=0 (ones seed)"
    return captum_model(model, mode), captum_target(mode, argmax, target), note


ONNX_FILE = {}  # "path": the export of the model being made (set by prepare), for families that name its tensors


def onnx_tensor_of(value):
    """The name of the float tensor of the exported model (ONNX_FILE["path"]) that holds ``value`` (a module's
    output at the stored x), a Relu output first: the name onnxattr's keep= takes."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(ONNX_FILE["path"]))
    outputs = {o.name for o in model.graph.output}
    floats = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    relu = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    names = [o for o in relu + [o for n in model.graph.node for o in n.output if o not in relu] if o in floats]
    for name in names:
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    found = dict(zip([o.name for o in sess.get_outputs()],
                     sess.run(None, {sess.get_inputs()[0].name: ONNX_FILE["x"]})))
    want = value.detach().double().numpy()
    for name in names:
        got = found.get(name)
        # within 1e-4 of the largest value (Zennit's SequentialMergeBatchNorm leaves x / sqrt(1 + eps): ~1e-5)
        if got is not None and got.shape == want.shape and np.abs(got - want).max() <= 1e-4 * np.abs(want).max():
            return name
    near = sorted((float(np.abs(found[n] - want).max() / np.abs(want).max()), n) for n in names
                  if n in found and found[n].shape == want.shape)
    raise AssertionError(f"no tensor of the export holds the module's output {want.shape}; nearest: {near[:3]}")


AUX = {}  # arrays a map's params refer to ("@mask:patches"), stored beside the maps of the model being made


def middle_relu(model, x, context=None):
    """(name, module) of the middle nn.ReLU module among those the forward calls once (within ``context``, a Zennit
    attributor whose canonizers change the calls)."""
    calls = []
    with context or contextlib.nullcontext():
        handles = [m.register_forward_hook(lambda mod, i, o, n=n: calls.append(n))
                   for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
        with torch.no_grad():
            model(x)
        for h in handles:
            h.remove()
    once = [n for n in dict.fromkeys(calls) if calls.count(n) == 1]
    name = once[len(once) // 2]
    return name, model.get_submodule(name)


def _module_output(model, layer, x):
    """layer's output in model(x)."""
    seen = []
    handle = layer.register_forward_hook(lambda mod, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]
