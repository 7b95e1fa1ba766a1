"""The small Keras models of the iNNvestigate oracles (built, trained for a few epochs and exported with tf2onnx
in make_innvestigate.py's build stage), their inputs and targets, and the constants the stages share."""

import json
import os

import numpy as np

MODELS = ["keras_mlp", "keras_cnn", "keras_resnet",
          "keras_strided", "keras_conv1d", "keras_branch", "keras_sepconv", "keras_bn", "keras_se"]
SHAPES = {"keras_mlp": (16,), "keras_cnn": (12, 12, 3), "keras_resnet": (12, 12, 3),
          "keras_strided": (12, 12, 3), "keras_conv1d": (20, 4), "keras_branch": (10, 10, 3),
          "keras_sepconv": (10, 10, 3), "keras_bn": (12, 12, 3), "keras_se": (10, 10, 3)}
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


def build_model(name, gate_first=True):
    """The Keras model ``name``; keras_se's Multiply takes [gate, x] (``gate_first``, as torchvision orders its
    squeeze-excitation) or [x, gate] (as Keras' EfficientNet does), the same weights either way."""
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
    elif name == "keras_se":
        # a squeeze-excitation block: Conv + relu, then the gate sigmoid(Dense(relu(Dense(GAP)))) times the map
        h = L.Conv2D(6, 3, activation="relu", padding="same", name="conv1")(inp)
        g = L.GlobalAveragePooling2D(name="se_squeeze")(h)
        g = L.Dense(3, activation="relu", name="se_reduce")(g)
        g = L.Dense(6, activation="sigmoid", name="se_expand")(g)
        g = L.Reshape((1, 1, 6), name="se_reshape")(g)
        h = L.Multiply(name="se_excite")([g, h] if gate_first else [h, g])
        h = L.Conv2D(8, 3, activation="relu", padding="valid", name="conv2")(h)
        h = L.Flatten(name="flatten")(h)
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
        exports = [(name, 13, model)] + ([("keras_cnn_op9", 9, model)] if name == "keras_cnn" else [])
        if name == "keras_se":  # the Multiply's operands the other way round, the same weights
            swapped = build_model(name, gate_first=False)
            swapped.set_weights(model.get_weights())
            exports.append(("keras_se_xfirst", 13, swapped))
        for fname, opset, net in exports:
            path = os.path.join(work, fname + ".onnx")
            proto, _ = tf2onnx.convert.from_keras(net, input_signature=spec, opset=opset)
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
