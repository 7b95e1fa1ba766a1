"""Feature ablation, as Captum's FeatureAblation computes it: the input's features are split into groups by a
``feature_mask`` (one group id per feature, shared by every sample; by default every feature is a group of
its own), each group in turn is replaced by a baseline, and every feature of the group gets the drop of the
selected output

    R_i = y(x) - y(x with the group of i ablated)

The ablated copies run in chunks inside one forward-only ONNX Loop (methods/perturbation.py, as occlusion's
windows do); the mask is baked into the compiled model.
"""

from __future__ import annotations

from onnxattr.methods.base import Method, Param, Target, parse_int, positive_int, register_method
from onnxattr.methods.feature_groups import FEATURE_MASK, feature_groups
from onnxattr.methods.perturbation import BASELINES, MAX_PERTURBATIONS, perturbation_loop, perturbed_features


def _too_many(count: int) -> str | None:
    if count > MAX_PERTURBATIONS:
        return (f"feature_ablation would run {count} ablations; at most {MAX_PERTURBATIONS}: group the features "
                "with a feature_mask")
    return None


def build_feature_ablation(t: Target, p: dict) -> str:
    b, x = t.b, t.x
    features = perturbed_features(t, "feature_ablation", "groups")
    rank = len(features)
    groups, count, feats = feature_groups(t, p, features, _too_many, 1, "ablations")

    def masks(cb, ks):
        k = cb.op("Reshape", [ks, cb.ints([-1] + [1] * (rank + 1))])  # [c, 1, 1...]
        return cb.op("Cast", [cb.op("Equal", [cb.op("Unsqueeze", [groups, cb.ints([0])]), k])],
                     to=b.float_type(x))  # [c, 1, *F']

    return perturbation_loop(t, p, "feature_ablation", count, feats, masks)


register_method(Method(
    "feature_ablation", "Feature ablation (Captum's FeatureAblation): each feature gets the drop of the selected "
    "output when its group (feature_mask) is replaced by a baseline.", build_feature_ablation,
    (FEATURE_MASK,
     BASELINES,
     Param("chunk_size", 16, "ablations per Loop iteration (bounds memory)", parse_int, positive_int)),
))
