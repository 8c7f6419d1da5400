"""Draws from the fit's own prior and prior-predictive mock catalogs (for calibration and benchmarks).

Prior draws are exact draws of the *inference* prior (:class:`~photoinfer.infer.prior.InferencePrior`,
position-free): an approximate draw from the gridded prior (θ on the stellar prior's valid nodes
∝ its density, jittered within the cell; (μ, [M/H]) ∝ the tabulated sky prior; E flat) is moved by
``n_mcmc`` NUTS transitions whose stationary distribution is the exact prior (the per-star sampler
run with no data), so what remains of the approximation is its small residual after mixing.
Observations are then drawn by ``numpyro.infer.Predictive`` from :func:`~photoinfer.infer.model.catalog_model`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Predictive

from ..catalog import Catalog
from .model import SIGMA_MODEL, StarInputs, catalog_model, model_arrays, unconstrain
from .prior import FEH_TABLE, MU_TABLE, InferencePrior
from .sampler import SamplerSettings, run_lanes

__all__ = ["sample_prior", "prior_predictive_catalog"]


def _approximate_prior_draws(rng, prior: InferencePrior, n: int):
    sp = prior.prior.stellar
    mu_ax, feh_ax = np.linspace(*MU_TABLE), np.linspace(*FEH_TABLE)
    tab = np.asarray(prior.sky_table, np.float64)
    w = np.exp(tab - tab.max()).ravel()
    k = rng.choice(w.size, n, p=w / w.sum())
    mu = mu_ax[k // len(feh_ax)] + (rng.random(n) - 0.5) * (mu_ax[1] - mu_ax[0])
    feh = feh_ax[k % len(feh_ax)] + (rng.random(n) - 0.5) * (feh_ax[1] - feh_ax[0])
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


def _no_data(n: int, n_bands: int) -> StarInputs:
    f = lambda v: jnp.full((n,), v, jnp.float32)  # noqa: E731
    return StarInputs(mag=jnp.zeros((n, n_bands)), mag_err=jnp.ones((n, n_bands)), obs=jnp.zeros((n, n_bands), bool),
                      parallax=f(0.0), parallax_err=f(1.0), has_plx=jnp.zeros(n, bool), l=f(0.0), b=f(0.0),
                      has_lb=jnp.zeros(n, bool), E0=f(0.0), sigma_E0=f(1.0))


def sample_prior(model, prior: InferencePrior, n: int, seed: int = 0, n_mcmc: int = 200, batch: int = 200) -> dict:
    """``n`` draws of (teff, logg, feh, mu, E) from the inference prior (position-free), each (n,)."""
    if prior.prior.stellar is None:
        raise ValueError("prior draws need the model's stellar prior (a model with a validity grid)")
    rng = np.random.default_rng(seed)
    arrays = model_arrays(model)
    approx = _approximate_prior_draws(rng, prior, n)
    z = np.asarray(unconstrain(*[jnp.asarray(a, jnp.float32) for a in approx], arrays, prior))
    cell = np.concatenate([np.asarray(prior.prior.stellar.step) / np.asarray(arrays.theta_std), [0.5, 1.0]])
    inv_mass = np.broadcast_to(np.diag(cell ** 2), (batch, 5, 5)).astype(np.float32)
    settings = SamplerSettings(num_warmup=n_mcmc, num_samples=1, adaptation="window")
    out = []
    for s in range(0, n, batch):
        k = min(batch, n - s)
        keys = jax.random.split(jax.random.PRNGKey(seed + 7919 * (s // batch + 1)), batch)
        zz = np.concatenate([z[s:s + k], np.repeat(z[s:s + 1], batch - k, 0)])
        d, _ = run_lanes(keys, jnp.asarray(zz), jnp.asarray(inv_mass), _no_data(batch, model.n_bands),
                         arrays, prior, settings)
        out.append(np.asarray(d)[:k, -1])
    d = np.concatenate(out)
    return dict(zip(("teff", "logg", "feh", "mu", "E"), d.T))


def prior_predictive_catalog(model, prior: InferencePrior, n: int, seed: int = 0, mag_err=(0.01, 0.08),
                             p_observed: float = 0.85, parallax_err=(0.02, 0.5), sigma_model: float = SIGMA_MODEL,
                             n_mcmc: int = 200) -> Catalog:
    """A mock catalog drawn from exactly the fit's prior and likelihood (no sky positions).

    Per star: truth from :func:`sample_prior`; each band observed with probability ``p_observed``
    (independently of the star, so missingness is uninformative), its error uniform in ``mag_err``;
    parallax error uniform in ``parallax_err`` [mas]; magnitudes and parallax drawn by numpyro's
    ``Predictive`` from :func:`~photoinfer.infer.model.catalog_model` with the model floor ``sigma_model``.
    Truth is in ``catalog.extra`` (``true_teff``, ``true_logg``, ``true_feh``, ``true_mu``, ``true_E``).
    """
    rng = np.random.default_rng(seed + 1)
    truth = sample_prior(model, prior, n, seed=seed, n_mcmc=n_mcmc)
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
    return Catalog.from_arrays(mag, np.where(obs, err, np.nan), bands=model.bands, parallax=plx, parallax_err=perr,
                               extra=extra, name=f"prior-predictive mock (seed {seed})")
