"""From a preset's entries to rules: the stabilizer and bias conventions of each style (iNNvestigate's, Zennit's)
and make_rule, which turns an entry such as {rule = "epsilon", epsilon = 0.1} into a Rule, checking its values.
"""

from __future__ import annotations

import numpy as np

from onnxattr.errors import UsageError
from onnxattr.lrp import rules as R
from onnxattr.lrp.named import PASS_TO

# iNNvestigate's is_input_layer looks through Flatten/Permute/Reshape layers only (a kernel layer after a
# ZeroPadding2D or a BatchNormalization is not an input layer); tf2onnx adds layout Transposes
INNVESTIGATE_FIRST_THROUGH = frozenset({"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity",
                                        "Dropout", "Cast"})

# Activations that Keras 2.x writes only as layers of their own (no `activation=` string names them):
# iNNvestigate's LRP passes relevance through keras Activation layers only and gives every other
# weightless layer, these included, the plain gradient (a LeakyReLU scales negative-side relevance by alpha)
INNVESTIGATE_GRADIENT_ACTIVATIONS = frozenset({"LeakyRelu", "PRelu", "ThresholdedRelu"})

STYLES = {
    # SafeDivide (z + 1e-7 [z = 0]); alpha-beta bias split over both terms; w_square without bias
    "innvestigate": {"stabilizer": "safe", "epsilon": 1e-7, "bias_style": "innvestigate", "square_bias": False,
                     "first_through": INNVESTIGATE_FIRST_THROUGH,
                     "gradient_activations": INNVESTIGATE_GRADIENT_ACTIVATIONS},
    # stabilize (z + 1e-6 sign(z), sign(0) = +1); clamped bias on the x+ term only; w_square squares b;
    # the first layer is the first Conv/Linear whatever comes before it (padding, a BatchNorm, ...)
    "zennit": {"stabilizer": "signed", "epsilon": 1e-6, "bias_style": "zennit", "square_bias": True,
               "first_through": None},
}


def _real(spec: dict, key: str, default: float) -> float:
    """spec[key] (or ``default``) as a finite float, else a UsageError naming it."""
    value = spec.get(key, default)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"parameter {key}={value!r}: must be a number") from None
    if not np.isfinite(out):
        raise UsageError(f"parameter {key}={value!r}: must be finite")
    return out


def make_rule(spec: dict, style: dict):
    """A Rule (or the strings 'pass' / 'gradient') from a preset entry such as
    {rule = "epsilon", epsilon = 0.1}."""
    name = spec["rule"]
    stab = {"stabilizer": style["stabilizer"], "epsilon": style["epsilon"]}
    if name == "pass" and "operand" in spec:
        if spec["operand"] not in (0, 1) or isinstance(spec["operand"], bool):
            raise UsageError(f"parameter operand={spec['operand']!r}: must be 0 or 1 (the operand of a binary op "
                             "that takes all relevance)")
        return PASS_TO[int(spec["operand"])]
    if name in ("pass", "gradient"):
        return name
    if name in ("z", "z_IB"):
        return R.z_rule(bias=name == "z", **stab)
    if name in ("epsilon", "epsilon_IB"):
        epsilon = _real(spec, "epsilon", style["epsilon"])
        if not epsilon > 0:  # iNNvestigate refuses it too; 0 is the z rule without a stabilizer
            raise UsageError(f"parameter epsilon={epsilon:g}: must be > 0 (use rule z for no stabilizer)")
        return R.epsilon_rule(epsilon=epsilon, bias=name == "epsilon")
    if name == "w_square":
        return R.w_square_rule(bias=style["square_bias"], **stab)
    if name == "flat":
        return R.flat_rule(**stab)
    if name in ("alpha_beta", "alpha_beta_IB", "z_plus"):
        alpha = _real(spec, "alpha", 1.0 if name == "z_plus" else 2.0)
        beta = _real(spec, "beta", 0.0 if name == "z_plus" else 1.0)
        if alpha < 0 or beta < 0 or alpha - beta != 1:  # conservation; both references refuse the rest
            raise UsageError(f"parameters alpha={alpha:g}, beta={beta:g}: need alpha, beta >= 0 and "
                             "alpha - beta = 1 (iNNvestigate and Zennit refuse other values)")
        bias = name == "alpha_beta" and bool(spec.get("bias", True))
        return R.alpha_beta_rule(alpha, beta, bias=bias, bias_style=style["bias_style"], **stab)
    if name == "z_plus_fast":
        return R.z_plus_fast_rule(**stab)
    if name == "gamma":
        gamma = _real(spec, "gamma", 0.25)
        if not gamma >= 0:
            raise UsageError(f"parameter gamma={gamma:g}: must be >= 0")
        return R.gamma_rule(gamma=gamma, **stab)
    if name == "zbox":
        try:
            ordered = np.all(np.asarray(spec["low"], np.float64) <= np.asarray(spec["high"], np.float64))
        except (TypeError, ValueError):
            raise UsageError(f"zbox bounds low (shape {np.shape(spec['low'])}) and high (shape "
                             f"{np.shape(spec['high'])}): need numbers or arrays of numbers that broadcast to "
                             "each other and to the input") from None
        if not ordered:
            raise UsageError(f"zbox bounds low={spec['low']}, high={spec['high']}: need low <= high")
        return R.zbox_rule(low=spec["low"], high=spec["high"], **stab)
    raise KeyError(name)


RULE_NAMES = ("z", "z_IB", "epsilon", "epsilon_IB", "w_square", "flat", "alpha_beta", "alpha_beta_IB",
              "z_plus", "z_plus_fast", "gamma", "zbox", "pass", "gradient")
