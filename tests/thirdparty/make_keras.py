"""Export a small Keras transformer block with tf2onnx (the converter iNNvestigate users reach for).

Run from the repository root in the iNNvestigate venv (TensorFlow 2.14, tf2onnx 1.17; see
tests/oracles/make_innvestigate.py), e.g.

    /work/venv-inn/bin/python tests/thirdparty/make_keras.py

Writes tests/thirdparty/data/keras_transformer.onnx (opset 17, dynamic batch, random weights, seed 0): a Dense
embedding, MultiHeadAttention with a residual, LayerNormalization (which tf2onnx writes as a BatchNormalization
fed the input's own mean and variance), a GELU MLP, GroupNormalization (written as reshapes, moments and
arithmetic) and a Dense head; and keras_transformer.npz: an input, Keras' output and TensorFlow's gradient
(GradientTape) of the largest logit and of logit 2.
"""

import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def main():
    import tensorflow as tf
    import tf2onnx
    from tensorflow import keras
    from tensorflow.keras import layers as L

    tf.random.set_seed(0)
    inp = keras.Input((6, 4))
    h = L.Dense(8)(inp)
    h = L.LayerNormalization()(h + L.MultiHeadAttention(2, 4)(h, h))
    h = L.LayerNormalization()(h + L.Dense(8)(L.Dense(16, activation="gelu")(h)))
    h = L.GroupNormalization(2)(h)
    model = keras.Model(inp, L.Dense(5)(L.GlobalAveragePooling1D()(h)))
    for layer in model.layers:  # affine parameters away from their initial 1 and 0
        if isinstance(layer, (L.LayerNormalization, L.GroupNormalization)):
            layer.gamma.assign(tf.random.uniform(layer.gamma.shape, 0.5, 1.5))
            layer.beta.assign(tf.random.uniform(layer.beta.shape, -0.2, 0.2))
    x = np.random.RandomState(1).randn(3, 6, 4).astype(np.float32)
    grads = {}
    for key, pick in (("g_max", lambda y: tf.argmax(y, 1)), ("g_2", lambda y: tf.fill([len(x)], 2))):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = model(xt, training=False)
            chosen = tf.reduce_sum(tf.gather(y, pick(y), axis=1, batch_dims=1))
        grads[key] = tape.gradient(chosen, xt).numpy()
    spec = (tf.TensorSpec((None, 6, 4), tf.float32, name="x"),)
    onnx_model, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    path = os.path.join(HERE, "keras_transformer.onnx")
    with open(path, "wb") as f:
        f.write(onnx_model.SerializeToString())
    print(path, os.path.getsize(path))
    np.savez(os.path.join(HERE, "keras_transformer.npz"), x=x, y=y.numpy(), **grads)


if __name__ == "__main__":
    main()
