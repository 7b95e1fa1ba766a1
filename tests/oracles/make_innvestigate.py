"""Oracle relevance maps from the real iNNvestigate 2.1.2, for onnxattr's method tests.

How to run (from the repository root, in the separate TF venv; ~5-10 minutes on 2 CPU cores):

    python3.11 -m venv /work/venv-inn
    /work/venv-inn/bin/pip install tensorflow==2.14.1 innvestigate==2.1.2 numpy==1.26.4 \
        tf2onnx==1.17.0 onnx==1.16.2 onnxruntime==1.18.1
    /work/venv-inn/bin/python tests/oracles/make_innvestigate.py

What it produces, in tests/oracles/data/:
    keras_mlp.onnx, keras_cnn.onnx, keras_resnet.onnx   tf2onnx exports, opset 13, dynamic batch
    keras_cnn_op9.onnx                                   the same CNN at opset 9 (maps = keras_cnn's)
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

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
MODELS = ["keras_mlp", "keras_cnn", "keras_resnet",
          "keras_strided", "keras_conv1d", "keras_branch", "keras_sepconv", "keras_bn"]
SHAPES = {"keras_mlp": (16,), "keras_cnn": (12, 12, 3), "keras_resnet": (12, 12, 3),
          "keras_strided": (12, 12, 3), "keras_conv1d": (20, 4), "keras_branch": (10, 10, 3),
          "keras_sepconv": (10, 10, 3), "keras_bn": (12, 12, 3)}
# input range other than [0, 1] (x = lo + (hi - lo) * U(0, 1))
RANGES = {"keras_strided": (-1.0, 1.0), "keras_sepconv": (-0.5, 2.0)}
# models whose last Dense has a softmax: iNNvestigate explains model_wo_softmax (the logits)
SOFTMAX = {"keras_conv1d"}
# models with BatchNormalization: iNNvestigate's LRP/DeepTaylor use its fused-BN quirk there, and IG/SmoothGrad
# raise under TF 2.14, so only the gradient family is recorded (see MODEL_NOTES)
GRADIENT_ONLY = {"keras_bn"}
# models on which bias-free LRP-Z must conserve relevance (ReLU nets without LeakyReLU/tanh/global max)
CONSERVING = {"keras_mlp", "keras_cnn", "keras_resnet"}
N_CLASSES = 5
SEED = 0
MODES = {"max": "max_activation", "index": "index", "all": "all"}
LIBRARY = "innvestigate 2.1.2"


def _env():
    env = dict(os.environ)
    env.update({"PYTHONHASHSEED": "0", "TF_DETERMINISTIC_OPS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    return env


def _tf_setup():
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    return tf


def inputs_for(name):
    """x: 4 samples in [0,1] from default_rng(0) (in RANGES[name] for the models listed there)."""
    x = np.random.default_rng(0).random((4,) + SHAPES[name]).astype(np.float32)
    if name in RANGES:
        lo, hi = RANGES[name]
        x = (lo + (hi - lo) * x).astype(np.float32)
    return x


def targets_for(logits):
    """Even samples: the argmax; odd samples: the runner-up class (differs from argmax)."""
    order = np.argsort(-logits, axis=1)
    t = np.where(np.arange(len(logits)) % 2 == 0, order[:, 0], order[:, 1]).astype(np.int64)
    return t


# --------------------------------------------------------------------------------------------- build
def build_model(name):
    import tensorflow as tf
    from tensorflow import keras
    from tensorflow.keras import layers as L

    inp = keras.Input(shape=SHAPES[name], name="x")  # own name: avoids the `input_1` clash
    if name == "keras_mlp":
        h = L.Dense(12, activation="relu", name="dense1")(inp)
        h = L.Dense(8, activation="relu", name="dense2")(h)
    elif name == "keras_cnn":
        h = L.Conv2D(6, 3, activation="relu", padding="same", name="conv1")(inp)
        h = L.MaxPooling2D(2, name="pool1")(h)
        h = L.Conv2D(8, 3, activation="relu", padding="valid", name="conv2")(h)
        h = L.Flatten(name="flatten")(h)
        h = L.Dense(16, activation="relu", name="dense1")(h)
    elif name == "keras_resnet":
        h0 = L.Conv2D(8, 3, activation="relu", padding="same", name="conv1")(inp)
        h = L.Conv2D(8, 3, activation="relu", padding="same", name="block_conv1")(h0)
        h = L.Conv2D(8, 3, padding="same", name="block_conv2")(h)
        h = L.Add(name="block_add")([h, h0])
        h = L.Activation("relu", name="block_relu")(h)
        h = L.AveragePooling2D(2, name="avgpool")(h)
        h = L.Flatten(name="flatten")(h)
    elif name == "keras_strided":
        # asymmetric ZeroPadding, SAME stride 2 on an even size (TF pads 0 before, 1 after), VALID stride 2,
        # LeakyReLU and Activation('relu') layers of their own, global average pooling, Dropout
        h = L.ZeroPadding2D(((1, 0), (2, 1)), name="zpad")(inp)
        h = L.Conv2D(6, 3, strides=2, padding="same", name="conv1")(h)
        h = L.LeakyReLU(0.2, name="lrelu")(h)
        h = L.Conv2D(8, 3, strides=2, padding="valid", name="conv2")(h)
        h = L.Activation("relu", name="act_relu")(h)
        h = L.Conv2D(8, 1, activation="relu", name="conv3")(h)
        h = L.GlobalAveragePooling2D(name="gap")(h)
        h = L.Dropout(0.3, name="drop")(h)
    elif name == "keras_conv1d":
        # Conv1D same/valid-strided, MaxPooling1D, tanh and sigmoid activations, Dropout, softmax head
        h = L.Conv1D(6, 5, padding="same", activation="relu", name="conv1")(inp)
        h = L.MaxPooling1D(2, name="pool1")(h)
        h = L.Conv1D(8, 3, strides=2, padding="valid", activation="tanh", name="conv2")(h)
        h = L.Flatten(name="flatten")(h)
        h = L.Dropout(0.25, name="drop")(h)
        h = L.Dense(8, activation="sigmoid", name="dense1")(h)
    elif name == "keras_branch":
        # two branches joined by Concatenate (one with a keras.layers.ReLU layer), strided SAME MaxPool,
        # GlobalMaxPooling2D head
        h0 = L.Conv2D(6, 3, activation="relu", padding="same", name="conv1")(inp)
        a = L.Conv2D(4, 1, activation="relu", name="conv_a")(h0)
        b = L.Conv2D(4, 3, padding="same", name="conv_b")(h0)
        b = L.ReLU(name="relu_b")(b)
        h = L.Concatenate(name="concat")([a, b])
        h = L.MaxPooling2D(3, strides=2, padding="same", name="pool")(h)
        h = L.Conv2D(8, 3, activation="relu", padding="same", name="conv2")(h)
        h = L.GlobalMaxPooling2D(name="gmp")(h)
    elif name == "keras_sepconv":
        # DepthwiseConv2D and SeparableConv2D (one Keras layer, two ONNX Convs), inputs in [-0.5, 2]
        h = L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="dwconv1")(inp)
        h = L.SeparableConv2D(8, 3, padding="same", activation="relu", name="sepconv2")(h)
        h = L.AveragePooling2D(2, name="avgpool")(h)
        h = L.Flatten(name="flatten")(h)
    elif name == "keras_bn":
        # Conv -> BatchNormalization -> ReLU (tf2onnx folds the BN into the Conv)
        h = L.Conv2D(6, 3, padding="same", use_bias=False, name="conv1")(inp)
        h = L.BatchNormalization(name="bn1")(h)
        h = L.Activation("relu", name="relu1")(h)
        h = L.MaxPooling2D(2, name="pool1")(h)
        h = L.Conv2D(8, 3, padding="same", name="conv2")(h)
        h = L.BatchNormalization(name="bn2")(h)
        h = L.Activation("relu", name="relu2")(h)
        h = L.GlobalAveragePooling2D(name="gap")(h)
    else:
        raise ValueError(name)
    out = L.Dense(N_CLASSES, activation="softmax" if name in SOFTMAX else None, name="logits")(h)
    return tf.keras.Model(inp, out, name=name)


def decorrelate_head(tf, model, probe):
    """Remove the last Dense's component along the mean penultimate feature and centre each logit over the probes
    (then std 1, plus 0.1 N(0,1) bias), so the 4 samples get different classes even where pooled features of
    uniform-noise inputs are nearly alike (as make_torch.py does)."""
    feats = tf.keras.Model(model.input, model.layers[-2].output)(probe, training=False).numpy().astype(np.float64)
    w, bias = [a.astype(np.float64) for a in model.layers[-1].get_weights()]
    m = feats.mean(0)
    m /= np.linalg.norm(m)
    w -= np.outer(m, m @ w)
    bias = -(feats @ w).mean(0)
    std = (feats @ w + bias).std()
    w, bias = w / std, bias / std + 0.1 * np.random.default_rng(2).standard_normal(bias.shape)
    model.layers[-1].set_weights([w.astype(np.float32), bias.astype(np.float32)])


def stage_build(work, models=None):
    tf = _tf_setup()
    import onnx
    import onnxruntime as ort
    import tf2onnx

    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    report = {}
    for name in models or MODELS:
        tf.keras.utils.set_random_seed(SEED)
        model = build_model(name)
        shape = SHAPES[name]
        rng = np.random.default_rng(1)
        xtr = rng.random((1024,) + shape).astype(np.float32)
        teacher = rng.standard_normal((int(np.prod(shape)), N_CLASSES))
        ytr = np.argmax((xtr.reshape(len(xtr), -1) - 0.5) @ teacher, axis=1)
        if name in RANGES:
            lo, hi = RANGES[name]
            xtr = (lo + (hi - lo) * xtr).astype(np.float32)
        model.compile(optimizer=tf.keras.optimizers.Adam(3e-3),
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=name not in SOFTMAX),
                      metrics=["accuracy"])
        hist = model.fit(xtr, ytr, epochs=8, batch_size=64, shuffle=False, verbose=0)
        if name not in ("keras_mlp", "keras_cnn", "keras_resnet"):
            decorrelate_head(tf, model, np.concatenate([xtr[:256], inputs_for(name)]))
        model.save(os.path.join(work, name + ".h5"))

        x = inputs_for(name)
        outputs = model(x, training=False).numpy().astype(np.float32)  # what the ONNX export computes
        if name in SOFTMAX:  # the explained logits: the last Dense without its softmax
            pre = tf.keras.Model(model.input, model.layers[-2].output)(x, training=False).numpy()
            w, bias = model.layers[-1].get_weights()
            logits = (pre.astype(np.float64) @ w + bias).astype(np.float32)
        else:
            logits = outputs
        assert len(set(np.argmax(logits, 1).tolist())) >= 2, (name, logits)
        np.save(os.path.join(work, name + "_logits.npy"), logits)

        spec = (tf.TensorSpec((None,) + shape, tf.float32, name="x"),)
        exports = [(name, 13)] + ([("keras_cnn_op9", 9)] if name == "keras_cnn" else [])
        for fname, opset in exports:
            path = os.path.join(work, fname + ".onnx")
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
            proto.producer_version = tf2onnx.__version__  # drop the git hash suffix
            for vi in (proto.graph.input[0], proto.graph.output[0]):
                vi.type.tensor_type.shape.dim[0].dim_param = "N"  # tf2onnx names it unk__<counter>
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, path)
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            iname = sess.get_inputs()[0].name
            got = sess.run(None, {iname: x})[0]
            err = float(np.max(np.abs(got - outputs)))
            assert err <= 1e-5, (fname, err)
            got1 = sess.run(None, {iname: x[:1]})[0]  # dynamic batch
            assert np.max(np.abs(got1 - outputs[:1])) <= 1e-5
            report[fname] = {"opset": opset, "max_abs_err_vs_keras": err, "input": iname,
                             "output": sess.get_outputs()[0].name,
                             "train_accuracy": float(hist.history["accuracy"][-1])}
            print(f"[build] {fname}: opset {opset}, ORT vs Keras max|diff| = {err:.2e}, "
                  f"argmax {np.argmax(logits, 1).tolist()}, train acc {hist.history['accuracy'][-1]:.2f}")
    with open(os.path.join(work, "build.json"), "w") as f:
        json.dump(report, f, indent=1)


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


NOTES = [
    "Seeds: 'max' and 'index' explain one logit per sample. LRP/DeepTaylor start from the selected logit's "
    "value (head mapping = identity), gradient methods from 1 (head mapping = ones_like). 'all' does not "
    "reduce the output at all: LRP seeds EVERY output neuron with its own logit value (R_out = logits, "
    "negative ones included), gradient methods seed ones for every output (map = gradient of sum of logits), "
    "DeepTaylor seeds relu(logits).",
    "deep_taylor / deep_taylor.bounded append a ReLU to the model output (DeepTaylor._prepare_model): the seed "
    "is relu(selected logit); 'max' selects max(relu(logits)), so a sample whose logits are all <= 0 (or an "
    "'index' target with logit <= 0) gets an all-zero map.",
    "Epsilon rule (EpsilonRule.apply): R_in = x * VJP_W(R_out / (z + eps*s)), s = +1 where z >= 0 else -1 "
    "(sign(0)=+1), no safe_divide; z includes the bias when bias=True. Default epsilon 1e-7 (lrp.epsilon), "
    "0.1 in the sequential presets.",
    "Z rule and every other division use safe_divide(a, b) = a / (b + 1e-7*(b == 0)) (K.epsilon() only where "
    "the denominator is exactly 0); so 0/0 -> 0.",
    "Alpha-beta (AlphaBetaRule): x+ = x*(x>0), x- = x*(x<0), W+/W- likewise. Activator term: "
    "z_a = x+ W+ + x- W- (+bias), R_a = x+ * VJP_{W+}(R/z_a) + x- * VJP_{W-}(R/z_a); inhibitor term: "
    "z_i = x+ W- + x- W+ (+bias), R_i analogous; R_in = alpha*R_a - beta*R_i (inhibitor skipped when beta==0). "
    "BIAS QUIRK with bias=True: the positive copy of the layer gets bias b*(b>0), the negative copy b*(b<0), "
    "and each term adds one positive-weight and one negative-weight copy, so BOTH z_a and z_i contain the FULL "
    "bias b (not b+ in z_a and b- in z_i). _IB variants drop the bias entirely. alpha/beta must satisfy "
    "alpha - beta = 1, alpha >= 1, beta >= 0 (ValueError otherwise).",
    "lrp.z_plus == lrp.alpha_1_beta_0_IB (LRPZPlus subclasses LRPAlpha1Beta0IgnoreBias; handles negative "
    "inputs via the x- W- term). lrp.z_plus_fast (ZPlusFastRule): z = x W+ (no bias, x NOT clipped), "
    "R_in = x * VJP_{W+}(R/z) - assumes x >= 0, differs from z_plus where inputs are negative.",
    "w_square (WSquareRule): R_in = VJP_{W^2}(R / (1 W^2)) - the denominator is the layer without bias applied "
    "to a ones tensor (so for 'same' conv borders only in-image taps count), NOT multiplied by x. "
    "flat (FlatRule) = same with all weights 1 (denominator = number of in-image inputs in the receptive field).",
    "Which rule applies where in LRP (LRP._create_analysis, all presets): the chosen rule only applies to layers "
    "with a kernel (Dense/Conv*), the layer's own activation is ignored (rule on the pre-activation, relevance of "
    "the post-ReLU output used as is). Add and AveragePooling/GlobalAveragePooling ALWAYS use a fixed Z rule "
    "(AddReverseLayer/AveragePoolingReverseLayer: R_in_k = x_k * VJP(R/safe_divide z), no epsilon, no "
    "alpha-beta) whatever rule or preset was chosen. keras Activation layers pass relevance through unchanged; "
    "everything else (MaxPooling, Flatten, Reshape, keras.layers.ReLU layers, Concatenate...) gets the plain "
    "gradient (VJP of R), i.e. MaxPool routes R to the argmax position of each window.",
    "sequential_preset_a: Dense -> Epsilon(eps=0.1, bias), Conv -> Alpha1Beta0 (with bias). sequential_preset_b: "
    "Dense -> Epsilon(eps=0.1, bias), Conv -> Alpha2Beta1 (with bias). Both accept epsilon=... . BN layers "
    "would get AlphaBetaX2m100Rule (none here). On an MLP both presets are plain lrp.epsilon(0.1).",
    "_flat variants: input_layer_rule='Flat' is inserted as the first condition (ichecks.is_input_layer): it "
    "applies to every kernel layer ALL of whose inputs come from an InputLayer, looking through Flatten/Permute/"
    "Reshape layers (so a Dense after Flatten(Input) also counts; with two parallel first layers both count).",
    "until_layer_idx (real kwarg name of lrp.sequential_preset_b_flat_until_idx: until_layer_idx, default None; "
    "rule FlatRule): Flat is applied to layers model.layers[0..until_layer_idx] INCLUSIVE, compared by identity. "
    "model.layers of a functional model includes the InputLayer at index 0 and weightless layers (MaxPool, "
    "Flatten, Add...) count too (the docstring claiming weightless layers are skipped is wrong); only kernel "
    "layers are affected. So until_layer_idx=1 == preset_b_flat (layer 1 is the first Conv/Dense). keras_cnn "
    "layers: [x, conv1, pool1, conv2, flatten, dense1, logits] -> idx2 == idx1, idx3 adds conv2. keras_mlp: "
    "[x, dense1, dense2, logits] -> idx2 also makes dense2 Flat. keras_resnet: [x, conv1, block_conv1, "
    "block_conv2, block_add, ...] -> idx2 adds block_conv1, idx3 adds block_conv2. Priority: input-layer rule, "
    "then until-idx rule, then the preset's Dense/Conv rules.",
    "deep_taylor (DeepTaylor._create_analysis): a kernel layer 'with activation' gets Alpha1Beta0IgnoreBias "
    "(= z+), one 'without activation' WSquare - but ichecks.contains_activation(layer) is hasattr(layer, "
    "'activation'), true for EVERY Dense/Conv (linear ones included), so in practice every kernel layer "
    "(the final linear Dense too) uses z+ (alpha1beta0, no bias); WSquare is never used. Activation(relu), "
    "ReLU, MaxPool, AveragePool, Add, Flatten/Reshape/Concatenate: plain gradient (Add copies R into BOTH "
    "operands -> not conservative on residual nets; AvgPool spreads R/k^2 evenly, not in proportion to x). "
    "Any other layer type raises NotImplementedError.",
    "deep_taylor.bounded(low, high): like deep_taylor, plus BoundedRule (Z_B) with priority 10 on kernel layers "
    "that satisfy is_input_layer (same lookup as _flat). Z_B: z = x W - low W+ - high W- (no bias), "
    "R_in = x*VJP_W(R/z) - low*VJP_{W+}(R/z) - high*VJP_{W-}(R/z) with safe_divide. low/high are required "
    "(ValueError if None). LRP's input_layer_rule=(low, high) builds the same rule.",
    "SEED QUIRK: only Gradient (and so input_t_gradient, integrated_gradients, smoothgrad) overrides "
    "_head_mapping with ones_like. deconvnet and guided_backprop inherit ReverseAnalyzerBase's identity head "
    "mapping, so they are seeded with the selected LOGIT VALUE ('all': with the logits vector), i.e. their maps "
    "are the one-hot-seeded maps times the logit (checked numerically on keras_mlp).",
    "Gradient (ReverseAnalyzerBase): postprocess 'abs'/'square' applied to the final input gradient. "
    "input_t_gradient = x * gradient. deconvnet: at every layer containing a ReLU (Dense/Conv with relu, "
    "Activation('relu'), ReLU) R <- relu(R), then the VJP of the layer WITHOUT its relu (no forward mask). "
    "guided_backprop: R <- relu(R), then the VJP of the full layer (forward relu mask applied). Layers "
    "without relu (final linear Dense, pools, Add) use the plain gradient.",
    "integrated_gradients: PathIntegrator; samples ref + (k/steps)*(x - ref) for k = 0..steps-1 (left Riemann "
    "sum, alpha=1 never evaluated), mean of the gradients times (x - ref); steps=64, reference_inputs=0. "
    "'max' mode picks argmax of the UNPERTURBED model output and uses it as index for all steps. "
    "neuron_selection must be passed by keyword.",
    "smoothgrad: GaussianSmoother with AddGaussianNoise(stddev=1.0): noise_scale is stored but ignored "
    "(std is always 1.0, whatever the input range); mean over augment_by_n=64 noisy gradients; 'max' uses "
    "argmax of the unperturbed output; postprocess (if any) applies per sample before the mean. Random: "
    "compare statistics only.",
    "lrp.z_IB / lrp.epsilon_IB are not registered in 2.1.2 (KeyError). Rebuilt here: lrp.z_IB = "
    "innvestigate.analyzer.LRP(model, rule=<ZRule subclass with bias=False>) (bn_layer_rule None); "
    "lrp.epsilon_IB = innvestigate.analyzer.LRPEpsilon(model, epsilon=1e-7, bias=False). Add/AvgPool still "
    "get the fixed Z rule.",
    "MaxNeuronSelection (max mode) = reduce_max over the output; its gradient routes the seed to the argmax "
    "(TF splits it equally between exact ties). 'index' uses tf.gather_nd with (batch_pos, target) pairs.",
    "keras_cnn_op9.onnx is the same Keras model as keras_cnn exported at opset 9: its maps are the keras_cnn "
    "entries (no separate npz).",
]


MODEL_NOTES = {
    "keras_strided": [
        "keras_strided: inputs in [-1, 1]. ZeroPadding2D((1,0),(2,1)) -> Pad; Conv2D stride 2 'same' on an even "
        "size (TF pads 0 before, 1 after: asymmetric ONNX pads); Conv2D stride 2 'valid'; LeakyReLU(0.2) and "
        "Activation('relu') as layers of their own; GlobalAveragePooling2D (LRP: fixed Z rule); Dropout.",
    ],
    "keras_conv1d": [
        "keras_conv1d: the Keras model ends in Dense(activation='softmax'); the ONNX export outputs the softmax "
        "probabilities; iNNvestigate analyzes innvestigate.model_wo_softmax(model) (as its docs require), so "
        "'logits' here are the pre-softmax values and every map explains them. Conv1D 'same' + relu, "
        "MaxPooling1D, Conv1D stride 2 'valid' + tanh, Dropout, Dense + sigmoid.",
    ],
    "keras_branch": [
        "keras_branch: Concatenate of a Conv 1x1 + relu branch and a Conv 3x3 followed by a keras.layers.ReLU "
        "LAYER (not Activation: iNNvestigate's LRP gives that layer the plain gradient, and deconvnet/"
        "guided_backprop's contains_activation(layer, 'relu') is False for it, so they apply no relu(R) there); "
        "MaxPooling2D(3, strides 2, 'same'); GlobalMaxPooling2D (gradient: routes R to the max).",
    ],
    "keras_sepconv": [
        "keras_sepconv: inputs in [-0.5, 2]. DepthwiseConv2D(depth_multiplier 2) and SeparableConv2D; "
        "iNNvestigate treats a SeparableConv2D as ONE kernel layer (its rules modify depthwise and pointwise "
        "kernels separately, e.g. W+ = (dw+, pw+)); tf2onnx writes it as two Convs (grouped, then 1x1).",
    ],
    "keras_bn": [
        "keras_bn: Conv2D -> BatchNormalization -> Activation('relu') twice (BN statistics from 8 epochs of "
        "training); tf2onnx folds each BN into its Conv. Only the gradient family is recorded: every LRP preset "
        "with a bn_layer_rule (z, epsilon, w_square, flat, alpha_beta, z_plus_fast, sequential presets; "
        "DeepTaylor with WSquare) goes through igraph.apply_mapping_to_fused_bn_layer, whose scale layer "
        "uses gamma/sqrt(var**2+eps) and beta - mean/sqrt(var**2+eps) (the quirk we do not copy; "
        "only LRP(rule=...) without bn_layer_rule uses BatchNormalizationReverseLayer, a Z rule on the BN: "
        "R_in = x (y - beta) R / ((x - mean) y)). integrated_gradients and smoothgrad raise on BN models "
        "under TF 2.14 (recorded in errors).",
    ],
}


# entries our ONNX-level method cannot reproduce, with the reason (test_oracles.py skips them, citing it)
NOT_COMPARABLE = {
    "keras_sepconv": {
        k: "SeparableConv2D is one Keras layer (iNNvestigate applies the rule to depthwise+pointwise at once, "
           "e.g. z+ with (dw+, pw+)) but two ONNX Convs with no activation between them; rules that do not "
           "compose (z+, and numerically z on the unbounded depthwise output) differ"
        for k in [f"{m}|{mode}|default" for m in ("deep_taylor", "deep_taylor.bounded", "lrp.z_IB")
                  for mode in MODES]},
    "keras_branch": {
        f"integrated_gradients|{mode}|default": "at the zero baseline (k=0) every position of the "
        "GlobalMaxPooling2D ties; TF's reduce_max gradient shares the seed among ties, our GlobalMaxPool VJP "
        "gives it to the first maximum (as torch's adaptive max pool does): the maps differ by x*g_tie(0)/64, "
        "~3% of the max" for mode in MODES},
}

# every model: iNNvestigate seeds deconvnet/guided_backprop with the selected logit (comparable after dividing
# by it, see tests/methods/test_oracles.py), in mode "all" with each output's own logit
LOGIT_SEEDED_ALL = {
    f"{m}|all|default": "iNNvestigate seeds deconvnet/guided_backprop with the logit values (ReverseAnalyzerBase's "
    "identity head mapping): in mode 'all' each output is seeded with its own logit, which no rescaling of a "
    "ones-seeded map (ours, Captum's) reproduces; relu(R) at every ReLU also makes these maps only positively "
    "homogeneous in the seed" for m in ("deconvnet", "guided_backprop")}


def not_comparable(name):
    return {**NOT_COMPARABLE.get(name, {}), **LOGIT_SEEDED_ALL}


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
    if name == "keras_cnn":
        manifest["also_valid_for"] = ["keras_cnn_op9.onnx"]
    np.savez_compressed(os.path.join(work, name + ".npz"), **arrays)
    with open(os.path.join(work, name + ".json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"[analyze] {name}: {len(entries)} entries, {len(errors)} errors")


# -------------------------------------------------------------------------------------------- check
def stage_check(work):
    """Re-derive a few maps on keras_mlp with numpy (float64) to confirm the rule readings in NOTES."""
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    _tf_setup()
    d = np.load(os.path.join(work, "keras_mlp.npz"))
    model = tf.keras.models.load_model(os.path.join(work, "keras_mlp.h5"), compile=False)
    Ws = [(l.get_weights()[0].astype(np.float64), l.get_weights()[1].astype(np.float64))
          for l in model.layers[1:]]
    x = d["x"].astype(np.float64)
    logits = d["logits"]
    sel = np.argmax(logits, 1)

    def sdiv(a, b):
        return a / (b + 1e-7 * (b == 0))

    def forward(x):
        acts = [x]
        for i, (W, b) in enumerate(Ws):
            z = acts[-1] @ W + b
            acts.append(np.maximum(z, 0) if i < len(Ws) - 1 else z)
        return acts

    def run(rule_for_layer, seed_fn):
        acts = forward(x)
        R = seed_fn(acts[-1])
        for i in reversed(range(len(Ws))):
            R = rule_for_layer(i)(acts[i], Ws[i][0], Ws[i][1], R)
        return R

    def zrule(bias=True):
        return lambda a, W, b, R: a * (sdiv(R, a @ W + (b if bias else 0)) @ W.T)

    def eps(e, bias=True):
        def f(a, W, b, R):
            z = a @ W + (b if bias else 0)
            return a * ((R / (z + e * np.where(z >= 0, 1, -1))) @ W.T)
        return f

    def alphabeta(al, be, bias=True):
        def f(a, W, b, R):
            ap, an = a * (a > 0), a * (a < 0)
            Wp, Wn = W * (W > 0), W * (W < 0)
            bb = b if bias else 0  # quirk: full bias in both denominators
            za = ap @ Wp + an @ Wn + bb
            ra = ap * (sdiv(R, za) @ Wp.T) + an * (sdiv(R, za) @ Wn.T)
            if not be:
                return ra
            zi = ap @ Wn + an @ Wp + bb
            ri = ap * (sdiv(R, zi) @ Wn.T) + an * (sdiv(R, zi) @ Wp.T)
            return al * ra - be * ri
        return f

    def wsq(a, W, b, R):
        W2 = W ** 2
        return sdiv(R, np.ones_like(a) @ W2) @ W2.T

    def flat(a, W, b, R):
        W1 = np.ones_like(W)
        return sdiv(R, np.ones_like(a) @ W1) @ W1.T

    def zpf(a, W, b, R):
        Wp = W * (W > 0)
        return a * (sdiv(R, a @ Wp) @ Wp.T)

    def zb(lo, hi):
        def f(a, W, b, R):
            Wp, Wn = W * (W > 0), W * (W < 0)
            lo_, hi_ = np.full_like(a, lo), np.full_like(a, hi)
            s = sdiv(R, a @ W - lo_ @ Wp - hi_ @ Wn)
            return a * (s @ W.T) - lo_ * (s @ Wp.T) - hi_ * (s @ Wn.T)
        return f

    def seed_max(out):
        s = np.zeros_like(out)
        s[np.arange(len(out)), sel] = out[np.arange(len(out)), sel]
        return s

    def seed_max_relu(out):
        return np.maximum(seed_max(out), 0)

    def seed_all(out):
        return out.copy()

    cases = {
        "lrp.z|max|default": (lambda i: zrule(), seed_max),
        "lrp.z|all|default": (lambda i: zrule(), seed_all),
        "lrp.z_IB|max|default": (lambda i: zrule(False), seed_max),
        "lrp.epsilon|max|eps0.1": (lambda i: eps(0.1), seed_max),
        "lrp.epsilon_IB|max|default": (lambda i: eps(1e-7, False), seed_max),
        "lrp.alpha_2_beta_1|max|default": (lambda i: alphabeta(2, 1), seed_max),
        "lrp.alpha_beta|max|a3b2": (lambda i: alphabeta(3, 2), seed_max),
        "lrp.alpha_2_beta_1_IB|max|default": (lambda i: alphabeta(2, 1, False), seed_max),
        "lrp.alpha_1_beta_0|max|default": (lambda i: alphabeta(1, 0), seed_max),
        "lrp.z_plus|max|default": (lambda i: alphabeta(1, 0, False), seed_max),
        "lrp.z_plus_fast|max|default": (lambda i: zpf, seed_max),
        "lrp.w_square|max|default": (lambda i: wsq, seed_max),
        "lrp.flat|all|default": (lambda i: flat, seed_all),
        "lrp.sequential_preset_a_flat|max|default": (lambda i: flat if i == 0 else eps(0.1), seed_max),
        "lrp.sequential_preset_b_flat_until_idx|max|idx1": (lambda i: flat if i == 0 else eps(0.1), seed_max),
        "lrp.sequential_preset_b_flat_until_idx|max|idx2": (lambda i: flat if i <= 1 else eps(0.1), seed_max),
        "deep_taylor|max|default": (lambda i: alphabeta(1, 0, False), seed_max_relu),
        "deep_taylor.bounded|max|default": (lambda i: zb(0, 1) if i == 0 else alphabeta(1, 0, False),
                                            seed_max_relu),
    }
    worst = 0.0
    for key, (rules, seed) in cases.items():
        ref = run(rules, seed)
        got = d[key].astype(np.float64)
        err = np.max(np.abs(ref - got)) / max(np.max(np.abs(ref)), 1e-12)
        worst = max(worst, err)
        print(f"[check] {key:52s} rel err vs numpy re-derivation {err:.2e}")
        assert err < 1e-4, key
    # gradient / guided backprop / deconvnet / IG on the MLP
    acts = forward(x)
    masks = [acts[i + 1] > 0 for i in range(len(Ws) - 1)]

    def backprop(seed, relu_bwd, use_mask):
        g = seed
        for i in reversed(range(len(Ws))):
            if i < len(Ws) - 1:
                if relu_bwd:
                    g = np.maximum(g, 0)
                if use_mask:
                    g = g * masks[i]
            g = g @ Ws[i][0].T
        return g

    onehot = np.eye(N_CLASSES)[sel]
    logit_seed = onehot * logits.astype(np.float64)  # deconvnet/guided_backprop keep the logit as seed
    for key, ref in {"gradient|max|default": backprop(onehot, False, True),
                     "gradient|all|default": backprop(np.ones_like(onehot), False, True),
                     "guided_backprop|max|default": backprop(logit_seed, True, True),
                     "guided_backprop|all|default": backprop(logits.astype(np.float64), True, True),
                     "deconvnet|max|default": backprop(logit_seed, True, False)}.items():
        err = np.max(np.abs(ref - d[key])) / np.max(np.abs(ref))
        worst = max(worst, err)
        print(f"[check] {key:52s} rel err vs numpy re-derivation {err:.2e}")
        assert err < 1e-4, key
    # IG: left Riemann sum k=0..63
    tot = np.zeros_like(x)
    for k in range(64):
        xa = x * (k / 64.0)
        a = [xa]
        for i, (W, b) in enumerate(Ws[:-1]):
            a.append(np.maximum(a[-1] @ W + b, 0))
        g = onehot
        for i in reversed(range(len(Ws))):
            if i < len(Ws) - 1:
                g = g * (a[i + 1] > 0)
            g = g @ Ws[i][0].T
        tot += g
    ref = x * tot / 64
    err = np.max(np.abs(ref - d["integrated_gradients|max|default"])) / np.max(np.abs(ref))
    print(f"[check] {'integrated_gradients|max|default (left sum)':52s} rel err {err:.2e}")
    assert err < 1e-4
    print(f"[check] all numpy re-derivations agree (worst rel err {max(worst, err):.2e})")


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
