"""Export Keras recurrent layers that tf2onnx writes as ONNX Loops, with TensorFlow's gradients.

Run from the repository root in the iNNvestigate venv (TensorFlow 2.14, tf2onnx 1.17; see
tests/oracles/make_innvestigate.py), e.g.

    /work/venv-inn/bin/python tests/thirdparty/make_keras_rnn.py

tf2onnx writes Keras' LSTM and GRU(reset_after=True) as ONNX LSTM and GRU nodes, but SimpleRNN and
GRU(reset_after=False) as a tf.while_loop: a Loop with no trip count, stopped by time < steps, carrying the state
and the weights, each step's state a scan output. Writes to tests/thirdparty/data/ (opset 17, dynamic batch, random
weights, seed 0):

- keras_rnn.onnx: Bidirectional(SimpleRNN(5, return_sequences=True)) over 7 steps of 3 features (the backward
  direction reverses the sequence around its Loop), then GRU(6, reset_after=False), then Dense(4);
- keras_rnn_masked.onnx: Masking(0) then SimpleRNN(5) then Dense(4): padded steps keep the state, by a Where on
  the mask inside the Loop;
- keras_rnn_dynamic.onnx: keras_rnn's layers exported with the sequence length unknown (the Loop's stop
  condition reads Shape(x));

and for the first two a .npz: an input (keras_rnn_masked's with zero-padded tails), Keras' output and TensorFlow's
gradient (GradientTape) of the largest logit and of logit 2.
"""

import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
STEPS, FEATURES = 7, 3


def gradients(tf, model, x):
    grads = {}
    for key, pick in (("g_max", lambda y: tf.argmax(y, 1)), ("g_2", lambda y: tf.fill([len(x)], 2))):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = model(xt, training=False)
            chosen = tf.reduce_sum(tf.gather(y, pick(y), axis=1, batch_dims=1))
        grads[key] = tape.gradient(chosen, xt).numpy()
    return y.numpy(), grads


def export(tf, tf2onnx, model, name, steps=STEPS):
    spec = (tf.TensorSpec((None, steps, FEATURES), tf.float32, name="x"),)
    onnx_model, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    loops = sum(n.op_type == "Loop" for n in onnx_model.graph.node)
    assert loops, f"{name}: tf2onnx wrote no Loop"
    path = os.path.join(HERE, name + ".onnx")
    with open(path, "wb") as f:
        f.write(onnx_model.SerializeToString())
    print(path, os.path.getsize(path), f"{loops} Loop nodes")


def main():
    import tensorflow as tf
    import tf2onnx
    from tensorflow import keras
    from tensorflow.keras import layers as L

    tf.random.set_seed(0)
    rng = np.random.RandomState(1)

    def stacked(steps):
        inp = keras.Input((steps, FEATURES))
        h = L.Bidirectional(L.SimpleRNN(5, return_sequences=True))(inp)
        h = L.GRU(6, reset_after=False)(h)
        return keras.Model(inp, L.Dense(4)(h))

    model = stacked(STEPS)
    x = rng.randn(3, STEPS, FEATURES).astype(np.float32)
    y, grads = gradients(tf, model, x)
    export(tf, tf2onnx, model, "keras_rnn")
    np.savez(os.path.join(HERE, "keras_rnn.npz"), x=x, y=y, **grads)
    export(tf, tf2onnx, model, "keras_rnn_dynamic", steps=None)

    inp = keras.Input((STEPS, FEATURES))
    masked = keras.Model(inp, L.Dense(4)(L.SimpleRNN(5)(L.Masking(0.0)(inp))))
    x = rng.randn(3, STEPS, FEATURES).astype(np.float32)
    x[0, 5:] = 0  # padded tails of two lengths
    x[2, 3:] = 0
    y, grads = gradients(tf, masked, x)
    export(tf, tf2onnx, masked, "keras_rnn_masked")
    np.savez(os.path.join(HERE, "keras_rnn_masked.npz"), x=x, y=y, **grads)


if __name__ == "__main__":
    main()
