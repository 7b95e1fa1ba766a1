"""Peak memory of pattern fitting against the number of samples: it should not grow.

    python benchmarks/pattern_memory.py [--sizes 5000 50000] [--batch-size 256]

Each size runs in a fresh process that fits pattern.attribution on the shipped digits CNN
(models/digits_cnn.onnx, input [N, 1, 8, 8]) with data resampled from models/digits_sample.npy plus
Gaussian noise, and reports the process's peak RSS (ru_maxrss) and time, for two ways to pass the data:
``stream``, an iterable of batches made on the fly (nothing but one batch in memory), and ``npy``, an
.npy file read with mmap_mode="r" as ``onnxattr fit --data`` does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import numpy as np
import onnxattr
n, batch, mode, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
sample = np.load("models/digits_sample.npy")

def resampled(count, seed):
    rng = np.random.default_rng(seed)
    picks = sample[rng.integers(0, len(sample), count)]
    return np.clip(picks + rng.normal(0, 0.15, picks.shape), 0, 1).astype(np.float32)

if mode == "stream":
    data = (resampled(min(batch, n - i), i) for i in range(0, n, batch))
else:
    data = np.load(path, mmap_mode="r")
t = time.perf_counter()
an = onnxattr.create_analyzer("pattern.attribution", "models/digits_cnn.onnx")
an.fit(data, batch_size=batch, progress=False)
seconds = time.perf_counter() - t
assert an.params["patterns"].samples == n
print(json.dumps({"n": n, "mode": mode, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": round(seconds, 2)}))
"""


def run(n: int, batch: int, mode: str, path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(batch), mode, path], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    import numpy as np

    sample = np.load(ROOT / "models/digits_sample.npy")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = str(Path(tmp) / f"x{n}.npy")
            rng = np.random.default_rng(n)
            picks = sample[rng.integers(0, len(sample), n)]
            np.save(path, np.clip(picks + rng.normal(0, 0.15, picks.shape), 0, 1).astype(np.float32))
            for mode in ("stream", "npy"):
                r = run(n, args.batch_size, mode, path)
                print(f"{r['n']:>7} samples  {mode:6}  peak RSS {r['peak_rss_mib']:7.1f} MiB  {r['seconds']:6.2f} s")


if __name__ == "__main__":
    main()
