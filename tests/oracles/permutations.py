"""Random draws the oracle scripts share: the expectation of Captum's FeaturePermutation over its random
permutations, to check feature permutation exactly, and coalitions drawn as Captum's KernelShap draws them, given
to Captum as its perturb_func so that Captum and onnxattr evaluate the same ones (make_torch.py on the nets'
outputs, make_captum_loss.py on losses over the batch; benchmarks/solve_scale.py draws its designs here too)."""

import itertools

import numpy as np


def permutation_mean(value, x, groups):
    """Per group g of ``groups`` (integer ids broadcasting to one sample), the mean of value(x) - value(x with g
    taken from x[p]) over every permutation p of x's rows but the identity (torch.randperm redrawn until it
    moves a row, so each of the n! - 1 is equally likely), on g's features. ``value`` gives one number per
    sample ([N]) or one for the batch (a loss); the result broadcasts to x ([N, ...] or [1, ...])."""
    rows = x.shape[0]
    perms = [list(p) for p in itertools.permutations(range(rows)) if list(p) != list(range(rows))]
    import torch

    out = torch.zeros(())
    with torch.no_grad():
        clean = value(x)
        for g in np.unique(groups):
            member = torch.from_numpy(groups == g)
            drop = sum(clean - value(torch.where(member, x[p], x)) for p in perms) / len(perms)
            out = out + drop.reshape((-1,) + (1,) * (x.ndim - 1)) * member.to(x.dtype)
    return out


def kernel_shap_coalitions(groups: int, count: int, rng) -> np.ndarray:
    """Captum's KernelShap draws, made with numpy: the full and the empty coalition, then coalitions of k groups,
    k from p(k) ~ (G - 1) / (k (G - k)), every k-subset alike."""
    k = np.arange(1, groups)
    p = (groups - 1) / (k * (groups - k))
    rows = [np.ones(groups), np.zeros(groups)]
    for size in rng.choice(k, size=count - 2, p=p / p.sum()):
        row = np.zeros(groups)
        row[rng.permutation(groups)[:size]] = 1
        rows.append(row)
    return np.array(rows, np.int64)


def given_as_perturb_func(coalitions):
    """A generator function that Captum's LimeBase takes as its perturb_func: the rows of ``coalitions`` in order,
    as [1, G] tensors (restarted for every sample)."""
    import torch

    def stored(original_inp, **kwargs):
        for row in coalitions:
            yield torch.from_numpy(row[None])

    return stored
