"""Build Ultralytics YOLOv8n from its yaml (random weights, nothing downloaded) and export it to ONNX.

Run from the repository root in a venv with the CPU torch wheel and ultralytics without its deps:

    python -m venv /work/venv-yolo
    /work/venv-yolo/bin/pip install torch==2.13.0      # the CPU wheel on disk; never an unpinned torch
    /work/venv-yolo/bin/pip install ultralytics --no-deps
    /work/venv-yolo/bin/pip install onnx onnxscript numpy pyyaml pillow opencv-python-headless matplotlib \
        scipy psutil polars requests tqdm     # what ultralytics imports (its other deps would pull torchvision)
    /work/venv-yolo/bin/python tests/thirdparty/make_yolo.py

torchvision is not installed (PyPI's torchvision does not import beside this torch). ultralytics only
reads its version number at import time for the paths used here (build from yaml, ONNX export), so this
script answers that query with a placeholder; no torchvision code runs.

Writes tests/thirdparty/data/yolov8n.onnx (opset 17, dynamic batch, 640x640 input "images", output
"output0" of shape [batch, 84, 8400]: per anchor 4 box coordinates (cx, cy, w, h in pixels) and 80
class scores after sigmoid; no NMS in the graph), and yolov8n_ref.npz: a 2x3x64x64 input, the torch
output for it, and torch autograd gradients for two neurons of the flattened output.
"""

import importlib.metadata
import os
import shutil
import tempfile

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

_version = importlib.metadata.version


def _version_without_torchvision(name):
    if name == "torchvision":
        return "0.0.0"
    return _version(name)


importlib.metadata.version = _version_without_torchvision
os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
from ultralytics import YOLO  # noqa: E402


def save_reference(net):
    """torch autograd gradients of two neurons of the flattened output, on a 64x64 input: the largest
    output per sample (a box coordinate, in pixels) and the largest class score per sample."""
    import numpy as np
    from ultralytics.nn.modules import Detect

    net = net.float().eval()
    for m in net.modules():
        if isinstance(m, Detect):  # the output the exporter writes: [batch, 4 + classes, anchors]
            m.export, m.format, m.dynamic, m.shape = True, "onnx", True, None
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = net(x)
    y = y[0] if isinstance(y, (list, tuple)) else y
    flat = y.flatten(1)
    anchors = y.shape[2]
    t_max = flat.argmax(1)
    t_cls = flat[:, 4 * anchors:].argmax(1) + 4 * anchors
    out = {"x": x.detach().numpy(), "y": y.detach().numpy()}
    for name, t in (("max", t_max), ("cls", t_cls)):
        (g,) = torch.autograd.grad(flat.gather(1, t[:, None]).sum(), x, retain_graph=True)
        out[f"t_{name}"], out[f"g_{name}"] = t.numpy(), g.numpy()
    path = os.path.join(HERE, "yolov8n_ref.npz")
    np.savez_compressed(path, **out)
    print(path, os.path.getsize(path))


def main():
    torch.manual_seed(0)
    work = tempfile.mkdtemp()
    try:
        os.chdir(work)
        model = YOLO("yolov8n.yaml")  # architecture only: random weights
        path = model.export(format="onnx", opset=17, dynamic=True, simplify=False, imgsz=640, batch=1)
        dest = os.path.join(HERE, "yolov8n.onnx")
        shutil.copyfile(path, dest)
        print(dest, os.path.getsize(dest))
        save_reference(model.model)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
