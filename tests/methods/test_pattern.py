"""pattern.net and pattern.attribution: maps against a numpy implementation of the paper's formulas,
refusals (no patterns, patterns of another model or estimator), the CLI fit -> compile round trip,
and the shipped digits CNN plus a VGG-style net with BatchNorm.

Reference: iNNvestigate 1.0.9 (the last release with these analyzers) downloads as a pure-Python wheel
but requires keras==2.2.4 on a TensorFlow 1.x backend, which has no build for Python 3.11, so it
cannot run here. The reference is therefore numpy code written from the paper (Kindermans et al.
2018, eqs. for S_a and S_a+-) and checked against the facts of iNNvestigate 1.0.9's source: E[y] over
all samples in the A+- estimator, a = cov / (w^T cov), pattern (PatternNet) or pattern * weight
(PatternAttribution) in place of the kernel, ReLU gradient mask, output value as the seed.
"""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxattr
from onnxattr.canonicalize import canonicalize
from onnxattr.cli import main
from onnxattr.errors import EXIT_CODES, PatternError
from onnxattr.graph import GraphBuilder
from onnxattr.pattern import DegeneratePatternWarning
from onnxattr.pattern.layers import pattern_layers, to_kd, weight
from tests.lrp.nets import resnet_like
from tests.pattern import nets

RNG = np.random.default_rng(3)
X = (RNG.standard_normal((200, 6)) + 0.5).astype(np.float32)


def reference(p, x, kind, attribution):
    """Fit (closed form on all of x) and back-project the max logit, in float64 numpy."""
    f = {k: v.astype(np.float64) for k, v in p.items()}
    x64 = x.astype(np.float64)
    z1 = x64 @ f["w1"].T + f["b1"]
    h = np.maximum(z1, 0)
    y = h @ f["w2"] + f["b2"]
    a1 = nets.estimator(x64, z1, f["w1"], kind)            # [H, D], the layout of w1
    a2 = nets.estimator(h, y, f["w2"].T, kind).T           # [H, K], the layout of w2
    if attribution:
        a1, a2 = a1 * f["w1"], a2 * f["w2"]
    k = y.argmax(1)
    seed = y[np.arange(len(y)), k]
    g_h = a2[:, k].T * seed[:, None]
    return (g_h * (z1 > 0)) @ a1


@pytest.mark.parametrize("kind", ["relu", "linear"])
@pytest.mark.parametrize("method", ["pattern.net", "pattern.attribution"])
def test_two_layer_relu_net_matches_numpy(method, kind):
    m, p = nets.two_layer()
    an = onnxattr.create_analyzer(method, m, pattern_type=kind).fit(X, batch_size=50, progress=False)
    got = an.analyze(X[:20])
    want = reference(p, X, kind, method == "pattern.attribution")[:20]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_needs_fit_and_refuses_foreign_patterns(tmp_path):
    m, _ = nets.two_layer(seed=1)
    with pytest.raises(PatternError, match="fit"):
        onnxattr.compile(m, "pattern.net")
    an = onnxattr.create_analyzer("pattern.net", m).fit(X, progress=False)
    an.save_patterns(tmp_path / "p.npz")
    other, _ = nets.two_layer(seed=2)  # same structure, other weights
    with pytest.raises(PatternError, match="another model"):
        onnxattr.compile(other, "pattern.attribution", patterns=str(tmp_path / "p.npz"))
    with pytest.raises(PatternError, match="pattern_type"):
        onnxattr.compile(m, "pattern.net", patterns=str(tmp_path / "p.npz"), pattern_type="linear")
    loaded = onnxattr.create_analyzer("pattern.net", m).load_patterns(tmp_path / "p.npz")
    np.testing.assert_array_equal(loaded.analyze(X[:4]), an.analyze(X[:4]))


def test_cli_fit_compile_explain(tmp_path, capsys):
    m, _ = nets.two_layer()
    onnx.save(m, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", X)
    pat, out = tmp_path / "p.npz", tmp_path / "m.pa.onnx"
    assert main(["fit", str(tmp_path / "m.onnx"), "--method", "pattern.attribution", "--data",
                 str(tmp_path / "x.npy"), "--batch-size", "64", "-o", str(pat)]) == 0
    assert main(["compile", str(tmp_path / "m.onnx"), "--method", "pattern.attribution", "--patterns",
                 str(pat), "-o", str(out)]) == 0
    r = ort.InferenceSession(str(out)).run(["relevance"], {"x": X[:5]})[0]
    an = onnxattr.create_analyzer("pattern.attribution", m).fit(X, batch_size=64, progress=False)
    np.testing.assert_allclose(r, an.analyze(X[:5]), rtol=1e-6, atol=1e-6)
    assert main(["explain", str(tmp_path / "m.onnx"), "--method", "pattern.net", "--patterns", str(pat),
                 "--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.npy")]) == 0
    capsys.readouterr()
    assert main(["compile", str(tmp_path / "m.onnx"), "--method", "pattern.net", "-o",
                 str(tmp_path / "no.onnx")]) == EXIT_CODES["PatternError"] == 9
    assert "onnxattr fit" in capsys.readouterr().err
    other, _ = nets.two_layer(seed=5)
    onnx.save(other, tmp_path / "other.onnx")
    assert main(["compile", str(tmp_path / "other.onnx"), "--method", "pattern.net", "--patterns", str(pat),
                 "-o", str(tmp_path / "o.onnx")]) == 9


def test_digits_cnn():
    sample = np.load("models/digits_sample.npy")
    data = np.clip(np.repeat(sample, 40, 0) + RNG.normal(0, 0.15, (320, 1, 8, 8)), 0, 1).astype(np.float32)
    for method in ("pattern.net", "pattern.attribution"):
        an = onnxattr.create_analyzer(method, "models/digits_cnn.onnx").fit(data, batch_size=64, progress=False)
        r = an.analyze(sample)
        assert r.shape == sample.shape and np.isfinite(r).all() and np.abs(r).max() > 0


def test_vgg_style_net_with_batchnorm():
    """Conv-BN-ReLU-MaxPool ... MatMul-ReLU-MatMul: patterns belong to the BN-fused weights
    (w'^T a = 1 per output unit) and the maps are finite."""
    m = resnet_like(bias=True, batchnorm=True, residual=False, last_pool="MaxPool")
    x = RNG.standard_normal((64, 2, 8, 8)).astype(np.float32)
    an = onnxattr.create_analyzer("pattern.attribution", m).fit(x, batch_size=16, progress=False)
    patterns = an.params["patterns"]
    assert len(patterns.arrays) == 5
    canon = canonicalize(m)
    b = GraphBuilder(canon)
    for name, unit in pattern_layers(b, list(canon.graph.node), "x", "y").items():
        norms = np.einsum("kd,kd->k", to_kd(unit, weight(b, unit)), to_kd(unit, patterns.arrays[name]))
        assert np.all(np.isclose(norms, 1, atol=1e-4) | (norms == 0)), (name, norms)  # 0: dead unit
    rows = onnxattr.api.inspect(m, "pattern.attribution", patterns=patterns)
    assert [r[2] for r in rows if r[1] == "BatchNormalization"] == ["pass"]
    r = an.analyze(x[:4])
    assert r.shape == (4, 2, 8, 8) and np.isfinite(r).all() and np.abs(r).max() > 0


def test_all_zero_patterns_from_a_file_warn_when_compiled(tmp_path, capsys):
    """Patterns fitted on one sample (all zero) and saved: compiling them warns again, naming the layers,
    since the map is zero; on the command line as one warning line, exit code 0."""
    m, _ = nets.two_layer()
    with pytest.warns(DegeneratePatternWarning):
        an = onnxattr.create_analyzer("pattern.net", m).fit(X[:1], progress=False)
    an.save_patterns(tmp_path / "zero.npz")
    with pytest.warns(DegeneratePatternWarning, match=r"2 of 2 layers are all zero \('fc1', 'fc2'\).*pattern.net"):
        onnxattr.compile(m, "pattern.net", patterns=str(tmp_path / "zero.npz"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # patterns from varied data: no warning
        onnxattr.create_analyzer("pattern.net", m).fit(X, progress=False).analyze(X[:2])
    onnx.save(m, tmp_path / "m.onnx")
    capsys.readouterr()
    assert main(["compile", str(tmp_path / "m.onnx"), "-m", "pattern.attribution", "--patterns",
                 str(tmp_path / "zero.npz"), "-o", str(tmp_path / "z.onnx")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxattr: warning: ") and "pattern.attribution" in err[0], err


def test_warnings_point_at_the_callers_line():
    """onnxattr's warnings are located at the user's call, not inside the package (module filters match)."""
    m, _ = nets.two_layer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        onnxattr.create_analyzer("pattern.net", m).fit(X[:1], progress=False)
    assert [w.filename for w in caught if w.category is DegeneratePatternWarning] == [__file__]


def test_cli_fit_reads_images_a_batch_at_a_time(tmp_path, monkeypatch, capsys):
    """fit --data takes image files or a folder (with the pixel options), read batch by batch, never whole: the
    patterns are the stacked .npy's. An intermediate --input takes no images."""
    from PIL import Image

    from onnxattr.image_files import ImageFiles
    from onnxattr.pixels import load_image

    rng = np.random.default_rng(11)
    (tmp_path / "imgs").mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (9, 11), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    files = sorted(str(p) for p in (tmp_path / "imgs").iterdir())
    np.save(tmp_path / "x.npy", np.concatenate([load_image(f, ["N", 1, 8, 8]) for f in files]))
    base = ["fit", "models/digits_cnn.onnx", "-m", "pattern.attribution", "--batch-size", "4"]
    assert main(base + ["--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "want.npz")]) == 0

    def whole_read(*args, **kwargs):
        raise AssertionError("the folder was read whole")
    monkeypatch.setattr(ImageFiles, "__array__", whole_read)
    assert main(base + ["--data", str(tmp_path / "imgs"), "-o", str(tmp_path / "got.npz")]) == 0
    want, got = np.load(tmp_path / "want.npz"), np.load(tmp_path / "got.npz")
    assert sorted(got.files) == sorted(want.files) and len(want.files) > 1
    for name in want.files:
        if want[name].dtype.kind == "f":
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert main(base + ["--input", "/1/Relu_output_0", "--data", str(tmp_path / "imgs"), "-o",
                        str(tmp_path / "no.npz")]) == 2
    assert "--input /1/Relu_output_0 is not one: give its values as a .npy batch" in capsys.readouterr().err
    assert not (tmp_path / "no.npz").exists()
