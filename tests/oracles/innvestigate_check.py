"""make_innvestigate.py's check stage: numpy (float64) re-derivations of a few maps on keras_mlp, which confirm
the rule readings in the notes."""

import os

import numpy as np

from keras_nets import N_CLASSES, _tf_setup


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
