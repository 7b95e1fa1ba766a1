"""Feature ablation, as Captum's FeatureAblation computes it: the input's features are split into groups by a
``feature_mask`` (one group id per feature, shared by every sample; by default every feature is a group of
its own), each group in turn is replaced by a baseline, and every feature of the group gets the drop of the
selected output

    R_i = y(x) - y(x with the group of i ablated)

The ablated copies run in chunks inside one forward-only ONNX Loop (methods/perturbation.py, as occlusion's
windows do); the mask is baked into the compiled model.

Feature permutation (Captum's FeaturePermutation, permutation feature importance) replaces the group by the
same features of other samples of the batch instead of a baseline:

    R_i = y(x) - y(x with the group of i taken from the samples x_perm(n), for each sample n)

with a random permutation ``perm`` of the batch's rows for every group, uniform over all but the identity (as
Captum redraws torch.randperm until it moves a row). It needs a batch of two samples or more, and a sample's map
depends on the other samples of its batch.
"""

from __future__ import annotations

from onnxattr.errors import UnsupportedModelError
from onnxattr.methods.base import Method, Target, chunk_param, register_method
from onnxattr.methods.draws import SEED, non_identity_permutations
from onnxattr.methods.feature_groups import FEATURE_MASK, feature_groups
from onnxattr.methods.perturbation import BASELINES, MAX_PERTURBATIONS, perturbation_loop, perturbed_features
from onnxattr.sampling import checked


def _too_many(method: str, what: str):
    def check(count: int) -> str | None:
        if count > MAX_PERTURBATIONS:
            return (f"{method} would run {count} {what}; at most {MAX_PERTURBATIONS}: group the features with a "
                    "feature_mask")
        return None
    return check


def _group_masks(t: Target, groups: str, rank: int):
    def masks(cb, ks):
        k = cb.op("Reshape", [ks, cb.ints([-1] + [1] * (rank + 1))])  # [c, 1, 1...]
        return cb.op("Cast", [cb.op("Equal", [cb.op("Unsqueeze", [groups, cb.ints([0])]), k])],
                     to=t.b.float_type(t.x))  # [c, 1, *F']
    return masks


def build_feature_ablation(t: Target, p: dict) -> str:
    features = perturbed_features(t, "feature_ablation", "groups")
    groups, count, feats = feature_groups(t, p, features, _too_many("feature_ablation", "ablations"), 1, "ablations")
    return perturbation_loop(t, p, "feature_ablation", count, feats, _group_masks(t, groups, len(features)))


def build_feature_permutation(t: Target, p: dict) -> str:
    b, x = t.b, t.x
    features = perturbed_features(t, "feature_permutation", "shuffles")
    if b.shape(x)[0] == 1:
        raise UnsupportedModelError(f"feature_permutation shuffles each feature group between the samples of a "
                                    f"batch, and '{x}' holds one sample (a fixed batch of 1): export the model with "
                                    "a batch axis of two or more (or a dynamic one)")
    groups, count, feats = feature_groups(t, p, features, _too_many("feature_permutation", "permutations"), 1,
                                          "permutations")
    n = b.op("Slice", [b.op("Shape", [x]), b.ints([0]), b.ints([1])])
    count = b.const(count, "int64") if isinstance(count, int) else count
    count = checked(b, count, b.op("Reshape", [b.op("Greater", [n, b.ints([1])]), b.ints([])]), "batch")

    def shuffled(cb, x_, ks, c):
        rows = cb.op("Slice", [cb.op("Shape", [x_]), cb.ints([0]), cb.ints([1])])
        return cb.op("Gather", [x_, non_identity_permutations(cb, c, rows, p["seed"], 0)], axis=0)  # [c, N, *F]

    return perturbation_loop(t, p, "feature_permutation", count, feats, _group_masks(t, groups, len(features)),
                             replacement_of=shuffled)


register_method(Method(
    "feature_ablation", "Feature ablation (Captum's FeatureAblation): each feature gets the drop of the selected "
    "output when its group (feature_mask) is replaced by a baseline.", build_feature_ablation,
    (FEATURE_MASK,
     BASELINES,
     chunk_param("ablations")),
))

register_method(Method(
    "feature_permutation", "Permutation feature importance (Captum's FeaturePermutation): each feature gets the drop "
    "of the selected output when its group (feature_mask) is shuffled between the samples of the batch "
    "(a batch of two or more).", build_feature_permutation,
    (FEATURE_MASK,
     SEED,
     chunk_param("permutations")),
    random=True, whole_batch=True,
))
