#!/usr/bin/env bash
# The CUDA checks and the CUDA benchmark, for a machine with an NVIDIA GPU whose Python has onnxruntime-gpu
# (not onnxruntime beside it), torch built for CUDA, zennit, captum and onnxattr's dependencies:
#
#     bash benchmarks/cuda.sh [LOGDIR]        # PYTHON=... to pick the interpreter (default python3)
#
# 1. tests/test_runtime_cuda.py (skipped on machines without CUDA): every method on onnxruntime's CUDA
#    provider, no appended node on the CPU, the maps equal to the CPU's; with tests/test_runtime.py.
#    PYTEST_ARGS="-n 8" runs them in 8 processes (pytest-xdist).
# 2. benchmarks/bench.py --device cuda: the fast and sampling groups on ResNet50 and VGG16, batch 1 and 8,
#    into benchmarks/results/<gpu>-cuda/ (then `python benchmarks/bench.py --report` adds their section).
# Each step's output goes to LOGDIR (default benchmarks/results); a failing step does not stop the next.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-benchmarks/results}
PY=${PYTHON:-python3}
mkdir -p "$LOG"
"$PY" -c "import onnxruntime as o, sys; p = o.get_available_providers(); print(o.__version__, p); \
sys.exit('CUDAExecutionProvider' not in p)" || { echo "this onnxruntime has no CUDA provider"; exit 2; }
status=0
"$PY" -m pytest -p no:cacheprovider -q -rs ${PYTEST_ARGS:-} tests/test_runtime_cuda.py tests/test_runtime.py 2>&1 \
    | tee "$LOG/cuda-tests.log" || status=1
for model in resnet50 vgg16; do
    for group in fast sampling; do
        "$PY" benchmarks/bench.py --device cuda --models "$model" --batch 1,8 --methods "$group" --repeats 7 2>&1 \
            | tee -a "$LOG/cuda-bench.log" || status=1
    done
done
exit $status
