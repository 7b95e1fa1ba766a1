"""Compile time against graph size: a synthetic residual MLP of n nodes, compiled for several methods.

    python benchmarks/compile_scale.py                 # 2,500 .. 20,000 nodes
    python benchmarks/compile_scale.py --nodes 20000 --methods gradient,lrp.epsilon
    python benchmarks/compile_scale.py --zoo light_resnet50,light_densenet121   # the onnx package's graphs

Each block is MatMul -> Add(bias) -> Relu -> Add(residual): 4 nodes, widths of 8 so that the weights
are tiny and the time is the compiler's own. A linear compiler keeps the time per node flat as n grows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def residual_mlp(n_nodes: int, width: int = 8, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    h = "x"
    for i in range(max(1, n_nodes // 4)):
        w, bias = f"w{i}", f"b{i}"
        inits += [numpy_helper.from_array((rng.standard_normal((width, width)) / width).astype(np.float32), w),
                  numpy_helper.from_array(rng.standard_normal(width).astype(np.float32) * 0.1, bias)]
        nodes += [helper.make_node("MatMul", [h, w], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"m{i}", bias], [f"a{i}"], name=f"add{i}"),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"),
                  helper.make_node("Add", [f"r{i}", h], [f"h{i}"], name=f"res{i}")]
        h = f"h{i}"
    graph = helper.make_graph(nodes, "residual_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["batch", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="2500,5000,10000,20000")
    ap.add_argument("--methods", help="default: gradient,lrp.epsilon,integrated_gradients; with --zoo also "
                    "lrp.epsilon_plus_flat,deep_taylor")
    ap.add_argument("--zoo", help="names of the onnx package's light zoo graphs to time instead (min of 3)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    from onnxattr.assemble import compile_model

    if a.zoo:
        light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
        methods = a.methods or "gradient,lrp.epsilon,lrp.epsilon_plus_flat,deep_taylor,integrated_gradients"
        for name in a.zoo.split(","):
            model = onnx.load(str(light / f"{name}.onnx"))
            for method in methods.split(","):
                times = []
                for _ in range(a.repeats):
                    t = time.perf_counter()
                    compile_model(model, method)
                    times.append(time.perf_counter() - t)
                print(f"{name:20} {method:24} min {min(times):.2f} s", flush=True)
        return
    print(f"{'nodes':>7} {'method':24} {'compile s':>10} {'us/node':>8} {'out nodes':>9}")
    for n in (int(v) for v in a.nodes.split(",")):
        model = residual_mlp(n)
        for method in (a.methods or "gradient,lrp.epsilon,integrated_gradients").split(","):
            t = time.perf_counter()
            out = compile_model(model, method)
            s = time.perf_counter() - t
            print(f"{len(model.graph.node):7d} {method:24} {s:10.2f} {s / len(model.graph.node) * 1e6:8.0f} "
                  f"{len(out.graph.node):9d}", flush=True)


if __name__ == "__main__":
    main()
