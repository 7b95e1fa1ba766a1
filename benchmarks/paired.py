"""Compiled explanation graphs against the forward of their model, onnxruntime only, paired by round.

    python benchmarks/paired.py MODEL.onnx COMPILED.onnx [COMPILED2.onnx ...] [--rounds 12] [--batch 1]

Each round runs the forward and every compiled graph once (0.1 s apart), on one input of the model's
shape (dynamic dims: --batch for the first, 224 for the others). Printed per graph: min and median wall
time, and the median over rounds of (graph time / forward time in the same round), the figure that moves
least when a shared machine's speed drifts. This is how two versions of a graph were compared for
benchmarks/results/NOTES.md (compile both, list both); bench.py makes the committed tables.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort


def session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("compiled", nargs="+")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    a = ap.parse_args(argv)
    paths = [a.model] + a.compiled
    sessions = [session(p, a.threads) for p in paths]
    first = sessions[0].get_inputs()[0]
    shape = [d if isinstance(d, int) else (a.batch if i == 0 else 224) for i, d in enumerate(first.shape)]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feeds = []
    for p, s in zip(paths, sessions):
        feed = {s.get_inputs()[0].name: x}
        for extra in s.get_inputs()[1:]:
            if extra.name != "target":
                ap.error(f"{p}: input '{extra.name}' besides the explained one; only a `target` can be fed here")
            feed["target"] = np.zeros(shape[0], np.int64)  # --neuron index: explain output 0 of each sample
        feeds.append(feed)
    times = [[] for _ in paths]
    for r in range(a.rounds + 1):  # round 0 warms up
        for i, s in enumerate(sessions):
            time.sleep(0.1)
            t = time.perf_counter()
            s.run(None, feeds[i])
            if r:
                times[i].append(time.perf_counter() - t)
    fwd = times[0]
    for p, ts in zip(paths, times):
        paired = statistics.median(t / f for t, f in zip(ts, fwd))
        print(f"{p}: min {min(ts) * 1e3:.0f} ms, median {statistics.median(ts) * 1e3:.0f} ms, "
              f"x forward paired {paired:.2f}")


if __name__ == "__main__":
    main()
