"""The E·R scale step (an option of training): the one direction the photometry cannot see.

Scaling every R_b(θ) by s and every star's E by 1/s leaves every model magnitude M_b + E·R_b, hence
the whole photometric and parallax χ², exactly unchanged.  Only the reddening priors N(E₀, σ_E₀²)
(and the clipping E ≥ 0) fix s.  Training alternates a network fit at fixed Ê with the closed-form
Ê at a fixed network (METHOD §5), and the σ_E² (AR)(AR)ᵀ term of C_y makes each star's loss nearly flat
along A R: the scale then drifts with the optimization (measured: R 4 % low to 10 % high with the same
mock and schedule, docs/benchmarks.md) instead of settling where the priors put it.

The step maximizes the likelihood of s exactly, once per iteration: with each star's photometric-only
reddening e_i = b_i/q_i (q_i = aᵀP₀a, b_i = aᵀP₀d of METHOD §4, precision q_i) at the current network,
after the scale e_i/s with precision s²q_i, and the prior E_i ~ N(E₀_i, σ_i²),

    −2 ln L(s) = Σ_i (b_i − s q_i E₀_i)² / (q_i (1 + s² q_i σ_i²)) + ln(1 + s² q_i σ_i²) + const,

minimized over s on the training stars that pass the cut; then R's output bias gets + ln s
(R = exp(x·W + b), so R → s R exactly; the L1 penalty is on W and does not change).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import likelihood as lik
from ..batching import map_batched
from ..model import network

__all__ = ["photometric_reddening", "scale_nll", "best_scale", "apply_scale"]


def _star_qb(params, theta_med, theta_std, s: lik.StarData):
    x = network.standardize(s.theta, theta_med, theta_std)
    aR = network.to_colour_basis(network.extinction_vector(params, x))
    C0 = lik.star_covariance(params, theta_med, theta_std, s, 0.0, 0.0, jacobian_extinction=False, stabilize=False)
    P0 = lik.precision_matrix(C0, s.y_obs)
    d = (s.y_hat - network.colour_basis_absolute(params, x)) * s.y_obs
    return aR @ P0 @ aR, aR @ P0 @ d


@jax.jit
def _qb_batch(params, med, std, s):
    return jax.vmap(lambda si: _star_qb(params, med, std, si))(s)


def photometric_reddening(params, theta_med, theta_std, data: lik.StarData, batch_size: int = 8192):
    """(q, b), each (N,): the photometric precision aᵀP₀a and aᵀP₀d of each star's reddening (METHOD §4)."""
    q, b = map_batched(lambda s: _qb_batch(params, theta_med, theta_std, s), data, batch_size)
    return np.asarray(q, np.float64), np.asarray(b, np.float64)


def scale_nll(s, q, b, E0, sigma_E0):
    """−2 ln L(s) of the module docstring (up to a constant), summed over stars."""
    v = 1.0 + s ** 2 * q * sigma_E0 ** 2
    return float(np.sum((b - s * q * E0) ** 2 / (q * v) + np.log(v)))


def best_scale(q, b, E0, sigma_E0, bounds=(0.8, 1.25)) -> float:
    """The s minimizing :func:`scale_nll` (stars with q > 0 and finite inputs) within ``bounds`` (a
    guard for a network still far from the data: a step at a bound is repeated next iteration)."""
    from scipy.optimize import minimize_scalar
    ok = np.isfinite(q) & np.isfinite(b) & np.isfinite(E0) & np.isfinite(sigma_E0) & (q > 1e-12) & (sigma_E0 > 0)
    if not ok.any():
        return 1.0
    args = (q[ok], b[ok], E0[ok], sigma_E0[ok])
    res = minimize_scalar(lambda s: scale_nll(s, *args), bounds=bounds, method="bounded", options={"xatol": 1e-6})
    return float(res.x)


def apply_scale(params, s: float):
    """Parameters with R → s·R (``R.bias`` + ln s)."""
    out = dict(params)
    out["R"] = {**params["R"], "bias": params["R"]["bias"] + jnp.asarray(np.log(s), params["R"]["bias"].dtype)}
    return out
