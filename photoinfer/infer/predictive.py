"""Draws from the fit's own prior and prior-predictive mock catalogs (for calibration and benchmarks).

Prior draws are exact draws of the *inference* prior (:class:`~photoinfer.infer.prior.InferencePrior`),
position-free or along given sightlines: an approximate draw (μ, [M/H]) ∝ the prior tabulated on
a (μ, [M/H]) grid — the priors' sky table, or the sightline prior evaluated on the same kind of
grid once per distinct sightline — jittered within the cell; θ on the stellar prior's grid nodes ∝
its density at the nearest [M/H] node, jittered within the cell; E flat) is moved by ``n_mcmc``
NUTS transitions whose stationary distribution is the exact prior (the per-star sampler run with
no data), so what remains of the approximation is its small residual after mixing.
Observations are then drawn by ``numpyro.infer.Predictive`` from :func:`~photoinfer.infer.model.catalog_model`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Predictive

from ..catalog import Catalog
from ..priors import log_prior_mu_feh
from .model import SIGMA_MODEL, StarInputs, catalog_model, model_arrays, unconstrain
from .prior import InferencePrior
from .sampler import SamplerSettings, run_lanes

__all__ = ["sample_prior", "prior_predictive_catalog", "SIGHTLINES"]

#: Sightlines (l, b) [deg] of the calibration mock: the Galactic poles, the anticentre, mid and low
#: latitudes towards the inner and outer disk.
SIGHTLINES = ((0.0, 90.0), (0.0, -90.0), (180.0, 30.0), (90.0, 10.0), (270.0, -45.0), (30.0, 5.0),
              (120.0, 60.0), (200.0, -15.0), (330.0, 20.0), (60.0, -30.0))

_MU_AX = np.arange(-2.0, 22.0 + 1e-6, 0.05)
_FEH_AX = np.arange(-3.0, 1.5 + 1e-6, 0.02)


def _mu_feh_table(prior: InferencePrior, l=None, b=None):
    """ln p(μ, [M/H] | l, b) on (_MU_AX × _FEH_AX): the sky average when l is None."""
    M, F = np.meshgrid(_MU_AX, _FEH_AX, indexing="ij")
    if l is None:
        fn = jax.jit(lambda f, m: prior.log_prior_sky(f, m))
        return np.asarray(fn(jnp.asarray(F, jnp.float32), jnp.asarray(M, jnp.float32)), np.float64)
    fn = jax.jit(lambda f, m: log_prior_mu_feh(f, m, l, b, prior.prior.params, prior.prior.metallicity))
    return np.asarray(fn(jnp.asarray(F, jnp.float32), jnp.asarray(M, jnp.float32)), np.float64)


def _approximate_prior_draws(rng, prior: InferencePrior, n: int, lb=None):
    sp = prior.prior.stellar
    mu, feh = np.empty(n), np.empty(n)
    groups = [(None, np.arange(n))] if lb is None else [
        (tuple(u), np.flatnonzero(np.all(lb == u, axis=1))) for u in np.unique(lb, axis=0)]
    for sight, sel in groups:
        tab = _mu_feh_table(prior, *(sight if sight is not None else (None, None)))
        w = np.exp(tab - tab.max()).ravel()
        k = rng.choice(w.size, len(sel), p=w / w.sum())
        mu[sel] = _MU_AX[k // len(_FEH_AX)] + (rng.random(len(sel)) - 0.5) * (_MU_AX[1] - _MU_AX[0])
        feh[sel] = _FEH_AX[k % len(_FEH_AX)] + (rng.random(len(sel)) - 0.5) * (_FEH_AX[1] - _FEH_AX[0])
    lp = np.asarray(sp.log_p, np.float64)
    fk = np.clip(np.rint((feh - sp.origin[2]) / sp.step[2]).astype(int), 0, lp.shape[2] - 1)
    teff, logg = np.empty(n), np.empty(n)
    for j in np.unique(fk):
        sel = np.flatnonzero(fk == j)
        ww = np.exp(lp[:, :, j] - lp[:, :, j].max()).ravel()
        kk = rng.choice(ww.size, len(sel), p=ww / ww.sum())
        teff[sel] = sp.origin[0] + (kk // lp.shape[1] + rng.random(len(sel)) - 0.5) * sp.step[0]
        logg[sel] = sp.origin[1] + (kk % lp.shape[1] + rng.random(len(sel)) - 0.5) * sp.step[1]
    E = rng.uniform(0.0, prior.E_max, n)
    return teff, logg, feh, mu, E


def _no_data(n: int, n_bands: int, lb=None) -> StarInputs:
    f = lambda v: jnp.full((n,), v, jnp.float32)  # noqa: E731
    has_lb = lb is not None
    l_, b_ = (f(0.0), f(0.0)) if lb is None else (jnp.asarray(lb[:, 0], jnp.float32), jnp.asarray(lb[:, 1], jnp.float32))
    return StarInputs(mag=jnp.zeros((n, n_bands)), mag_err=jnp.ones((n, n_bands)), obs=jnp.zeros((n, n_bands), bool),
                      parallax=f(0.0), parallax_err=f(1.0), has_plx=jnp.zeros(n, bool), l=l_, b=b_,
                      has_lb=jnp.full((n,), has_lb), E0=f(0.0), sigma_E0=f(1.0))


def sample_prior(model, prior: InferencePrior, n: int, seed: int = 0, n_mcmc: int = 200, batch: int = 200,
                 lb=None) -> dict:
    """``n`` draws of (teff, logg, feh, mu, E) from the inference prior, each (n,).

    Parameters
    ----------
    lb : ndarray, shape (n, 2), optional
        Each draw's sightline (l, b) [deg]; None: the position-free prior.
    """
    if prior.prior.stellar is None:
        raise ValueError("prior draws need the model's stellar prior (a model with a validity grid)")
    lb = None if lb is None else np.asarray(lb, np.float64).reshape(n, 2)
    rng = np.random.default_rng(seed)
    arrays = model_arrays(model)
    approx = _approximate_prior_draws(rng, prior, n, lb)
    z = np.asarray(unconstrain(*[jnp.asarray(a, jnp.float32) for a in approx], arrays, prior))
    cell = np.concatenate([np.asarray(prior.prior.stellar.step) / np.asarray(arrays.theta_std), [0.5, 1.0]])
    inv_mass = np.broadcast_to(np.diag(cell ** 2), (batch, 5, 5)).astype(np.float32)
    settings = SamplerSettings(num_warmup=n_mcmc, num_samples=1, adaptation="window")
    out = []
    for s in range(0, n, batch):
        k = min(batch, n - s)
        keys = jax.random.split(jax.random.PRNGKey(seed + 7919 * (s // batch + 1)), batch)
        zz = np.concatenate([z[s:s + k], np.repeat(z[s:s + 1], batch - k, 0)])
        lbb = None if lb is None else np.concatenate([lb[s:s + k], np.repeat(lb[s:s + 1], batch - k, 0)])
        d, _ = run_lanes(keys, jnp.asarray(zz), jnp.asarray(inv_mass), _no_data(batch, model.n_bands, lbb),
                         arrays, prior, settings)
        out.append(np.asarray(d)[:k, -1])
    d = np.concatenate(out)
    return dict(zip(("teff", "logg", "feh", "mu", "E"), d.T))


def prior_predictive_catalog(model, prior: InferencePrior, n: int, seed: int = 0, mag_err=(0.01, 0.08),
                             p_observed: float = 0.85, parallax_err=(0.02, 0.5), sigma_model: float = SIGMA_MODEL,
                             n_mcmc: int = 200, sightlines=None) -> Catalog:
    """A mock catalog drawn from exactly the fit's prior and likelihood.

    ``sightlines``: None (no sky positions, the position-free prior), or a sequence of (l, b) [deg]
    dealt to the stars in turn (star i gets ``sightlines[i % len]``; the catalog carries l, b, and
    a fit with ``use_position=True`` uses the identical sightline prior).

    Per star: truth from :func:`sample_prior`; each band observed with probability ``p_observed``
    (independently of the star, so missingness is uninformative), its error uniform in ``mag_err``;
    parallax error uniform in ``parallax_err`` [mas]; magnitudes and parallax drawn by numpyro's
    ``Predictive`` from :func:`~photoinfer.infer.model.catalog_model` with the model floor ``sigma_model``.
    Truth is in ``catalog.extra`` (``true_teff``, ``true_logg``, ``true_feh``, ``true_mu``, ``true_E``).
    """
    rng = np.random.default_rng(seed + 1)
    lb = None if sightlines is None else np.asarray(sightlines, np.float64)[np.arange(n) % len(sightlines)]
    truth = sample_prior(model, prior, n, seed=seed, n_mcmc=n_mcmc, lb=lb)
    B = model.n_bands
    obs = rng.random((n, B)) < p_observed
    obs[np.arange(n), rng.integers(0, B, n)] = True
    obs[np.arange(n), rng.integers(0, B, n)] = True
    err = rng.uniform(*mag_err, (n, B))
    perr = rng.uniform(*parallax_err, n)
    arrays = model_arrays(model)
    stars = StarInputs(mag=jnp.zeros((n, B)), mag_err=jnp.asarray(err, jnp.float32), obs=jnp.asarray(obs),
                       parallax=jnp.zeros(n), parallax_err=jnp.asarray(perr, jnp.float32), has_plx=jnp.ones(n, bool),
                       l=jnp.zeros(n), b=jnp.zeros(n), has_lb=jnp.zeros(n, bool), E0=jnp.zeros(n), sigma_E0=jnp.ones(n))
    theta = np.stack([truth["teff"], truth["logg"], truth["feh"]], -1)
    latent = {"x": ((theta - np.asarray(arrays.theta_med)) / np.asarray(arrays.theta_std))[None].astype(np.float32),
              "mu": truth["mu"][None].astype(np.float32), "E": truth["E"][None].astype(np.float32)}
    pred = Predictive(catalog_model, posterior_samples=latent, return_sites=["mag", "parallax"])
    draws = pred(jax.random.PRNGKey(seed + 2), stars, arrays, prior, sigma_model, observe=False)
    mag = np.where(obs, np.asarray(draws["mag"][0], np.float64), np.nan)
    plx = np.asarray(draws["parallax"][0], np.float64)
    extra = {f"true_{k}": np.asarray(v, np.float64) for k, v in truth.items()}
    pos = {} if lb is None else {"l": lb[:, 0], "b": lb[:, 1]}
    return Catalog.from_arrays(mag, np.where(obs, err, np.nan), bands=model.bands, parallax=plx, parallax_err=perr,
                               extra=extra, name=f"prior-predictive mock (seed {seed})", **pos)
