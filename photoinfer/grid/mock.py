"""Stars drawn from a grid posterior's own prior and likelihood, for calibration checks.

θ and μ are drawn from p(θ) p(μ, [M/H]) as the continuous-θ grid posterior evaluates it (the grid's
stellar prior × the position-free prior table, bilinear in ([M/H], μ)) by sampling-importance-resampling
from its piecewise-constant version on the grid's cells × the table's μ steps; E uniform on [0, E_max] (the flat dust prior); photometry with the real sample's
error and missing-band patterns (:func:`photoinfer.simulate.observe_photometry`) and noise drawn
from the fit's likelihood, N(0, σ² + σ_model²) (σ reported, the model floor added by the fit);
parallaxes with the mock error model's errors.
"""
from __future__ import annotations

import numpy as np

from ..mock_errors import DEFAULT_ERROR_MODEL, MAX_MAG_ERR, parallax_error, photometric_error
from ..simulate import observe_photometry

__all__ = ["PARAMS", "prior_predictive_mock"]

PARAMS = ("teff", "logg", "feh", "mu", "E")


def _draw_theta_mu(grid, table, row, n: int, rng, oversample: int = 20):
    """(θ (n, 3), μ (n,)) from the continuous prior, by SIR from its piecewise-constant version."""
    import jax.numpy as jnp
    from .engine import lookup_position_table_continuous
    t = np.asarray(table.values, np.float64)
    mus = table.mu0 + table.dmu * np.arange(t.shape[1])
    lp = grid.ln_prior[:, None].astype(np.float64) + t[np.asarray(row)]          # (G, nμ)
    p = np.exp(lp - lp.max()).ravel()
    m = oversample * n
    g, k = np.unravel_index(rng.choice(p.size, size=m, p=p / p.sum()), lp.shape)
    theta = grid.theta[g] + (rng.uniform(size=(m, 3)) - 0.5) * grid.spacing
    mu = mus[k] + (rng.uniform(size=m) - 0.5) * table.dmu
    lp_cont = np.asarray(lookup_position_table_continuous(table, float(grid.feh_axis[0]), float(grid.spacing[2]),
                                                          jnp.asarray(theta[:, 2], jnp.float32),
                                                          jnp.asarray(mu, jnp.float32)), np.float64)
    if grid.stellar is not None:
        lp_cont = lp_cont + np.asarray(grid.stellar(jnp.asarray(theta, jnp.float32)), np.float64)
    lw = lp_cont - lp[g, k]
    w = np.exp(lw - lw.max())
    pick = rng.choice(m, size=n, p=w / w.sum())
    return theta[pick], mu[pick]


def prior_predictive_mock(model, grid, table, row, E_max: float, n: int, rng: np.random.Generator,
                          sigma_model: float = 0.02, missing: str = "survey", p_observed: float = 0.85):
    """Mock stars from the grid's prior and the fit's likelihood.

    Parameters
    ----------
    model : StellarModel
    grid : ThetaGrid
    table : PositionTable
        :func:`~photoinfer.grid.engine.position_table` of the prior on ``grid``.
    row : (G,) int
        ``GridArrays.row`` (each point's row of ``table``).
    E_max : float
        Upper bound of the flat E prior.
    n : int
    rng : numpy Generator
    sigma_model : float
        The fit's model floor [mag].
    missing : {"survey", "random"}
        "survey": the real sample's missing-band patterns and the bands' magnitude limits
        (:func:`~photoinfer.simulate.observe_photometry`) — realistic, but a band missing because the
        star is faint in it is informative about the star, which the fit does not model; "random":
        each band observed with probability ``p_observed`` whatever the star (uninformative), its
        error from the error model capped at 0.2 mag — the mock for exact calibration checks.

    Returns
    -------
    mag, mag_err : (n, B) [mag], NaN where unobserved
    parallax, parallax_err : (n,) [mas], NaN where G is unobserved
    truth : dict of (n,) arrays keyed by :data:`PARAMS`
    """
    theta, mu = _draw_theta_mu(grid, table, row, n, rng)
    E = rng.uniform(0.0, E_max, n)
    true_mag = np.asarray(model.predict_magnitudes(theta.astype(np.float32), mu, E), np.float64)
    em = DEFAULT_ERROR_MODEL.for_bands(model.bands.keys)
    if missing == "survey":
        mag, err = observe_photometry(rng, true_mag, em)
    elif missing == "random":
        err = np.minimum(photometric_error(em, true_mag), MAX_MAG_ERR)
        obs = rng.random(true_mag.shape) < p_observed
        mag = np.where(obs, true_mag + err * rng.normal(size=err.shape), np.nan)
        err = np.where(obs, err, np.nan)
    else:
        raise ValueError(f"missing must be 'survey' or 'random', got {missing!r}")
    mag = mag + sigma_model * rng.normal(size=mag.shape)
    plx_err = parallax_error(em, true_mag[:, 0])
    has = np.isfinite(mag[:, 0])
    plx = np.where(has, 10 ** (2 - mu / 5) + plx_err * rng.normal(size=n), np.nan)
    truth = dict(zip(PARAMS, (theta[:, 0], theta[:, 1], theta[:, 2], mu, E)))
    return mag, err, plx, np.where(has, plx_err, np.nan), truth
