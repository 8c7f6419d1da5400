"""Stars drawn from a grid posterior's own prior and likelihood, for calibration checks.

θ and μ are drawn from p(θ) p(μ, [M/H]) as the grid evaluates it (the stellar prior on the grid's
points × the position-free prior table), θ uniform within the drawn point's cell and μ within the
table's step; E uniform on [0, E_max] (the flat dust prior); photometry with the real sample's
error and missing-band patterns (:func:`photoinfer.simulate.observe_photometry`) and noise drawn
from the fit's likelihood, N(0, σ² + σ_model²) (σ reported, the model floor added by the fit);
parallaxes with the mock error model's errors.
"""
from __future__ import annotations

import numpy as np

from ..mock_errors import DEFAULT_ERROR_MODEL, parallax_error
from ..simulate import observe_photometry

__all__ = ["PARAMS", "prior_predictive_mock"]

PARAMS = ("teff", "logg", "feh", "mu", "E")


def prior_predictive_mock(model, grid, table, row, E_max: float, n: int, rng: np.random.Generator,
                          sigma_model: float = 0.02):
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

    Returns
    -------
    mag, mag_err : (n, B) [mag], NaN where unobserved
    parallax, parallax_err : (n,) [mas], NaN where G is unobserved
    truth : dict of (n,) arrays keyed by :data:`PARAMS`
    """
    t = np.asarray(table.values)
    mus = table.mu0 + table.dmu * np.arange(t.shape[1])
    lp = grid.ln_prior[:, None] + t[np.asarray(row)]                        # (G, nμ)
    p = np.exp(lp - lp.max()).ravel()
    g, k = np.unravel_index(rng.choice(p.size, size=n, p=p / p.sum()), lp.shape)
    theta = grid.theta[g] + (rng.uniform(size=(n, 3)) - 0.5) * grid.spacing
    mu = mus[k] + (rng.uniform(size=n) - 0.5) * table.dmu
    E = rng.uniform(0.0, E_max, n)
    true_mag = np.asarray(model.predict_magnitudes(theta.astype(np.float32), mu, E), np.float64)
    em = DEFAULT_ERROR_MODEL.for_bands(model.bands.keys)
    mag, err = observe_photometry(rng, true_mag, em)
    mag = mag + sigma_model * rng.normal(size=mag.shape)
    plx_err = parallax_error(em, true_mag[:, 0])
    has = np.isfinite(mag[:, 0])
    plx = np.where(has, 10 ** (2 - mu / 5) + plx_err * rng.normal(size=n), np.nan)
    truth = dict(zip(PARAMS, (theta[:, 0], theta[:, 1], theta[:, 2], mu, E)))
    return mag, err, plx, np.where(has, plx_err, np.nan), truth
