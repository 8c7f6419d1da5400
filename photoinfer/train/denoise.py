"""De-noised θ for training (an option): Tweedie's formula E[θ | θ̂] ≈ θ̂ + C_θ ∇ ln p(θ̂).

Training regresses ŷ on the *measured* θ̂, so the network learns E[M(θ) | θ̂], which differs from M(θ̂)
where the θ density is steep (the main sequence in logg, subgiants, the giant branch): an
errors-in-variables bias that the J C_θ Jᵀ term of C_y does not remove (it only weights).  Feeding
the network the posterior mean θ̃ = E[θ | θ̂] instead removes the first-order part of that bias:
E[M(θ) | θ̂] = M(θ̃) + O(∂²M · Cov[θ | θ̂]).  With Gaussian errors, Tweedie's formula gives θ̃ exactly
from the density p of the measured θ̂:  θ̃ = θ̂ + C_θ ∇ ln p(θ̂).

Here p is a Gaussian KDE of the training stars' θ̂ (bandwidth ``bandwidth``), binned on a fine grid
(``step``), its log gradient by central differences, linearly interpolated at each star.  The formula
is exact for stars sharing one C_θ; for a star whose C_θ differs from the typical one, p is the
density of θ̂ under the typical errors, so the shift is approximate (too large for much noisier stars).
"""
from __future__ import annotations

import numpy as np

__all__ = ["log_density_gradient", "tweedie_theta", "DENOISE", "TWEEDIE_BANDWIDTH"]

#: Values of ``TrainConfig.theta_denoise``.
DENOISE = ("none", "tweedie")
#: KDE bandwidth of the θ̂ density [K, dex, dex].
TWEEDIE_BANDWIDTH = (50.0, 0.08, 0.05)


def log_density_gradient(theta, at, bandwidth=TWEEDIE_BANDWIDTH, step=None):
    """∇ ln p at the points ``at`` (M, 3), p the Gaussian KDE of ``theta`` (N, 3) [per K, per dex, per dex].

    The KDE is a histogram on a grid of spacing ``step`` (default half the bandwidth) smoothed by a
    Gaussian of ``bandwidth``; points outside the grid get the gradient of the nearest grid cell.
    """
    from scipy.ndimage import gaussian_filter, map_coordinates
    theta = np.asarray(theta, np.float64)
    at = np.asarray(at, np.float64)
    h = np.asarray(bandwidth, np.float64)
    step = h / 2 if step is None else np.asarray(step, np.float64)
    lo = np.percentile(theta, 0.05, axis=0) - 4 * h
    hi = np.percentile(theta, 99.95, axis=0) + 4 * h
    nb = np.ceil((hi - lo) / step).astype(int) + 1
    hist, _ = np.histogramdd(theta, bins=tuple(nb), range=list(zip(lo, lo + nb * step)))
    dens = gaussian_filter(hist, h / step, mode="constant", truncate=4.0)
    logd = np.log(dens + 1e-6 * dens.max())  # (the floor keeps ln p finite far from every star)
    grads = np.gradient(logd, *step)
    idx = ((at - lo) / step - 0.5).T
    return np.stack([map_coordinates(g, idx, order=1, mode="nearest") for g in grads], axis=-1)


def tweedie_theta(theta, theta_cov, reference=None, bandwidth=TWEEDIE_BANDWIDTH):
    """θ̃ = θ̂ + C_θ ∇ ln p(θ̂) for each star, (N, 3).

    Parameters
    ----------
    theta : (N, 3) measured θ̂; theta_cov : (N, 3, 3) C_θ
    reference : (M, 3), optional
        The θ̂ whose density is p (default ``theta``; training uses its usable training stars).
    """
    theta = np.asarray(theta, np.float64)
    ref = theta if reference is None else np.asarray(reference, np.float64)
    g = log_density_gradient(ref, theta, bandwidth)
    return theta + np.einsum("nij,nj->ni", np.asarray(theta_cov, np.float64), g)
