"""Priors on the reddening E (METHOD §8), as normalized log-densities over E.

- flat (default, the Bayestar convention, so that per-star (μ, E) posteriors can be stacked by a
  line-of-sight dust fit)::

      ln p(E) = −ln E_max on [0, E_max], −inf outside                                        (D1)

- Gaussian truncated at 0::

      ln p(E) = ln N(E | E₀, σ) − ln Φ(E₀/σ) on E ≥ 0, −inf for E < 0                          (D2)

- map-informed: (D2) with E₀ = the dust-map value the user supplies for the star and
  σ² = (f E_map)² + σ_floor² (METHOD §6: 10 % and 0.02 in quadrature by default)                (D3)

Outside the support the log-density is −inf (through ``jnp.where``, so gradients stay finite:
zero there). Samplers should work on the support (numpyro: an interval/positive constraint).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

__all__ = ["E_MAX", "log_prior_E_flat", "log_prior_E_gaussian", "map_informed_E_prior", "log_prior_E_map"]

#: Default upper bound of the flat prior (Bayestar's (μ, E) grid: E ∈ [0, 7]).
E_MAX = 7.0

_LN_SQRT_2PI = float(0.5 * np.log(2.0 * np.pi))


def log_prior_E_flat(E, E_max=E_MAX):
    """ln p(E) flat on [0, E_max], Eq. (D1).

    Parameters
    ----------
    E : array, shape (...)
        Reddening [the units of the model's R].
    E_max : float or array
        Upper bound.

    Returns
    -------
    array, shape (...)
        −ln E_max inside, −inf outside.
    """
    E = jnp.asarray(E, jnp.float32)
    inside = (E >= 0.0) & (E <= E_max)
    return jnp.where(inside, -jnp.log(jnp.asarray(E_max, jnp.float32)), -jnp.inf)


def log_prior_E_gaussian(E, E0, sigma):
    """ln p(E) of N(E₀, σ) truncated to E ≥ 0, Eq. (D2), normalized over E ≥ 0.

    Parameters
    ----------
    E : array, shape (...)
    E0, sigma : array, broadcastable
        Mean and standard deviation of the untruncated Gaussian (σ > 0).

    Returns
    -------
    array, broadcast shape; −inf for E < 0.
    """
    E = jnp.asarray(E, jnp.float32)
    z = (E - E0) / sigma
    lp = -0.5 * z * z - jnp.log(sigma) - _LN_SQRT_2PI - log_ndtr(E0 / sigma)
    return jnp.where(E >= 0.0, lp, -jnp.inf)


def map_informed_E_prior(E_map, rel_err=0.1, floor=0.02):
    """(E₀, σ) of the map-informed prior, Eq. (D3), from a dust-map value per star.

    Parameters
    ----------
    E_map : array, shape (...)
        Dust-map reddening for each star (e.g. SFD or Bayestar19 at its position and distance).
    rel_err : float
        Fractional map uncertainty.
    floor : float
        Added in quadrature.

    Returns
    -------
    E0, sigma : arrays, shape (...)
    """
    E_map = jnp.asarray(E_map, jnp.float32)
    return E_map, jnp.sqrt((rel_err * E_map) ** 2 + floor ** 2)


def log_prior_E_map(E, E_map, sigma=None, rel_err=0.1, floor=0.02):
    """Map-informed ln p(E), Eq. (D3): (D2) around the map value with σ given or from (D3).

    Parameters
    ----------
    E : array, shape (...)
    E_map : array, broadcastable
        The supplied dust-map value per star.
    sigma : array or None
        Per-star σ; None: from ``rel_err`` and ``floor``.
    rel_err, floor : float
        See :func:`map_informed_E_prior`.

    Returns
    -------
    array, broadcast shape
    """
    E0, s = map_informed_E_prior(E_map, rel_err, floor)
    if sigma is not None:
        s = jnp.asarray(sigma, jnp.float32)
    return log_prior_E_gaussian(E, E0, s)
