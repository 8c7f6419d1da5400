"""The numpyro model of METHOD §8 for photometry-only stars, and its per-star log density.

    p(θ, μ, E | m̂, ϖ̂, l, b) ∝ N(m̂ | M(θ) + μ + E R(θ), diag(σ_m² + σ_model²))   over observed bands
                             · N(ϖ̂ | 10^(2 − μ/5), σ_ϖ²)                         when ϖ̂ is given (any S/N)
                             · p(θ, μ, E | l, b)                                 (photoinfer.priors)

Latent sites (one star): ``x`` (3,) the standardized θ = (θ − θ_med)/θ_std (unbounded; the
stellar prior confines it), ``mu`` (unbounded), ``E`` on [0, E_max] (numpyro maps it to the real
line with a logit transform and adds its Jacobian).  The unconstrained position of a star is the
flat vector z = (x₁, x₂, x₃, μ, logit(E/E_max)) of length :data:`NDIM`.

:func:`star_model` is the model of one star (vmap its potential over stars);
:func:`catalog_model` is the same posterior for N stars under one ``numpyro.plate`` (the plain
layout, used as the benchmark baseline and for prior-predictive draws of many stars).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.infer.util import potential_energy

from ..model import network

__all__ = ["StarInputs", "star_inputs", "ModelArrays", "model_arrays", "star_model", "catalog_model",
           "log_density", "constrain", "unconstrain", "parallax_of_mu", "NDIM", "SIGMA_MODEL",
           "photometric_mu", "photometric_logit_E", "to_sampler", "from_sampler", "log_density_sampler"]

#: Dimension of a star's unconstrained position (x₁, x₂, x₃, μ, logit E).
NDIM = 5
#: Default model error floor added in quadrature to every band [mag].
SIGMA_MODEL = 0.02


class StarInputs(NamedTuple):
    """One star's data (or N stars' with a leading axis), all float32 / bool, no NaN.

    mag, mag_err : (B,) [mag], 0 and 1 where unobserved; obs : (B,) bool
    parallax, parallax_err : () [mas], 0 and 1 where absent; has_plx : () bool
    l, b : () [deg], 0 where absent; has_lb : () bool
    E0, sigma_E0 : () per-star dust prior (0, 1 where absent)
    """

    mag: jnp.ndarray
    mag_err: jnp.ndarray
    obs: jnp.ndarray
    parallax: jnp.ndarray
    parallax_err: jnp.ndarray
    has_plx: jnp.ndarray
    l: jnp.ndarray
    b: jnp.ndarray
    has_lb: jnp.ndarray
    E0: jnp.ndarray
    sigma_E0: jnp.ndarray


def star_inputs(cat, use_parallax: bool = True, use_position: bool = True) -> StarInputs:
    """Per-star inputs (numpy, leading axis N) from a :class:`~photoinfer.catalog.Catalog`.

    ``use_parallax=False`` hides the parallax; ``use_position=False`` uses the position-free prior.
    """
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    obs = np.isfinite(cat.mag) & np.isfinite(cat.mag_err) & (np.nan_to_num(cat.mag_err) > 0)
    has_plx = np.isfinite(cat.parallax) & np.isfinite(cat.parallax_err) & (np.nan_to_num(cat.parallax_err) > 0)
    has_plx &= bool(use_parallax)
    has_lb = np.isfinite(cat.l) & np.isfinite(cat.b) & bool(use_position)
    has_E0 = np.isfinite(cat.E0) & np.isfinite(cat.sigma_E0) & (np.nan_to_num(cat.sigma_E0) > 0)
    return StarInputs(
        mag=f32(np.where(obs, cat.mag, 0.0)), mag_err=f32(np.where(obs, cat.mag_err, 1.0)), obs=obs,
        parallax=f32(np.where(has_plx, cat.parallax, 0.0)), parallax_err=f32(np.where(has_plx, cat.parallax_err, 1.0)),
        has_plx=has_plx, l=f32(np.where(has_lb, cat.l, 0.0)), b=f32(np.where(has_lb, cat.b, 0.0)), has_lb=has_lb,
        E0=f32(np.where(has_E0, cat.E0, 0.0)), sigma_E0=f32(np.where(has_E0, cat.sigma_E0, 1.0)))


class ModelArrays(NamedTuple):
    """The stellar model as jnp arrays: network params, θ_med, θ_std [K, dex, dex]."""

    params: dict
    theta_med: jnp.ndarray
    theta_std: jnp.ndarray


def model_arrays(model) -> ModelArrays:
    """:class:`ModelArrays` of a :class:`~photoinfer.model.StellarModel` (float32)."""
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), model.params)
    return ModelArrays(params, jnp.asarray(model.theta_med, jnp.float32), jnp.asarray(model.theta_std, jnp.float32))


def parallax_of_mu(mu):
    """ϖ(μ) = 10^(2 − μ/5) [mas] (METHOD §8)."""
    return 10.0 ** (2.0 - mu / 5.0)


def _predicted_magnitudes(arrays: ModelArrays, x, mu, E):
    """M(θ) + μ + E R(θ) at standardized θ = x, shape (..., B) [mag]."""
    M = network.absolute_magnitudes(arrays.params, x)
    return M + mu[..., None] + E[..., None] * network.extinction_vector(arrays.params, x)


def star_model(s: StarInputs, arrays: ModelArrays, prior, sigma_model: float = SIGMA_MODEL, observe: bool = True):
    """numpyro model of one star (METHOD §8).

    Parameters
    ----------
    s : StarInputs
        One star (no leading axis).
    arrays : ModelArrays
    prior : photoinfer.infer.prior.InferencePrior
    sigma_model : float
        Model error floor [mag], added in quadrature to every band's error.
    observe : bool
        False: ``mag`` and ``parallax`` are sampled (prior-predictive draws), not conditioned on.
    """
    x = numpyro.sample("x", dist.ImproperUniform(constraints.real, (), (3,)))
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
    E = numpyro.sample("E", dist.ImproperUniform(constraints.interval(0.0, prior.E_max), (), ()))
    theta = arrays.theta_med + arrays.theta_std * x
    numpyro.deterministic("theta", theta)
    numpyro.factor("log_prior", prior.log_prior(theta, mu, E, s.l, s.b, s.has_lb, s.E0, s.sigma_E0))
    pred = _predicted_magnitudes(arrays, x, mu, E)
    sigma = jnp.sqrt(s.mag_err ** 2 + sigma_model ** 2)
    numpyro.sample("mag", dist.Normal(pred, sigma).mask(s.obs).to_event(1), obs=s.mag if observe else None)
    with numpyro.handlers.mask(mask=s.has_plx):
        numpyro.sample("parallax", dist.Normal(parallax_of_mu(mu), s.parallax_err),
                       obs=s.parallax if observe else None)


def catalog_model(s: StarInputs, arrays: ModelArrays, prior, sigma_model: float = SIGMA_MODEL,
                  observe: bool = True):
    """The same posterior for N stars (leading axis of ``s``) under one ``numpyro.plate``."""
    n = s.mag.shape[0]
    with numpyro.plate("star", n):
        x = numpyro.sample("x", dist.ImproperUniform(constraints.real, (), (3,)))
        mu = numpyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
        E = numpyro.sample("E", dist.ImproperUniform(constraints.interval(0.0, prior.E_max), (), ()))
        theta = arrays.theta_med + arrays.theta_std * x
        numpyro.factor("log_prior", prior.log_prior(theta, mu, E, s.l, s.b, s.has_lb, s.E0, s.sigma_E0))
        pred = _predicted_magnitudes(arrays, x, mu, E)
        sigma = jnp.sqrt(s.mag_err ** 2 + sigma_model ** 2)
        numpyro.sample("mag", dist.Normal(pred, sigma).mask(s.obs).to_event(1), obs=s.mag if observe else None)
        with numpyro.handlers.mask(mask=s.has_plx):
            numpyro.sample("parallax", dist.Normal(parallax_of_mu(mu), s.parallax_err),
                           obs=s.parallax if observe else None)


def _unflatten(z):
    return {"x": z[..., :3], "mu": z[..., 3], "E": z[..., 4]}


def log_density(z, s: StarInputs, arrays: ModelArrays, prior, sigma_model: float = SIGMA_MODEL):
    """ln p(z | data) + const of one star at the unconstrained position z (5,) (numpyro's potential, negated)."""
    return -potential_energy(star_model, (s, arrays, prior, sigma_model), {}, _unflatten(z))


def _absolute_and_extinction(arrays: ModelArrays, x):
    """M(θ) (B,) absolute magnitudes and R(θ) (B,) extinction per unit E at standardized θ = x [mag]."""
    return network.absolute_magnitudes(arrays.params, x), network.extinction_vector(arrays.params, x)


def _weights(s: StarInputs, sigma_model):
    return s.obs / (s.mag_err ** 2 + sigma_model ** 2)


def _mu_wls(M, R, E, s: StarInputs, sigma_model):
    w = _weights(s, sigma_model)
    sw = jnp.sum(w)
    has = sw > 0
    mu = jnp.where(has, jnp.sum(w * (s.mag - M - E * R)) / jnp.where(has, sw, 1.0), 0.0)
    return mu, jnp.where(has, jax.lax.rsqrt(jnp.where(has, sw, 1.0)), 1.0)


def _zeta0(M, R, s: StarInputs, E_max, sigma_model, width: float = 0.05, bound: float = 5.0):
    w = _weights(s, sigma_model)
    d = s.mag - M
    a11, a12, a22 = jnp.sum(w), jnp.sum(w * R), jnp.sum(w * R * R)
    b1, b2 = jnp.sum(w * d), jnp.sum(w * R * d)
    det = a11 * a22 - a12 ** 2
    ok = (jnp.sum(s.obs) >= 2) & (det > 1e-6 * a11 * a22)
    r = jnp.where(ok, (a11 * b2 - a12 * b1) / jnp.where(ok, det, 1.0), 0.5 * E_max) / E_max
    beta = E_max / width
    sp = lambda v: jax.nn.softplus(beta * v) / beta  # noqa: E731
    ell = jnp.log(sp(r)) - jnp.log(sp(1.0 - r))
    return jnp.where(ok, bound * jnp.tanh(ell / bound), 0.0)


def photometric_mu(x, E, s: StarInputs, arrays: ModelArrays, sigma_model: float = SIGMA_MODEL):
    """μ_WLS(θ, E) and σ_μ,phot of one star: the distance modulus the magnitudes fix at (θ, E).

        μ_WLS(θ, E) = Σ_b w_b (m̂_b − M_b(θ) − E R_b(θ)) / Σ_b w_b,   σ_μ,phot = (Σ_b w_b)^(−1/2),
        w_b = 1/(σ_b² + σ_model²) over the observed bands.

    A star with no observed band gets μ_WLS = 0 and σ_μ,phot = 1.

    Parameters
    ----------
    x : (3,) standardized θ; E : () reddening

    Returns
    -------
    mu_wls, sigma : () [mag]
    """
    M, R = _absolute_and_extinction(arrays, x)
    return _mu_wls(M, R, E, s, sigma_model)


def photometric_logit_E(x, s: StarInputs, arrays: ModelArrays, E_max: float, sigma_model: float = SIGMA_MODEL):
    """ζ₀(θ): where the magnitudes put logit(E/E_max) at θ, softly bounded.

        (μ, E)_WLS(θ) = argmin Σ_b w_b (m̂_b − M_b(θ) − μ − E R_b(θ))²          (2 × 2 weighted least squares)
        ζ₀(θ) = L tanh(ℓ(E_WLS/E_max)/L),  ℓ(r) = ln s(r) − ln s(1 − r),  s(r) = softplus(β r)/β

    with β = E_max/(0.05 mag) and L = 5: ℓ is the logit inside (0, 1), finite outside, and the tanh
    keeps ζ₀ within ±L.  A star with fewer than two observed bands gets ζ₀ = 0.
    """
    M, R = _absolute_and_extinction(arrays, x)
    return _zeta0(M, R, s, E_max, sigma_model)


def _from_sampler(u, M, R, s, E_max, sigma_model, shift_E):
    """(μ, ζ, E) of u given M(θ), R(θ)."""
    zeta = u[4] + (_zeta0(M, R, s, E_max, sigma_model) if shift_E else 0.0)
    E = E_max * jax.nn.sigmoid(zeta)
    mu0, sig = _mu_wls(M, R, E, s, sigma_model)
    return mu0 + sig * u[3], zeta, E


def from_sampler(u, s: StarInputs, arrays: ModelArrays, prior, sigma_model: float = SIGMA_MODEL,
                 shift_E: bool = True):
    """Unconstrained z (5,) = (x, μ, ζ) of the sampler's position u (5,) = (x, δ, ε), ζ = logit(E/E_max):

        ζ = ζ₀(θ) + ε   (``shift_E``; else ζ = ε),     μ = μ_WLS(θ, E) + σ_μ,phot δ

    (:func:`photometric_logit_E`, :func:`photometric_mu`).  The map is triangular (θ → ζ → μ) with
    the constant diagonal (1, 1, 1, σ_μ,phot, 1): its Jacobian is a per-star constant."""
    M, R = _absolute_and_extinction(arrays, u[:3])
    mu, zeta, _ = _from_sampler(u, M, R, s, prior.E_max, sigma_model, shift_E)
    return u.at[3].set(mu).at[4].set(zeta)


def to_sampler(z, s: StarInputs, arrays: ModelArrays, prior, sigma_model: float = SIGMA_MODEL, shift_E: bool = True):
    """The inverse of :func:`from_sampler`: u (5,) = (x, δ, ε) of z (5,)."""
    M, R = _absolute_and_extinction(arrays, z[:3])
    E = prior.E_max * jax.nn.sigmoid(z[4])
    mu0, sig = _mu_wls(M, R, E, s, sigma_model)
    eps = z[4] - (_zeta0(M, R, s, prior.E_max, sigma_model) if shift_E else 0.0)
    return z.at[3].set((z[3] - mu0) / sig).at[4].set(eps)


def log_density_sampler(u, s: StarInputs, arrays: ModelArrays, prior, sigma_model: float = SIGMA_MODEL,
                        shift_E: bool = True):
    """ln p(u | data) + const in the sampler's coordinates u = (x, δ, ε): :func:`log_density` at
    z = :func:`from_sampler` (u) (the constant Jacobian σ_μ,phot dropped), written out so that the
    network is evaluated once per call (M(θ), R(θ) shared by ζ₀, μ_WLS and the likelihood)."""
    x = u[:3]
    M, R = _absolute_and_extinction(arrays, x)
    mu, zeta, E = _from_sampler(u, M, R, s, prior.E_max, sigma_model, shift_E)
    sigma = jnp.sqrt(s.mag_err ** 2 + sigma_model ** 2)
    ll = jnp.sum(jnp.where(s.obs, jax.scipy.stats.norm.logpdf(s.mag, M + mu + E * R, sigma), 0.0))
    ll = ll + jnp.where(s.has_plx, jax.scipy.stats.norm.logpdf(s.parallax, parallax_of_mu(mu), s.parallax_err), 0.0)
    theta = arrays.theta_med + arrays.theta_std * x
    lp = prior.log_prior(theta, mu, E, s.l, s.b, s.has_lb, s.E0, s.sigma_E0)
    log_jac = jnp.log(prior.E_max) + jax.nn.log_sigmoid(zeta) + jax.nn.log_sigmoid(-zeta)    # dE/dζ
    return ll + lp + log_jac


def constrain(z, s: StarInputs, arrays: ModelArrays, prior):
    """(teff, logg, feh, mu, E) of unconstrained positions z (..., 5), shape (..., 5)."""
    E_max = prior.E_max
    theta = arrays.theta_med + arrays.theta_std * z[..., :3]
    E = E_max * jax.nn.sigmoid(z[..., 4])
    return jnp.concatenate([theta, z[..., 3:4], E[..., None]], axis=-1)


def unconstrain(teff, logg, feh, mu, E, arrays: ModelArrays, prior):
    """The inverse of :func:`constrain`: z (..., 5) from physical values (E clipped into (0, E_max))."""
    theta = jnp.stack([teff, logg, feh], axis=-1)
    x = (theta - arrays.theta_med) / arrays.theta_std
    e = jnp.clip(jnp.asarray(E, jnp.float32) / prior.E_max, 1e-6, 1 - 1e-6)
    return jnp.concatenate([x, jnp.asarray(mu, jnp.float32)[..., None], jnp.log(e / (1 - e))[..., None]], axis=-1)
