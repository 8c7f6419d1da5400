"""The training likelihood (METHOD §3) and the reddening update (METHOD §4).

Everything here is a pure JAX function of one star; batches use :func:`jax.vmap`.
Shapes: B bands; y is the magnitude–colour vector (reference magnitude, then X − ref).
Unobserved components of y are handled exactly: the covariance is restricted to the
observed components (identity elsewhere) and the unobserved columns of the whitening
matrix are zero, so they contribute nothing to χ².
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import linalg as la
from .conventions import colour_matrix
from .model import network

__all__ = [
    "StarData", "distance_modulus_from_parallax", "observed_components", "target_y",
    "photometric_covariance", "covariance_y", "stabilize_diagonal", "whitening_matrix", "precision_matrix",
    "model_jacobian", "chi2", "reddening_update", "star_data_from_arrays",
]

LN10 = float(np.log(10.0))
#: Released clipping of the reddening update (METHOD §4).
E_RANGE = (0.0, 10.0)
VAR_E_MAX = 100.0


class StarData(NamedTuple):
    """Per-star arrays the likelihood needs; leading axis N (stars) when batched.

    Attributes
    ----------
    y_hat : (B,) target ŷ = A m̂ − μ̂ e₁ [mag]; 0 where unobserved
    y_obs : (B,) bool, which components of ŷ are observed
    sigma_m : (B,) photometric errors [mag]; 1 where the band is unobserved (unused there)
    sigma_mu : () distance-modulus error [mag]; 0 where μ̂ is unobserved
    theta : (3,) measured θ [K, dex, dex]
    theta_cov : (3, 3) its covariance
    E0, sigma_E0 : () reddening prior
    """

    y_hat: jax.Array
    y_obs: jax.Array
    sigma_m: jax.Array
    sigma_mu: jax.Array
    theta: jax.Array
    theta_cov: jax.Array
    E0: jax.Array
    sigma_E0: jax.Array


def distance_modulus_from_parallax(parallax, parallax_err, max_frac_err: float = 0.2):
    """μ̂ = 10 − 5 log10 ϖ̂ and σ_μ = (5/ln 10) σ_ϖ/ϖ̂ (METHOD §3).

    Parameters
    ----------
    parallax, parallax_err : array [mas]

    Returns
    -------
    mu, sigma_mu : array [mag] (0 where unusable)
    good : bool array, ϖ̂ > 0 and σ_ϖ/ϖ̂ <= ``max_frac_err``
    """
    parallax = np.asarray(parallax, np.float64)
    parallax_err = np.asarray(parallax_err, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = parallax_err / parallax
        good = np.isfinite(frac) & (parallax > 0) & (parallax_err > 0) & (frac <= max_frac_err)
        mu = np.where(good, 10.0 - 5.0 * np.log10(np.where(good, parallax, 1.0)), 0.0)
        sigma_mu = np.where(good, 5.0 / LN10 * frac, 0.0)
    return mu, sigma_mu, good


def observed_components(mag_obs, mu_good):
    """Which components of y are observed: y₁ needs the reference band and μ̂; y_b needs bands b and 1.

    Parameters
    ----------
    mag_obs : bool array, shape (..., B)
    mu_good : bool array, shape (...)
    """
    mag_obs = np.asarray(mag_obs, bool)
    ref = mag_obs[..., :1]
    return np.concatenate([ref & np.asarray(mu_good)[..., None], mag_obs[..., 1:] & ref], axis=-1)


def target_y(mag, mu, y_obs):
    """ŷ = A m̂ − μ̂ e₁ (METHOD §3), 0 at unobserved components.  Shapes (..., B), (...), (..., B)."""
    mag = np.asarray(mag, np.float64)
    y = mag.copy()
    y[..., 1:] -= mag[..., :1]
    y[..., 0] -= mu
    return np.where(y_obs, np.nan_to_num(y), 0.0)


def star_data_from_arrays(mag, mag_err, parallax, parallax_err, theta, theta_cov, E0, sigma_E0,
                          max_parallax_frac_err: float = 0.2) -> StarData:
    """Assemble :class:`StarData` for N stars from plain arrays (NaN marks an unobserved band).

    Parameters
    ----------
    mag, mag_err : (N, B) [mag]
    parallax, parallax_err : (N,) [mas]
    theta : (N, 3); theta_cov : (N, 3, 3)
    E0, sigma_E0 : (N,)
    """
    mag = np.asarray(mag, np.float64)
    mag_err = np.asarray(mag_err, np.float64)
    mag_obs = np.isfinite(mag) & np.isfinite(mag_err) & (mag_err > 0)
    mu, sigma_mu, good = distance_modulus_from_parallax(parallax, parallax_err, max_parallax_frac_err)
    y_obs = observed_components(mag_obs, good)
    f32 = lambda a: jnp.asarray(np.asarray(a), jnp.float32)  # noqa: E731
    return StarData(y_hat=f32(target_y(mag, mu, y_obs)), y_obs=jnp.asarray(y_obs),
                    sigma_m=f32(np.where(mag_obs, mag_err, 1.0)), sigma_mu=f32(sigma_mu),
                    theta=f32(np.nan_to_num(theta)), theta_cov=f32(np.nan_to_num(theta_cov)),
                    E0=f32(np.nan_to_num(E0)), sigma_E0=f32(np.nan_to_num(sigma_E0, nan=1.0)))


def photometric_covariance(sigma_m):
    """A diag(σ_m²) Aᵀ, shape (B, B) [mag²]: the reference band's variance enters every colour."""
    A = jnp.asarray(colour_matrix(sigma_m.shape[-1]), sigma_m.dtype)
    return (A * sigma_m ** 2) @ A.T


def covariance_y(sigma_m, sigma_mu, sigma_E, aR, J, theta_cov):
    """C_y = A diag(σ_m²) Aᵀ + σ_μ² e₁e₁ᵀ + σ_E² (AR)(AR)ᵀ + J C_θ Jᵀ (METHOD §3).

    Parameters
    ----------
    sigma_m : (B,) [mag]; sigma_mu, sigma_E : (); aR : (B,) A·R(θ̂); J : (B, 3); theta_cov : (3, 3)

    Returns
    -------
    (B, B) [mag²]
    """
    C = photometric_covariance(sigma_m)
    C = C.at[0, 0].add(sigma_mu ** 2)
    return C + sigma_E ** 2 * jnp.outer(aR, aR) + J @ theta_cov @ J.T


def stabilize_diagonal(C, absolute: float = 1e-4, relative: float = 1e-3):
    """C + diag(absolute + relative·diag(C)) (the released stabilization, METHOD §3)."""
    d = jnp.diagonal(C)
    return C + jnp.diag(absolute + relative * d)


def _restrict(C, y_obs):
    mask = y_obs[:, None] & y_obs[None, :]
    return jnp.where(mask, C, jnp.eye(C.shape[-1], dtype=C.dtype))


def whitening_matrix(C, y_obs):
    """W with Wᵀ W = P (the precision on the observed components, 0 elsewhere).

    The whitened residual is r = W (ŷ − ŷ_model) and χ² = ‖r‖²; W = L⁻¹ with L the Cholesky
    factor of C restricted to the observed components, its unobserved columns zeroed.

    Parameters
    ----------
    C : (B, B); y_obs : (B,) bool

    Returns
    -------
    W : (B, B), lower-triangular
    """
    return la.inverse_lower(la.cholesky(_restrict(C, y_obs))) * y_obs[None, :]


def precision_matrix(C, y_obs):
    """P = C⁻¹ on the observed components, 0 in the unobserved rows and columns, shape (B, B)."""
    P = la.inv_spd(_restrict(C, y_obs))
    return P * (y_obs[:, None] & y_obs[None, :])


def model_jacobian(params, theta_med, theta_std, theta, E, with_extinction: bool = True):
    """J = ∂[A M(θ) + E A R(θ)]/∂θ at θ (physical units), shape (B, 3) (METHOD §3).

    With ``with_extinction=False``, J_M = ∂(A M)/∂θ, as the released reddening update uses.
    """
    E = E if with_extinction else 0.0
    return jax.jacfwd(lambda th: network.predict_y(params, theta_med, theta_std, th, E))(theta)


def chi2(W, residual):
    """χ² = ‖W r‖² for one star; W (B, B), residual (B,)."""
    return jnp.sum((W @ residual) ** 2)


def reddening_update(P0, aR, d, E0, sigma_E0, clip: bool = True):
    """The closed-form reddening posterior (paper Eqs. 8–9, METHOD §4).

    1/σ²_E,post = aᵀ P₀ a + 1/σ²_E₀;  E_post = σ²_E,post (aᵀ P₀ d + E₀/σ²_E₀).

    Parameters
    ----------
    P0 : (B, B) precision of ŷ − A M(θ̂) without the σ_E term
    aR : (B,) A R(θ̂)
    d : (B,) ŷ − A M(θ̂), 0 where unobserved
    E0, sigma_E0 : () prior
    clip : bool
        Apply the released clipping: E ∈ [0, 10], σ²_E ∈ [0.02² + (0.1 E)², 100].

    Returns
    -------
    E_post, var_post : ()
    """
    inv_var = aR @ P0 @ aR + 1.0 / sigma_E0 ** 2
    var = 1.0 / inv_var
    E = var * (aR @ P0 @ d + E0 / sigma_E0 ** 2)
    if clip:
        E = jnp.clip(E, *E_RANGE)
        var = jnp.clip(var, 0.02 ** 2 + (0.1 * E) ** 2, VAR_E_MAX)
    return E, var


# ---------------------------------------------------------------------- per-star compositions
def star_covariance(params, theta_med, theta_std, s: StarData, E, sigma_E, *, with_jacobian: bool = True,
                    jacobian_extinction: bool = True, stabilize: bool = True):
    """C_y of one star at reddening (E, σ_E) (METHOD §3), shape (B, B).

    Parameters
    ----------
    with_jacobian : bool
        Include J C_θ Jᵀ (iteration 0 of training leaves it out, with σ_E = 0).
    jacobian_extinction : bool
        J includes E ∂(A R)/∂θ (True, as METHOD §3 and §9) or only ∂(A M)/∂θ (the released update).
    stabilize : bool
        Apply :func:`stabilize_diagonal`.
    """
    x = network.standardize(s.theta, theta_med, theta_std)
    aR = network.to_colour_basis(network.extinction_vector(params, x))
    J = model_jacobian(params, theta_med, theta_std, s.theta, E, jacobian_extinction)
    J = J if with_jacobian else jnp.zeros_like(J)
    C = covariance_y(s.sigma_m, s.sigma_mu, sigma_E, aR, J, s.theta_cov)
    return stabilize_diagonal(C) if stabilize else C


def star_chi2(params, theta_med, theta_std, s: StarData, E, sigma_E, **covariance_options):
    """χ² of one star at (E, σ_E) and its number of observed components of ŷ.

    Returns
    -------
    chi2 : ()
    n_obs : () int
    """
    W = whitening_matrix(star_covariance(params, theta_med, theta_std, s, E, sigma_E, **covariance_options), s.y_obs)
    r = s.y_hat - network.predict_y(params, theta_med, theta_std, s.theta, E)
    return chi2(W, r), jnp.sum(s.y_obs)


def star_reddening_update(params, theta_med, theta_std, s: StarData, clip: bool = True):
    """The reddening update of one star, built as the released code builds it (METHOD §4).

    C₀ from the photometric and parallax terms and J_M C_θ J_Mᵀ (no σ_E, no E ∂R/∂θ, no
    stabilization); a = A R(θ̂); d = ŷ − A M(θ̂).  Returns (E_post, σ²_E,post).
    """
    x = network.standardize(s.theta, theta_med, theta_std)
    aR = network.to_colour_basis(network.extinction_vector(params, x))
    C0 = star_covariance(params, theta_med, theta_std, s, 0.0, 0.0, jacobian_extinction=False, stabilize=False)
    P0 = precision_matrix(C0, s.y_obs)
    d = (s.y_hat - network.colour_basis_absolute(params, x)) * s.y_obs
    return reddening_update(P0, aR, d, s.E0, s.sigma_E0, clip)
