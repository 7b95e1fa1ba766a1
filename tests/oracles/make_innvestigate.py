"""Oracle relevance maps from the real iNNvestigate 2.1.2, for onnxattr's method tests.

How to run (from the repository root, in the separate TF venv; ~5-10 minutes on 2 CPU cores):

    python3.11 -m venv /work/venv-inn
    /work/venv-inn/bin/pip install tensorflow==2.14.1 innvestigate==2.1.2 numpy==1.26.4 \
        tf2onnx==1.17.0 onnx==1.16.2 onnxruntime==1.18.1
    /work/venv-inn/bin/python tests/oracles/make_innvestigate.py

What it produces, in tests/oracles/data/:
    keras_mlp.onnx, keras_cnn.onnx, keras_resnet.onnx   tf2onnx exports, opset 13, dynamic batch
    keras_cnn_op9.onnx                                   the same CNN at opset 9 (maps = keras_cnn's)
    keras_se_xfirst.onnx                                 keras_se with Multiply([x, gate]) (maps = keras_se's)
    <model>.npz    keys "x" [4,...] float32 in [0,1], "target" int64 [4], "logits" float32 [4,5],
                   and one float32 map of x's shape per entry "<method>|<mode>|<tag>"
    <model>.json   manifest: entries (method, iNNvestigate kwargs, mode, statistical), errors, notes

Models are small Keras models (NHWC, no BatchNorm, no softmax, final Dense "logits") trained for a few
epochs on synthetic data with fixed seeds so that different inputs get different argmax classes.

Stages (each in its own process, because tf2onnx export needs eager mode and iNNvestigate needs
tf.compat.v1.disable_eager_execution()):
    build   DIR          eager: build + train the models, save .h5 to DIR, export ONNX, check logits with ORT
    analyze DIR MODEL    graph mode: run every analyzer in modes max/index/all, write DIR/MODEL.npz + .json
    check   DIR          graph mode: numpy re-derivations of a few rules on keras_mlp (verifies the notes)
Without arguments the script runs all stages in a temporary directory and copies the results to data/.

This file holds the analyze stage (the analyzers and how each is called) and the driver; beside it lie
keras_nets.py (the models, the build stage, the constants the stages share), innvestigate_notes.py (the
manifests' notes) and innvestigate_check.py (the check stage).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

import numpy as np

from innvestigate_check import stage_check  # (beside this script, on the path when it runs)
from innvestigate_notes import MODEL_NOTES, NOTES, not_comparable
from keras_nets import (
    CONSERVING, GRADIENT_ONLY, LIBRARY, MODELS, MODES, SEED, SOFTMAX, _tf_setup, inputs_for, stage_build, targets_for)

HERE = os.path.dirname(os.path.abspath(__file__))
# other exports of a model, checked against its maps: keras_cnn at opset 9, keras_se with Multiply([x, gate])
ALSO_VALID_FOR = {"keras_cnn": ["keras_cnn_op9.onnx"], "keras_se": ["keras_se_xfirst.onnx"]}
DATA = os.path.join(HERE, "data")


def _env():
    env = dict(os.environ)
    env.update({"PYTHONHASHSEED": "0", "TF_DETERMINISTIC_OPS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    return env


# ------------------------------------------------------------------------------------------ analyze
GRADIENT_FAMILY = ("gradient", "input_t_gradient", "deconvnet", "guided_backprop", "integrated_gradients",
                   "smoothgrad")


def analyzer_table(name=None):
    """(method, tag, kwargs, statistical, how) — `how` is None for create_analyzer(method, **kwargs)."""
    if name in GRADIENT_ONLY:
        return [row for row in analyzer_table() if row[0] in GRADIENT_FAMILY]
    t = []
    t += [("gradient", "default", {"postprocess": None}, False, None),
          ("gradient", "abs", {"postprocess": "abs"}, False, None),
          ("gradient", "square", {"postprocess": "square"}, False, None),
          ("input_t_gradient", "default", {}, False, None),
          ("integrated_gradients", "default", {"steps": 64, "reference_inputs": 0}, False, None),
          ("deconvnet", "default", {}, False, None),
          ("guided_backprop", "default", {}, False, None),
          ("smoothgrad", "default", {"augment_by_n": 64}, True, None),
          ("lrp.z", "default", {}, False, None),
          ("lrp.z_IB", "default", {"rule": "Z", "bias": False}, False, "z_ib"),
          ("lrp.epsilon", "default", {}, False, None),
          ("lrp.epsilon", "eps0.1", {"epsilon": 0.1}, False, None),
          ("lrp.epsilon_IB", "default", {"epsilon": 1e-7, "bias": False}, False, "eps_ib"),
          ("lrp.w_square", "default", {}, False, None),
          ("lrp.flat", "default", {}, False, None),
          ("lrp.alpha_beta", "a3b2", {"alpha": 3, "beta": 2}, False, None),
          ("lrp.alpha_2_beta_1", "default", {}, False, None),
          ("lrp.alpha_2_beta_1_IB", "default", {}, False, None),
          ("lrp.alpha_1_beta_0", "default", {}, False, None),
          ("lrp.alpha_1_beta_0_IB", "default", {}, False, None),
          ("lrp.z_plus", "default", {}, False, None),
          ("lrp.z_plus_fast", "default", {}, False, None),
          ("lrp.sequential_preset_a", "default", {}, False, None),
          ("lrp.sequential_preset_b", "default", {}, False, None),
          ("lrp.sequential_preset_a_flat", "default", {}, False, None),
          ("lrp.sequential_preset_b_flat", "default", {}, False, None),
          ("lrp.sequential_preset_b_flat_until_idx", "idx1", {"until_layer_idx": 1}, False, None),
          ("lrp.sequential_preset_b_flat_until_idx", "idx2", {"until_layer_idx": 2}, False, None),
          ("lrp.sequential_preset_b_flat_until_idx", "idx3", {"until_layer_idx": 3}, False, None),
          ("deep_taylor", "default", {}, False, None),
          ("deep_taylor.bounded", "default", {"low": 0, "high": 1}, False, None)]
    return t


def make_analyzer(method, kwargs, how, model, mode):
    import innvestigate
    import innvestigate.analyzer.relevance_based.relevance_rule as rrule
    from innvestigate.analyzer import LRP, LRPEpsilon

    nsm = MODES[mode]
    if how == "z_ib":
        class ZRuleNoBias(rrule.ZRule):
            def __init__(self, layer, state):
                super().__init__(layer, state, bias=False)

        return LRP(model, rule=ZRuleNoBias, neuron_selection_mode=nsm)
    if how == "eps_ib":
        return LRPEpsilon(model, neuron_selection_mode=nsm, **kwargs)
    return innvestigate.create_analyzer(method, model, neuron_selection_mode=nsm, **kwargs)


def stage_analyze(work, name):
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    _tf_setup()
    import innvestigate  # noqa: F401

    x = inputs_for(name)
    logits = np.load(os.path.join(work, name + "_logits.npy"))
    target = targets_for(logits)
    arrays = {"x": x, "target": target, "logits": logits}
    entries, errors = {}, {}

    def load():
        tf.keras.backend.clear_session()
        tf.compat.v1.set_random_seed(SEED)
        model = tf.keras.models.load_model(os.path.join(work, name + ".h5"), compile=False)
        if name in SOFTMAX:  # analyzers raise on a softmax: explain the logits, as the docs tell users to
            model = innvestigate.model_wo_softmax(model)
        return model

    m = load()
    graph_logits = m.predict(x, verbose=0)
    assert np.max(np.abs(graph_logits - logits)) <= 1e-5
    layer_names = [l.name for l in m.layers]

    for method, tag, kwargs, statistical, how in analyzer_table(name):
        for mode in MODES:
            key = f"{method}|{mode}|{tag}"
            try:
                model = load()
                an = make_analyzer(method, kwargs, how, model, mode)
                if mode == "index":
                    r = an.analyze(x, neuron_selection=target)
                else:
                    r = an.analyze(x)
                r = np.asarray(r, dtype=np.float32)
                assert r.shape == x.shape, (r.shape, x.shape)
                assert np.all(np.isfinite(r)), "non-finite map"
            except Exception as e:  # record and go on
                errors[key] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
                print(f"[analyze] {name} {key}: ERROR {errors[key]}")
                traceback.print_exc(limit=2)
                continue
            arrays[key] = r
            entry = {"method": method, "params": kwargs, "mode": mode, "statistical": statistical}
            if how == "z_ib":
                entry["built_as"] = "innvestigate.analyzer.LRP(model, rule=ZRule subclass with bias=False)"
            elif how == "eps_ib":
                entry["built_as"] = "innvestigate.analyzer.LRPEpsilon(model, epsilon=1e-7, bias=False)"
            entries[key] = entry

    # Sanity: bias-free LRP-Z conserves relevance exactly on these ReLU nets (Add/AvgPool use Z, MaxPool and
    # Flatten the gradient): sum(map) == selected logit.
    sel = logits[np.arange(4), np.argmax(logits, 1)]
    if "lrp.z_IB|max|default" in arrays:
        s = arrays["lrp.z_IB|max|default"].reshape(4, -1).sum(1)
        print(f"[sanity] {name} lrp.z_IB|max: max|sum(map) - logit| = {np.max(np.abs(s - sel)):.3e}")
        if name in CONSERVING:
            assert np.allclose(s, sel, rtol=1e-3, atol=1e-4), (s, sel)
    if name == "keras_mlp":
        sel = logits[np.arange(4), np.argmax(logits, 1)]
        for k in ("lrp.z|max|default", "lrp.z_IB|max|default"):
            if k in arrays:
                s = arrays[k].reshape(4, -1).sum(1)
                print(f"[sanity] {k}: sum(map) {np.round(s, 5).tolist()} vs logit {np.round(sel, 5).tolist()}"
                      f" max|diff| {np.max(np.abs(s - sel)):.3e}")
        s = arrays["lrp.z_IB|max|default"].reshape(4, -1).sum(1)
        assert np.allclose(s, sel, rtol=1e-4, atol=1e-5), "bias-free LRP-Z must conserve on the MLP"
        s = arrays["lrp.z|all|default"].reshape(4, -1).sum(1)
        print(f"[sanity] lrp.z|all: sum(map) {np.round(s, 5).tolist()} vs sum(logits) "
              f"{np.round(logits.sum(1), 5).tolist()}")

    manifest = {"model": name + ".onnx", "library": LIBRARY, "layout": "NHWC" if len(x.shape) == 4 else "NC",
                "keras_layers": layer_names, "onnx_input": "x", "onnx_output": "logits",
                "target_rule": "even samples argmax, odd samples runner-up class",
                "entries": entries, "errors": errors, "notes": NOTES + MODEL_NOTES.get(name, [])}
    nc = {k: v for k, v in not_comparable(name).items() if k in entries}
    if nc:
        manifest["not_comparable"] = nc
    if name in ALSO_VALID_FOR:
        manifest["also_valid_for"] = ALSO_VALID_FOR[name]
    np.savez_compressed(os.path.join(work, name + ".npz"), **arrays)
    with open(os.path.join(work, name + ".json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"[analyze] {name}: {len(entries)} entries, {len(errors)} errors")


# --------------------------------------------------------------------------------------------- main
def main():
    models = MODELS
    if len(sys.argv) > 2 and sys.argv[1] == "--models":  # regenerate only these (others stay as they are)
        models = sys.argv[2].split(",")
        assert set(models) <= set(MODELS), models
    elif len(sys.argv) > 1:
        stage = sys.argv[1]
        if stage == "build":
            return stage_build(sys.argv[2], sys.argv[3].split(",") if len(sys.argv) > 3 else None)
        if stage == "analyze":
            return stage_analyze(sys.argv[2], sys.argv[3])
        if stage == "check":
            return stage_check(sys.argv[2])
        raise SystemExit(f"unknown stage {stage}")
    me = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory(prefix="inn_oracles_") as work:
        def sub(*args):
            subprocess.run([sys.executable, me, *args], check=True, env=_env())

        sub("build", work, ",".join(models))
        for name in models:
            sub("analyze", work, name)
        if "keras_mlp" in models:
            sub("check", work)
        os.makedirs(DATA, exist_ok=True)
        build = json.load(open(os.path.join(work, "build.json")))
        for name in models:
            man = json.load(open(os.path.join(work, name + ".json")))
            man["export"] = {k: v for k, v in build.items() if k.startswith(name)}
            with open(os.path.join(DATA, name + ".json"), "w") as f:
                json.dump(man, f, indent=1)
            shutil.copy(os.path.join(work, name + ".npz"), DATA)
        for fname in build:
            shutil.copy(os.path.join(work, fname + ".onnx"), DATA)
    for f in sorted(os.listdir(DATA)):
        print(f"{f:28s} {os.path.getsize(os.path.join(DATA, f)):>9d} bytes")


if __name__ == "__main__":
    main()
