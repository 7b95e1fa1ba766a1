"""Fuzzing the command line: damaged model files, damaged data files and random argument lists.

Whatever it is given, the CLI must end with exit code 0 or one of the documented codes
(onnxattr/errors.py EXIT_CODES, README "Exit codes"), and when it fails print exactly one line
``onnxattr: error: ...`` on stderr, with no Python traceback, no hang, and no output file (or temporary
file) left behind. Every case comes from a fixed seed, so a failure reproduces.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxattr.cli import main
from onnxattr.errors import EXIT_CODES
from tests.models import mlp

ALLOWED = {0, *EXIT_CODES.values()}
TIME_LIMIT = 60  # seconds per run; any case here takes well under one


def conv_model():
    """x[N,2,6,6] -> Conv -> Relu -> MaxPool -> Flatten -> Gemm -> Softmax: more op kinds to damage."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W", [3, 2, 3, 3]), ("B", [3]), ("G", [4, 27]), ("C", [4]))]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], pads=[1, 1, 0, 0], name="pool"),
             helper.make_node("Flatten", ["m"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "G", "C"], ["z"], transB=1, name="fc"),
             helper.make_node("Softmax", ["z"], ["p"], name="softmax")]
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    out = {"mlp": d / "mlp.onnx", "conv": d / "conv.onnx", "x_mlp": d / "x_mlp.npy", "x_conv": d / "x_conv.npy"}
    onnx.save(mlp()[0], out["mlp"])
    onnx.save(conv_model(), out["conv"])
    rng = np.random.default_rng(0)
    np.save(out["x_mlp"], rng.standard_normal((2, 6)).astype(np.float32))
    np.save(out["x_conv"], rng.standard_normal((2, 2, 6, 6)).astype(np.float32))
    return out


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def run_main(argv):
    """main(argv) in this process: (exit code, stdout, stderr). A hang raises after TIME_LIMIT s."""
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:  # only --help / -h may exit this way
                code = e.code if isinstance(e.code, int) else 1
                assert code == 0, f"argparse exited with {e.code} for {argv}"
    except _Timeout:
        pytest.fail(f"no answer within {TIME_LIMIT} s for {argv}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, out.getvalue(), err.getvalue()


def assert_clean(code, stderr, argv):
    """A documented exit code; on failure one line 'onnxattr: error: ...' and no traceback."""
    assert code in ALLOWED, f"exit code {code} for {argv}: {stderr}"
    assert "Traceback" not in stderr, stderr
    if code != 0:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("onnxattr: error: "), f"{argv}: {stderr!r}"
        assert len(lines[0]) > len("onnxattr: error: ") + 5, stderr


def assert_nothing_left(folder, out):
    assert not out.exists(), f"{out} written by a failed run"
    assert not [f for f in os.listdir(folder) if f.startswith(".onnxattr-")], "temporary file left behind"


def compile_bytes(tmp_path, data: bytes, tag: str):
    """Write ``data`` as a model file, compile it with the CLI, check the outcome is clean."""
    model = tmp_path / f"{tag}.onnx"
    model.write_bytes(data)
    out = tmp_path / f"{tag}.out.onnx"
    argv = ["compile", model, "--method", "gradient", "-o", out]
    code, _, err = run_main(argv)
    assert_clean(code, err, argv)
    if code == 0:
        onnx.checker.check_model(onnx.load(out))
        out.unlink()
    else:
        assert_nothing_left(tmp_path, out)
    assert model.read_bytes() == data  # the input is never touched
    return code


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_byte_flips(tmp_path, files, name):
    data = files[name].read_bytes()
    rng = np.random.default_rng(1234)
    codes = []
    for case in range(60):
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(len(buf)))
            buf[pos] ^= 1 << int(rng.integers(8)) if case % 2 else int(rng.integers(1, 256))
        codes.append(compile_bytes(tmp_path, bytes(buf), f"{name}_flip{case}"))
    # the damage reaches more than one stage: some files still compile, some are refused
    assert len(set(codes)) >= 2, codes


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_truncated_files(tmp_path, files, name):
    data = files[name].read_bytes()
    cuts = sorted({0, 1, 2, len(data) - 1, *np.linspace(3, len(data) - 2, 25).astype(int).tolist()})
    for cut in cuts:
        code = compile_bytes(tmp_path, data[:cut], f"{name}_cut{cut}")
        assert code != 0, f"a model cut to {cut} of {len(data)} bytes compiled"


def test_empty_and_random_bytes(tmp_path):
    rng = np.random.default_rng(99)
    blobs = [b"", b"\x00", b"\n", b"\x08\x07", b"ONNX", b"\xff" * 64, b"\x08\x08\x12\x00\x3a\x00"]
    blobs += [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(1, 4000, 40)]
    for i, blob in enumerate(blobs):
        code = compile_bytes(tmp_path, blob, f"random{i}")
        assert code == EXIT_CODES["ModelFileError"] or code == EXIT_CODES["InvalidModelError"], (blob[:20], code)


def test_damaged_data_files(tmp_path, files):
    """explain with .npy files that are cut, flipped, of the wrong shape or dtype, or not arrays."""
    good = files["x_mlp"].read_bytes()
    rng = np.random.default_rng(7)
    blobs = [good[:n] for n in (0, 5, 60, len(good) - 3)]
    for _ in range(12):
        buf = bytearray(good)
        for _ in range(3):
            buf[int(rng.integers(len(buf)))] = int(rng.integers(256))
        blobs.append(bytes(buf))
    arrays = [np.ones((2, 5), np.float32), np.ones((6,), np.float32), np.array(["a", "b"]),
              np.ones((2, 6), complex), np.ones((0, 6), np.float32), np.ones((2, 6, 1), np.float32)]
    for i, arr in enumerate(arrays):
        np.save(tmp_path / f"a{i}.npy", arr)
    paths = [tmp_path / f"a{i}.npy" for i in range(len(arrays))]
    for i, blob in enumerate(blobs):
        (tmp_path / f"d{i}.npy").write_bytes(blob)
        paths.append(tmp_path / f"d{i}.npy")
    for path in paths:
        out = tmp_path / "r.npy"
        argv = ["explain", files["mlp"], "--method", "gradient", "--data", path, "-o", out]
        code, _, err = run_main(argv)
        assert_clean(code, err, argv)
        if code != 0:
            assert_nothing_left(tmp_path, out)
        out.unlink(missing_ok=True)


def _argument_pools(files, tmp_path):
    """Values each option may take in a generated command line: mostly plausible, some wrong."""
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00junk")
    (tmp_path / "x.txt").write_text("1 2 3")
    models = [files["mlp"], files["conv"], junk, tmp_path / "missing.onnx", tmp_path, files["x_mlp"]]
    return {
        "command": ["compile"] * 4 + ["explain"] * 4 + ["inspect", "methods", "help", "--help", ""],
        "model": models,
        "--method": ["gradient", "input_t_gradient", "integrated_gradients", "smoothgrad", "deconvnet",
                     "guided_backprop", "lrp.z", "lrp.epsilon", "input", "random", "gradiant", "lrp", ""],
        "--set": ["steps=2", "augment_by_n=2", "noise_scale=0.1", "steps=0", "steps=-1", "steps=two",
                  "postprocess=abs", "postprocess=cube", "epsilon=1e-3", "nope=1", "=", "steps", "steps=2=3"],
        "--neuron": ["max", "index", "all", "sideways"],
        "--input": ["x", "p", "nope", ""],
        "--output": ["p", "z", "h2", "nope", ""],
        "--data": [files["x_mlp"], files["x_conv"], tmp_path / "x.txt", tmp_path / "missing.npy", junk],
        "--target": ["0", "1,0", "3", "-1", "99", "a", "0,1,2", ""],
        "-o": [tmp_path / "o.onnx", tmp_path / "r.npy", tmp_path / "no_dir" / "o.onnx", tmp_path, "MODEL"],
        "--heatmap": [tmp_path / "h.png", files["x_mlp"]],
        "--device": ["cpu", "gpu"],
        "noise": ["--bogus", "-", "--", "-x", "\u00e9\u4e2d", "a" * 300, "--set", "-o", "3"],
    }


def _command_line(rng, pools):
    """A command line: a command, a model and options with values, then maybe one token damaged."""
    draw = lambda key: pools[key][int(rng.integers(len(pools[key])))]  # noqa: E731
    argv = [draw("command"), draw("model")]
    options = ["--method", "--set", "--input", "--output"]
    if argv[0] != "inspect":
        options += ["--neuron", "-o"]
    if argv[0] == "explain":
        options += ["--data", "--target", "--heatmap", "--device"]
    for opt in options:
        if rng.random() < {"--method": 0.9, "-o": 0.8, "--data": 0.9}.get(opt, 0.25):
            argv += [opt, draw(opt)]
    argv = [argv[1] if a == "MODEL" else a for a in argv]  # -o naming the input itself
    damage = rng.random()
    if damage < 0.1:
        del argv[int(rng.integers(len(argv)))]
    elif damage < 0.2:
        argv.insert(int(rng.integers(len(argv) + 1)), draw("noise"))
    elif damage < 0.25:
        argv = [argv[int(i)] for i in rng.permutation(len(argv))]
    return argv


def test_random_argument_lists(tmp_path, files):
    pools = _argument_pools(files, tmp_path)
    before = {k: files[k].read_bytes() for k in files}
    rng = np.random.default_rng(2024)
    codes = []
    for _ in range(250):
        argv = _command_line(rng, pools)
        code, _, err = run_main(argv)
        assert_clean(code, err, argv)
        codes.append(code)
        assert not [f for f in os.listdir(tmp_path) if f.startswith(".onnxattr-")], f"temporary file left by {argv}"
        for written in ("o.onnx", "r.npy", "h.png"):
            (tmp_path / written).unlink(missing_ok=True)
    assert {k: files[k].read_bytes() for k in files} == before  # inputs never overwritten
    # the generated lines get past argparse: successes and several kinds of refusal
    assert 0 in codes and len(set(codes)) >= 5, sorted(set(codes))


def run_cli(*args, timeout=TIME_LIMIT):
    return subprocess.run([sys.executable, "-m", "onnxattr.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("case", range(4))
def test_real_processes(tmp_path, files, case):
    """A few runs as real processes: exit status, stderr and no traceback as a user sees them."""
    data = bytearray(files["conv"].read_bytes())
    rng = np.random.default_rng(case)
    if case == 0:
        args = []
    elif case == 1:
        args = ["compile", files["conv"], "--neuron", "sideways", "-m", "gradient", "-o", tmp_path / "o.onnx"]
    else:
        for _ in range(4 * case):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        (tmp_path / "bad.onnx").write_bytes(bytes(data[: len(data) - 7 * (case - 2)]))
        args = ["compile", tmp_path / "bad.onnx", "-m", "gradient", "-o", tmp_path / "o.onnx"]
    res = run_cli(*args)
    assert_clean(res.returncode, res.stderr, args)
    if case < 2:
        assert res.returncode == EXIT_CODES["UsageError"]
