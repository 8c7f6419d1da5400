"""The training schedule of METHOD §5: data split, learning rates, outlier-cut thresholds."""
from __future__ import annotations

import numpy as np

__all__ = ["split_labels", "learning_rate", "cut_threshold", "TRAIN", "VALIDATION", "TEST", "SPLIT_NAMES"]

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")


def split_labels(n: int, seed: int, fractions=(0.7, 0.2, 0.1)) -> np.ndarray:
    """Random train/validation/test labels for ``n`` stars (0/1/2), seeded (METHOD §5: 70/20/10).

    The first ``round(f_train n)`` stars of a seeded permutation are training stars, the next
    ``round(f_val n)`` validation, the rest test.

    Returns
    -------
    (n,) int8
    """
    f = np.asarray(fractions, float)
    if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(f[0] * n))
    n_val = int(round(f[1] * n))
    labels = np.full(n, TEST, np.int8)
    labels[perm[:n_train]] = TRAIN
    labels[perm[n_train:n_train + n_val]] = VALIDATION
    return labels


def learning_rate(k: int, base: float = 1e-3, decay: float = 0.2) -> float:
    """Adam learning rate of iteration k: base·exp(−decay·k) (METHOD §5: 1e-3·exp(−0.2k))."""
    return float(base * np.exp(-decay * k))


def cut_threshold(k: int, start: float = 100.0, end: float = 5.0, k_end: int = 14) -> float:
    """Reduced-χ² threshold of the outlier cut made after iteration k (METHOD §5).

    Falls geometrically from ``start`` (after iteration 0) to ``end`` (after iteration ``k_end``),
    then stays at ``end``: t(k) = start·(end/start)^(k/k_end) for k <= k_end.
    """
    if k < 0:
        raise ValueError(f"iteration must be >= 0, got {k}")
    return float(end if k >= k_end else start * (end / start) ** (k / k_end))
