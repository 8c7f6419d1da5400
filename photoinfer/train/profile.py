"""The profiled joint objective (``latent_theta="profile"``, and with ``"marginal"``): each star's θ and E profiled out to second
order inside every training step.

With ``latent_theta="fit"`` (:mod:`photoinfer.train.latent`) the epochs fit the network at fixed
per-star (θ_i, E_i) and the rebuild then moves them: block-coordinate descent, which converges slowly
where the photometry informs θ more than θ̂ does (main-sequence stars with a parallax: each (θ_i, E_i)
follows the network, so the network has little reason to move — measured: from scratch it stays
far from the truth, started at the truth it stays near it).  Here the loss of star i is instead its
term of the joint objective minimized over (θ_i, E_i) in the Gauss–Newton approximation about the
last fitted (θ*, E*), with the network's Jacobian J = ∂[A M + E A R]/∂(θ, E) at (θ*, E*) *live*
(differentiated with the rest):

    r₀ = W (ŷ − A M(θ*) − E* A R(θ*)),   d = (θ̂ − θ*, E₀ − E*),   Λ = diag(C_θ⁻¹, 1/σ²_E₀)
    H = (W J)ᵀ(W J) + Λ,   g = (W J)ᵀ r₀ + Λ d
    loss_i = ‖r₀‖² + dᵀΛd − gᵀ H⁻¹ g        (= min over δ of ‖r₀ − W J δ‖² + (δ − d)ᵀ Λ (δ − d))

Its gradient with respect to the network is that of the profile likelihood to first order, so the
network may move along directions where the stars' θ and E follow it.  At θ* = θ̂ and E* = E₀ with
J frozen this is the paper's loss with C_y = C_phot + J C_θ Jᵀ + σ²_E₀ (AR)(AR)ᵀ (Woodbury); the paper
freezes J in C_y, which makes its fit a weighted regression on θ̂ (attenuated), while the profile
with a live J is the Deming-type (functional maximum-likelihood) estimator.  In standardized θ
(x = (θ − med)/std), Λ's θ block is diag(std) C_θ⁻¹ diag(std).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import linalg as la
from ..model import network

__all__ = ["star_profile_loss", "profile_batch_loss", "standardized_measurement", "profile_aux",
           "with_population_prior"]


def star_profile_loss(params, x_star, E_star, x_hat, Lam_x, E0, ivar_E0, y, W, log_det: bool = False, plx=None,
                      galactic=None):
    """One star's profiled loss (module docstring); with ``log_det``, plus ln det H: the Laplace
    approximation of −2 ln ∫ L dθ dE (the marginal likelihood, θ and E integrated instead of profiled).

    Parameters
    ----------
    x_star : (3,) standardized fitted θ*; E_star : () fitted E*
    x_hat : (3,) standardized θ̂; Lam_x : (3, 3) its precision in standardized units (with a population
        prior: x̃ and Λ̃ of :func:`~photoinfer.train.population.combine_with_measurement`)
    E0, ivar_E0 : () reddening prior mean and 1/σ²_E₀
    y : (B,) ŷ; W : (B, B) photometric whitening factor
    plx : (3,), optional, with ``log_det``: the star's row of :func:`~photoinfer.train.parallax.weight_terms`, the
        parallax's weight in ln det H at the star's current μ (Eq. P3); or (8,), its row of
        :func:`~photoinfer.train.parallax.integral_terms`: the exact μ integral (Eq. P4) with the distance prior
        ``galactic`` (None: none)

    Returns
    -------
    loss : () (χ² units), data_chi2 : () ‖r₀‖² (the fit at (θ*, E*) alone)
    """
    def f(z):
        return network.model_y(params, z[:3], z[3])

    z = jnp.concatenate([x_star, jnp.reshape(E_star, (1,))])
    ym, J = f(z), jax.jacfwd(f)(z)
    r0 = W @ (y - ym)
    WJ = W @ J
    Lam = jnp.zeros((4, 4), r0.dtype).at[:3, :3].set(Lam_x).at[3, 3].set(ivar_E0)
    d = jnp.concatenate([x_hat - x_star, jnp.reshape(E0 - E_star, (1,))])
    H = WJ.T @ WJ + Lam
    g = WJ.T @ r0 + Lam @ d
    chi2 = r0 @ r0
    L = la.cholesky(H)
    loss = chi2 + d @ Lam @ d - g @ la.cho_solve(L, g)
    if log_det:
        loss = loss + 2.0 * jnp.sum(jnp.log(jnp.diag(L)))
        if plx is not None:
            from .parallax import integral_correction, log_det_weight_change
            loss = loss + (integral_correction(r0, WJ, W[:, 0], Lam, -d, plx, galactic) if plx.shape[-1] == 8
                           else log_det_weight_change(ym[0], WJ, W[:, 0], lambda u: la.cho_solve(L, u), plx))
    return loss, chi2


def profile_batch_loss(params, x, E, y, W, w, x_hat, Lam_x, E0, ivar_E0, plx, n_bands: int, l2: float, l1: float,
                       surrogate=(), log_det: bool = False, galactic=None):
    """Σ w loss_i/B / Σ w + regularization over a batch (as :func:`~photoinfer.train.loop.batch_loss`).

    x, E : the fitted (θ*, E*) (standardized θ); plx (n, 3): :func:`~photoinfer.train.parallax.weight_terms` (zeros:
    the weights as in W), or (n, 8): :func:`~photoinfer.train.parallax.integral_terms` with ``galactic``; the rest
    per star as :func:`star_profile_loss`.
    surrogate : () or (xs (K, 3), c (K,), d (K,), M0 (K,), R0 (K,), scale): the first-order expansion of the
        training stars' Σ 2 ln Z_i (Eq. P2 of :mod:`photoinfer.train.parallax`) in the network's M_G and R_G
        at the population draws xs, scale · Σ_k c_k (M_G(x_k) − M0_k) + d_k (R_G(x_k) − R0_k), added whole to
        every batch's loss (it is a sum over all the stars, already divided by their number × B in scale).
    Returns (loss, data) with data the batch mean of loss_i/B.
    """
    li, _ = jax.vmap(lambda *a: star_profile_loss(params, *a[:-1], log_det=log_det, plx=a[-1], galactic=galactic))(
        x, E, x_hat, Lam_x, E0, ivar_E0, y, W, plx)
    li = jnp.where(w > 0, li, 0.0)
    data = jnp.sum(w * li) / jnp.maximum(jnp.sum(w), 1.0) / n_bands
    loss = data + network.regularization(params, l2, l1)
    if surrogate:
        from .parallax import reference_band
        xs, c, d, M0, R0, scale = surrogate
        MG, RG = reference_band(params, xs)
        loss = loss + scale * (jnp.sum(c * (MG - M0)) + jnp.sum(d * (RG - R0)))
    return loss, data


def standardized_measurement(data, theta_med, theta_std):
    """Every star's θ̂ and C_θ in standardized units x = (θ − med)/std: x̂ (N, 3), cov (N, 3, 3), float64
    (NaN kept)."""
    import numpy as np
    med, std = np.asarray(theta_med, np.float64), np.asarray(theta_std, np.float64)
    return ((np.asarray(data.theta, np.float64) - med) / std,
            np.asarray(data.theta_cov, np.float64) / np.outer(std, std))


def profile_aux(data, theta_med, theta_std):
    """The per-star constants of the profiled loss: (x̂ (N, 3), Λ_x (N, 3, 3), E₀ (N,), 1/σ²_E₀ (N,)),
    float32, finite (a star with a singular C_θ or no prior gets Λ_x = I, 1/σ²_E₀ = 1; such stars are
    never trained on, but a non-finite value would poison the gradient through the batch padding)."""
    import numpy as np
    x_hat, cov = standardized_measurement(data, theta_med, theta_std)
    ok = np.isfinite(cov).all(axis=(1, 2)) & (np.linalg.det(np.where(np.isfinite(cov), cov, 1.0)) > 0)
    lam = np.broadcast_to(np.eye(3), cov.shape).copy()
    lam[ok] = np.linalg.inv(cov[ok])
    s = np.asarray(data.sigma_E0, np.float64)
    ivar = np.where(np.isfinite(s) & (s > 0), 1.0 / np.where(s > 0, s, 1.0) ** 2, 1.0)
    f32 = lambda a: jnp.asarray(np.nan_to_num(a), jnp.float32)  # noqa: E731
    return f32(x_hat), f32(lam), f32(data.E0), f32(ivar)


@jax.jit
def _combine(prior, x_at, x_hat, lam):
    from .population import combine_with_measurement
    return jax.vmap(lambda a, b, c: combine_with_measurement(prior, a, b, c))(x_at, x_hat, lam)


def with_population_prior(aux, prior, x_star, batch_size: int = 65536):
    """``aux`` of :func:`profile_aux` with (x̂, Λ_x) replaced by the measurement and the population prior's
    quadratic majorizer at the fitted ``x_star`` (N, 3) combined (Eq. X3); recomputed after every joint fit."""
    from ..batching import map_batched
    x_hat, lam, E0, ivar = aux
    xt, Lt = map_batched(lambda a: _combine(prior, *a), (x_star, x_hat, lam), batch_size)
    return jnp.asarray(xt, jnp.float32), jnp.asarray(Lt, jnp.float32), E0, ivar
