"""Oracle perturbation curves from iNNvestigate 2.1.2's tools.Perturbation and tools.PerturbationAnalysis
(region perturbation, "pixel flipping"), for tests/test_evaluate.py.

How to run (from the repository root, in the TF venv that make_innvestigate.py describes; ~1 minute):

    /work/venv-inn/bin/python tests/oracles/make_innvestigate_perturbation.py

What it produces, in tests/oracles/data/:
    keras_perturb.onnx   a small Keras CNN (NHWC 10x10x3 -> 5 logits, random weights, seed 0), tf2onnx, opset 13
    keras_perturb.npz    "x" [6,10,10,3] in [0, 1], "analysis" [6,10,10,3] (a fixed random map: no ties, so
                         the region order is unique), "target" [6] (each sample's largest logit), "labels" [6]
                         (the targets, but the first two samples' moved to the next class), and per
                         configuration C (see CONFIGS):
                           "C|perturbed" [K, 6,10,10,3]: Perturbation.perturbate_on_batch with 1..K regions
                           "C|scores" [K+1, 2]: PerturbationAnalysis.compute_perturbation_analysis with the
                               Keras model compiled with the loss -logit[label] and metrics=["accuracy"] (so each
                               row is minus the mean over samples of the labels' logits, and the share of samples
                               whose largest logit is their label), steps=K, regions_per_step=1
                         "C|negated|scores": the same with the analysis negated (most relevant first of -R is
                         least relevant first of R)
                         "manifest": a JSON string, the configurations and the library versions

Only regions_per_step=1 is recorded: iNNvestigate's step k (k >= 1) replaces 1 + (k-1)·regions_per_step regions,
onnxattr's k·regions_per_step; with 1 they agree.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
NAME = "keras_perturb"
SHAPE = (10, 10, 3)
N, CLASSES, SEED = 6, 5, 0
# name -> (region_shape, perturbation function, steps): 5x5 tiles 10x10 exactly; 4x4 and 3x3 need reflect padding
CONFIGS = {
    "r5_zeros": ((5, 5), "zeros", 4),
    "r4_mean": ((4, 4), "mean", 9),
    "r3_invert": ((3, 3), "invert", 10),
    "r3_mean": ((3, 3), "mean", 16),
}


def build(tf):
    tf.keras.utils.set_random_seed(SEED)
    inp = tf.keras.Input(SHAPE, name="x")
    h = tf.keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inp)
    h = tf.keras.layers.MaxPooling2D(2)(h)
    h = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    h = tf.keras.layers.Flatten()(h)
    out = tf.keras.layers.Dense(CLASSES, name="logits")(h)
    return tf.keras.Model(inp, out)


def main():
    import onnx
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx
    from innvestigate.tools.perturbate import Perturbation, PerturbationAnalysis
    from innvestigate.utils.sequence import BatchSequence
    import innvestigate

    assert tf.keras.backend.image_data_format() == "channels_last"
    model = build(tf)
    rng = np.random.default_rng(1)
    x = rng.random((N,) + SHAPE).astype(np.float32)
    analysis = rng.standard_normal((N,) + SHAPE).astype(np.float32)
    logits = model(x, training=False).numpy()
    target = logits.argmax(1)
    assert len(set(target.tolist())) >= 2, logits
    labels = target.copy()
    labels[:2] = (labels[:2] + 1) % CLASSES  # two samples the model gets wrong from the start
    onehot = np.eye(CLASSES, dtype=np.float32)[labels]

    def minus_label_logit(y_true, y_pred):
        return -tf.reduce_sum(y_true * y_pred, axis=-1)

    model.compile(loss=minus_label_logit, metrics=["accuracy"])

    class FixedAnalysis:
        """An analyzer that returns the fixed map (the generator yields the whole batch at once)."""

        def __init__(self, a):
            self.a = a

        def analyze(self, X):
            assert len(X) == len(self.a)
            return self.a

    out = {"x": x, "analysis": analysis, "target": target.astype(np.int64), "labels": labels.astype(np.int64)}
    for cname, (region, function, steps) in CONFIGS.items():
        p = Perturbation(function, region_shape=region)
        perturbed = []
        for k in range(1, steps + 1):
            p.num_perturbed_regions = k
            perturbed.append(p.perturbate_on_batch(x, analysis))
        out[f"{cname}|perturbed"] = np.stack(perturbed).astype(np.float32)
        for suffix, a in (("", analysis), ("|negated", -analysis)):
            gen = BatchSequence([x, onehot], batch_size=N)
            pa = PerturbationAnalysis(FixedAnalysis(a), model, gen, Perturbation(function, region_shape=region),
                                      steps=steps, regions_per_step=1)
            out[f"{cname}{suffix}|scores"] = np.asarray(pa.compute_perturbation_analysis(), np.float64)
        # the first row is the unperturbed batch: minus the mean logit of the labels, and 4 of 6 right
        assert abs(out[f"{cname}|scores"][0, 0] + logits[np.arange(N), labels].mean()) < 1e-5
        assert abs(out[f"{cname}|scores"][0, 1] - 4 / 6) < 1e-6

    work = tempfile.mkdtemp()
    path = os.path.join(work, NAME + ".onnx")
    spec = (tf.TensorSpec((None,) + SHAPE, tf.float32, name="x"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13)
    proto.producer_version = tf2onnx.__version__
    for vi in (proto.graph.input[0], proto.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    err = float(np.abs(sess.run(None, {sess.get_inputs()[0].name: x})[0] - logits).max())
    assert err <= 1e-5, err
    manifest = {
        "library": f"innvestigate {innvestigate.__version__}, tensorflow {tf.__version__}",
        "configs": {k: {"region_shape": list(r), "perturbation": f, "steps": s} for k, (r, f, s) in CONFIGS.items()},
        "defaults": "reduce_function=np.mean, aggregation_function=np.mean, pad_mode='reflect', regions_per_step=1",
        "max_abs_err_onnx_vs_keras": err,
    }
    # kept inside the .npz (a unicode string, no pickle): a .json beside it would read as a method manifest
    out["manifest"] = np.array(json.dumps(manifest, indent=1))
    np.savez_compressed(os.path.join(work, NAME + ".npz"), **out)
    for fname in (NAME + ".onnx", NAME + ".npz"):
        shutil.copy(os.path.join(work, fname), os.path.join(DATA, fname))
    print("wrote", ", ".join(out), "to", DATA)


if __name__ == "__main__":
    main()
