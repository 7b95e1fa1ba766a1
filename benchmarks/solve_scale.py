"""The cost of KernelSHAP's in-graph fit (onnxattr/methods/least_squares.psd_solve) against the system's order,
next to numpy's LAPACK solve of the same system.

    python benchmarks/solve_scale.py                  # orders 256, 1024, 2048, 4096 (the largest kernel_shap allows)
    python benchmarks/solve_scale.py --orders 64,512 --threads 1

Each system is A A' + I for a Gaussian A (float64), with one right-hand side; the time is the min of
``--repeats`` runs of a warm session, and the residual max |K u - r| is printed to show the solve is exact.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxattr.graph import GraphBuilder  # noqa: E402
from onnxattr.methods.least_squares import psd_solve  # noqa: E402


def solver_session(order: int, threads: int) -> ort.InferenceSession:
    graph = helper.make_graph([], "solve", [helper.make_tensor_value_info("k", TensorProto.DOUBLE, [1, order, order]),
                                            helper.make_tensor_value_info("r", TensorProto.DOUBLE, [1, order, 1])], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    b = GraphBuilder(model)
    out = psd_solve(b, "k", "r", order)
    model.graph.node.extend(b.nodes)
    b.write_initializers(model.graph.initializer)
    model.graph.output.extend([helper.make_tensor_value_info(out, TensorProto.DOUBLE, None)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orders", default="256,1024,2048,4096")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    for order in (int(v) for v in a.orders.split(",")):
        session = solver_session(order, a.threads)
        m = np.random.default_rng(0).standard_normal((order, order))
        k, r = m @ m.T + np.eye(order), np.ones((order, 1))
        feed = {"k": k[None], "r": r[None]}
        u = session.run(None, feed)[0][0]  # warm-up
        ours, theirs = [], []
        for _ in range(a.repeats):
            start = time.perf_counter()
            u = session.run(None, feed)[0][0]
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            np.linalg.solve(k, r)
            theirs.append(time.perf_counter() - start)
        print(f"order {order:5d}: onnxattr {min(ours):8.3f} s   numpy.linalg.solve {min(theirs):8.4f} s   "
              f"max |K u - r| {np.abs(k @ u - r).max():.1e}")


if __name__ == "__main__":
    main()
