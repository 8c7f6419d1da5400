"""The per-iteration rebuild of METHOD §5: reddening update, C_y, whitening factor, reduced χ².

Done once per iteration for every star (not per step), vectorized with :func:`jax.vmap` and
batched with :func:`~photoinfer.batching.map_batched`.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .. import likelihood as lik
from ..batching import map_batched
from ..model import network

__all__ = ["star_whitening", "star_cut_chi2", "star_rebuild", "whitening_all", "rebuild_all"]


def star_whitening(params, theta_med, theta_std, s: lik.StarData, E, sigma_E, first: bool):
    """Whitening factor W of one star for the training loss (METHOD §3), shape (B, B).

    ``first=True`` (iteration 0): C_y without the Jacobian and σ_E terms.  Otherwise the full
    C_y with J = ∂[A M + E A R]/∂θ and σ_E.  Both with the released diagonal stabilization.
    """
    C = lik.star_covariance(params, theta_med, theta_std, s, E, 0.0 if first else sigma_E,
                            with_jacobian=not first, jacobian_extinction=True, stabilize=True)
    return lik.whitening_matrix(C, s.y_obs)


def star_cut_chi2(params, theta_med, theta_std, s: lik.StarData, E):
    """χ² used by the outlier cut (METHOD §5, §9): rᵀ P₀ r at the updated E.

    P₀ is the precision of the reddening update (photometric, parallax and J_M C_θ J_Mᵀ terms,
    no σ_E, no stabilization) and r = ŷ − A M(θ̂) − E A R(θ̂) on the observed components.
    Returns (χ², n_obs).
    """
    C0 = lik.star_covariance(params, theta_med, theta_std, s, 0.0, 0.0, jacobian_extinction=False, stabilize=False)
    P0 = lik.precision_matrix(C0, s.y_obs)
    r = (s.y_hat - network.predict_y(params, theta_med, theta_std, s.theta, E)) * s.y_obs
    return r @ P0 @ r, jnp.sum(s.y_obs)


def star_rebuild(params, theta_med, theta_std, s: lik.StarData):
    """Everything one star needs after an iteration: (E, var_E, W, cut χ², n_obs).

    E, var_E: the reddening update of METHOD §4 as
    :func:`~photoinfer.likelihood.star_reddening_update` builds it (prior fixed; C₀ with J_M only,
    no σ_E, no stabilization); W: the whitening factor of the full C_y at (E, √var_E) with
    J = J_M + E·∂(A R)/∂θ, stabilized (as :func:`star_whitening`); cut χ² = rᵀP₀r at E
    (as :func:`star_cut_chi2`).  One Jacobian evaluation and one P₀ serve all three.
    """
    def parts(th):
        x = network.standardize(th, theta_med, theta_std)
        return network.colour_basis_absolute(params, x), network.to_colour_basis(network.extinction_vector(params, x))

    am, aR = parts(s.theta)
    J_M, J_R = jax.jacfwd(parts)(s.theta)
    C0 = lik.covariance_y(s.sigma_m, s.sigma_mu, 0.0, aR, J_M, s.theta_cov)
    W0 = lik.whitening_matrix(C0, s.y_obs)
    P0 = W0.T @ W0  # = likelihood.precision_matrix(C0, y_obs), without a general inverse
    d = (s.y_hat - am) * s.y_obs
    E, var = lik.reddening_update(P0, aR, d, s.E0, s.sigma_E0)
    r = d - E * aR * s.y_obs
    C = lik.stabilize_diagonal(lik.covariance_y(s.sigma_m, s.sigma_mu, jnp.sqrt(var), aR, J_M + E * J_R, s.theta_cov))
    Wr = W0 @ r
    return E, var, lik.whitening_matrix(C, s.y_obs), Wr @ Wr, jnp.sum(s.y_obs)


@partial(jax.jit, static_argnames=("first",))
def _whitening_batch(params, med, std, s, E, sigma_E, first):
    return jax.vmap(lambda si, e, se: star_whitening(params, med, std, si, e, se, first))(s, E, sigma_E)


@jax.jit
def _rebuild_batch(params, med, std, s):
    return jax.vmap(lambda si: star_rebuild(params, med, std, si))(s)


def _finite(a, fill=0.0):
    return np.where(np.isfinite(a), a, fill)


def whitening_all(params, theta_med, theta_std, data: lik.StarData, E, sigma_E, first: bool,
                  batch_size: int = 8192) -> np.ndarray:
    """W for every star, (N, B, B) float32; non-finite entries (unusable stars) set to 0."""
    W = map_batched(lambda a: _whitening_batch(params, theta_med, theta_std, *a, first),
                    (data, np.asarray(E, np.float32), np.asarray(sigma_E, np.float32)), batch_size)
    return _finite(W).astype(np.float32)


def rebuild_all(params, theta_med, theta_std, data: lik.StarData, batch_size: int = 8192):
    """:func:`star_rebuild` for every star.

    Returns
    -------
    E, var_E : (N,) float32
    W : (N, B, B) float32 (non-finite entries set to 0)
    reduced_chi2 : (N,) float64, cut χ²/(n_obs − 1) (NaN where undefined)
    n_obs : (N,) int
    """
    E, var, W, c2, n_obs = map_batched(lambda s: _rebuild_batch(params, theta_med, theta_std, s), data, batch_size)
    with np.errstate(invalid="ignore", divide="ignore"):
        red = np.where(n_obs > 1, c2.astype(np.float64) / (n_obs - 1), np.nan)
    return E, var, _finite(W).astype(np.float32), red, n_obs
