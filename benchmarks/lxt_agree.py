"""How closely onnxattr's attn_lrp and cp_lrp agree with LXT 2.1 on the benchmark's ViT-B/16 (one random image).

    python benchmarks/lxt_agree.py      # with the bench extra and lxt (pip install --no-deps lxt==2.1)

LXT runs in float64 on the torch model (its rules switched on by forward(x, lxt=...), tests/oracles/make_lxt.py),
onnxattr in float32 on the exported model; printed: max |ours - LXT| / max |LXT| per method.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench  # noqa: E402
import nets  # noqa: E402

import onnxattr  # noqa: E402


def main():
    bench.ensure_exported("vit_b16")
    net = nets.build("vit_b16").double()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for method, rules in (("attn_lrp", "attn"), ("cp_lrp", "cp")):
        xg = torch.from_numpy(x).double().requires_grad_(True)
        logits = net(xg, lxt=rules)
        logits.backward(torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).double())
        want = (xg * xg.grad).detach().numpy()
        compiled = onnxattr.compile(str(bench.onnx_path("vit_b16")), method)
        sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(["relevance"], {sess.get_inputs()[0].name: x})[0]
        print(f"vit_b16 {method}: max |ours - LXT| / max |LXT| = {np.abs(got - want).max() / np.abs(want).max():.2g}")


if __name__ == "__main__":
    main()
