"""The cost and accuracy of KernelSHAP's in-graph fit (onnxattr/methods/least_squares.weighted_least_squares, CGLS
in float64) on KernelSHAP designs of S coalitions of G groups, against numpy's SVD least squares (lstsq).

    python benchmarks/solve_scale.py                          # S x G from 25 x 16 to 2000 x 1000
    python benchmarks/solve_scale.py --sizes 700x784,100x150 --threads 1

Each design is drawn as Captum's KernelShap draws it (the full and the empty coalition with weight 1e6, then
k ~ (G - 1) / (k (G - k)) groups, every k-subset alike), with one target row; the time is the min of
``--repeats`` runs of a warm session, the error max |ours - lstsq| / max |lstsq|.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "oracles")]

from onnxattr.graph import GraphBuilder  # noqa: E402
from onnxattr.methods.kernel_shap import shapley_kernel_weights  # noqa: E402
from onnxattr.methods.least_squares import weighted_least_squares  # noqa: E402
from permutations import kernel_shap_coalitions  # noqa: E402  (tests/oracles: Captum's draws, in numpy)


def design(samples: int, groups: int, rng) -> tuple[np.ndarray, np.ndarray]:
    z = kernel_shap_coalitions(groups, samples, rng).astype(np.float64)
    return z, shapley_kernel_weights(z)


def fit_session(samples: int, groups: int, threads: int) -> ort.InferenceSession:
    inputs = [helper.make_tensor_value_info("z", TensorProto.DOUBLE, [samples, groups]),
              helper.make_tensor_value_info("w", TensorProto.DOUBLE, [1, samples]),
              helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, samples])]
    model = helper.make_model(helper.make_graph([], "fit", inputs, []), opset_imports=[helper.make_opsetid("", 17)])
    b = GraphBuilder(model)
    out = weighted_least_squares(b, "z", "w", "y", groups, samples)
    model.graph.node.extend(b.nodes)
    b.write_initializers(model.graph.initializer)
    model.graph.output.extend([helper.make_tensor_value_info(out, TensorProto.DOUBLE, None)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="25x16,200x50,1000x100,100x150,700x784,2000x1000")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    for size in a.sizes.split(","):
        samples, groups = (int(v) for v in size.split("x"))
        z, w = design(samples, groups, rng)
        y = z @ rng.standard_normal(groups) + 0.3 * np.tanh(z @ rng.standard_normal(groups))
        session = fit_session(samples, groups, a.threads)
        feed = {"z": z, "w": w[None], "y": y[None]}
        session.run(None, feed)  # warm-up
        times = []
        for _ in range(a.repeats):
            start = time.perf_counter()
            got = session.run(None, feed)[0][0]
            times.append(time.perf_counter() - start)
        zc = z - w @ z / w.sum()
        start = time.perf_counter()
        want = np.linalg.lstsq(zc * np.sqrt(w)[:, None], (y - w @ y / w.sum()) * np.sqrt(w), rcond=None)[0]
        numpy_time = time.perf_counter() - start
        print(f"S {samples:5d} x G {groups:5d}: onnxattr {min(times):7.3f} s   numpy lstsq {numpy_time:7.3f} s   "
              f"error {np.abs(got - want).max() / np.abs(want).max():.1e}")


if __name__ == "__main__":
    main()
