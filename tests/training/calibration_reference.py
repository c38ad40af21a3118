"""Calibration in numpy float64, written from the definitions, for normfold.calibrate's tests.

In train mode each BN normalizes with its batch's mean and biased variance, so a chain of BNs is followed
batch by batch; the statistics are then combined by each method's definition, not by Chan's merge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Params = tuple[np.ndarray, np.ndarray, float]  # gamma, beta, epsilon


def channel_values(x: np.ndarray) -> np.ndarray:
    """Every value of each channel (axis 1) of x, one row per channel."""
    return np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)


def bn_inputs(x: np.ndarray, chain: Sequence[Params]) -> list[np.ndarray]:
    """What each BN of a chain x -> BN -> BN -> ... sees in train mode: one array per BN, in float64."""
    seen, current = [], x.astype(np.float64)
    for gamma, beta, eps in chain:
        seen.append(current)
        rows = channel_values(current)
        shape = (1, -1) + (1,) * (current.ndim - 2)
        mean, var = rows.mean(axis=1).reshape(shape), rows.var(axis=1).reshape(shape)
        current = gamma.reshape(shape) * (current - mean) / np.sqrt(var + eps) + beta.reshape(shape)
    return seen


def pooled(inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The mean and population variance of all the values a BN saw, over every batch."""
    rows = np.concatenate([channel_values(x) for x in inputs], axis=1)
    return rows.mean(axis=1), rows.var(axis=1)


def averaged_unbiased(inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's momentum=None: the plain averages over batches of the batch mean and unbiased variance."""
    means = [channel_values(x).mean(axis=1) for x in inputs]
    variances = [channel_values(x).var(axis=1, ddof=1) for x in inputs]
    return np.mean(means, axis=0), np.mean(variances, axis=0)


def running(
    inputs: Sequence[np.ndarray], mean: np.ndarray, var: np.ndarray, momentum: float, unbiased: bool
) -> tuple[np.ndarray, np.ndarray]:
    """ONNX's update per batch from the stored statistics, with the biased or the unbiased batch variance."""
    mean, var = mean.astype(np.float64), var.astype(np.float64)
    for x in inputs:
        rows = channel_values(x)
        mean = momentum * mean + (1 - momentum) * rows.mean(axis=1)
        var = momentum * var + (1 - momentum) * rows.var(axis=1, ddof=1 if unbiased else 0)
    return mean, var
