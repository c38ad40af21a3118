"""The seed's pseudo-algorithms (shared/seed: BatchNorm 1.8, Dropout 2.8) in numpy, in the seed's own terms.

Conventions differ from ONNX's: the seed's momentum alpha weights the NEW batch statistic
(mu_E <- (1 - alpha) mu_E + alpha mu_B) while ONNX `momentum` weights the OLD running value, so
ONNX momentum = 1 - alpha. The seed's Dropout p is the KEEP probability; ONNX `ratio` = 1 - p.
"""

from __future__ import annotations

import numpy as np


def batchnorm_train(x, gamma, beta, mu_e, var_e, alpha, eps, unbiased=False):
    """Seed 1.8, training: normalize with batch statistics (biased variance), update the running ones.

    `unbiased` updates the running variance with PyTorch's var_B * m / (m - 1), m = values per channel
    (the seed leaves var's estimator open; ONNX's spec, and normfold's default, use the biased one).
    """
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mu_b = x.mean(axis=axes)
    var_b = ((x - mu_b.reshape(shape)) ** 2).mean(axis=axes)
    x_hat = (x - mu_b.reshape(shape)) / np.sqrt(var_b.reshape(shape) + eps)
    y = gamma.reshape(shape) * x_hat + beta.reshape(shape)
    m = x.size // x.shape[1]
    update = var_b * m / (m - 1) if unbiased else var_b
    return y, (1 - alpha) * mu_e + alpha * mu_b, (1 - alpha) * var_e + alpha * update


def batchnorm_inference(x, gamma, beta, mu_e, var_e, eps):
    """Seed 1.8, inference: normalize with the running statistics."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return gamma.reshape(shape) * (x - mu_e.reshape(shape)) / np.sqrt(var_e.reshape(shape) + eps) + beta.reshape(shape)


def dropout_train(x, p, rng):
    """Seed 2.8, training: m ~ Bernoulli(p) (p = keep probability), y = m / p * x."""
    mask = rng.random(x.shape) < p
    return mask / p * x, mask
