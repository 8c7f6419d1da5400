"""Metallicity prior by Galactic component (METHOD §8; Ivezić et al. 2008 as used by Bayestar).

Per component::

    p_halo([M/H])      = N([M/H] | −1.46, 0.3)                                               (M1)
    p_disk([M/H] | Z)  = 0.63 N([M/H] | μ_D(Z), 0.2) + 0.37 N([M/H] | μ_D(Z) + 0.14, 0.2)    (M2)
    μ_D(Z)             = −0.82 + 0.55 exp(−|Z| / 500 pc) − 0.067                              (M3)

with Z the height above the midplane [pc]. As in Bayestar, the thick disk takes the disk form
(M2): Bayestar's metallicity prior mixes only "disk" and "halo", by the halo fraction. The prior
at a point mixes by the component fractions f_k = n_k/n of :mod:`.galactic`::

    p([M/H] | μ, l, b) = (f_thin + f_thick) p_disk([M/H] | Z) + f_halo p_halo([M/H])          (M4)

and, for stars without a sky position, the joint (μ, [M/H]) prior marginalized over the sky with
the quadrature of Eq. (G6)::

    p(μ, [M/H]) ∝ d³ ⟨ n_disk(R, Z) p_disk([M/H] | Z) + n_halo(R, Z) p_halo([M/H]) ⟩_sky        (M5)

The same [M/H] model is used with both Galactic parameter sets (brutus's own per-component
Gaussians are not reproduced).
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from .galactic import (BAYESTAR, GalacticParams, _sky_log_components, galactocentric_rz,
                       log_component_fractions, log_number_density_components, log_volume_jacobian)

__all__ = ["MetallicityParams", "IVEZIC2008", "disk_feh_mean", "log_normal", "log_p_feh_disk", "log_p_feh_halo",
           "log_prior_feh_rz", "log_prior_feh", "log_prior_mu_feh", "log_prior_mu_feh_sky"]

_LN_SQRT_2PI = float(0.5 * np.log(2.0 * np.pi))


class MetallicityParams(NamedTuple):
    """Parameters of Eqs. (M1)-(M3) ([dex], lengths [pc]); a pytree."""

    halo_mean: float = -1.46
    halo_sigma: float = 0.3
    disk_mean_inf: float = -0.82
    disk_mean_delta: float = 0.55
    disk_mean_H: float = 500.0
    disk_mean_offset: float = -0.067
    disk_sigma: float = 0.2
    disk_weight_1: float = 0.63
    disk_shift_2: float = 0.14


#: Ivezić et al. (2008) as in Bayestar (METHOD §8).
IVEZIC2008 = MetallicityParams()


def log_normal(x, mean, sigma):
    """ln N(x | mean, sigma); broadcast shape."""
    z = (x - mean) / sigma
    return -0.5 * z * z - jnp.log(sigma) - _LN_SQRT_2PI


def disk_feh_mean(Z, mp: MetallicityParams = IVEZIC2008):
    """μ_D(Z) [dex], Eq. (M3); ``Z`` [pc] height above the midplane, shape (...)."""
    return mp.disk_mean_inf + mp.disk_mean_delta * jnp.exp(-jnp.abs(Z) / mp.disk_mean_H) + mp.disk_mean_offset


def log_p_feh_disk(feh, Z, mp: MetallicityParams = IVEZIC2008):
    """ln p_disk([M/H] | Z), Eq. (M2); ``feh`` [dex], ``Z`` [pc], broadcast shape. Normalized over [M/H]."""
    m = disk_feh_mean(Z, mp)
    a = jnp.log(mp.disk_weight_1) + log_normal(feh, m, mp.disk_sigma)
    c = jnp.log1p(-mp.disk_weight_1) + log_normal(feh, m + mp.disk_shift_2, mp.disk_sigma)
    return jnp.logaddexp(a, c)


def log_p_feh_halo(feh, mp: MetallicityParams = IVEZIC2008):
    """ln p_halo([M/H]), Eq. (M1); shape of ``feh``. Normalized over [M/H]."""
    return log_normal(feh, mp.halo_mean, mp.halo_sigma)


def log_prior_feh_rz(feh, Z, log_fractions, mp: MetallicityParams = IVEZIC2008):
    """Eq. (M4) given the height Z [pc] and ln component fractions (..., 3) (thin, thick, halo)."""
    ln_disk = jnp.logaddexp(log_fractions[..., 0], log_fractions[..., 1])
    return jnp.logaddexp(ln_disk + log_p_feh_disk(feh, Z, mp), log_fractions[..., 2] + log_p_feh_halo(feh, mp))


def log_prior_feh(feh, mu, l, b, params: GalacticParams = BAYESTAR, mp: MetallicityParams = IVEZIC2008):
    """ln p([M/H] | μ, l, b), Eq. (M4), normalized over [M/H].

    Parameters
    ----------
    feh : array, shape (...)
        [M/H] [dex].
    mu : array, broadcastable
        Distance modulus [mag].
    l, b : array, broadcastable
        [deg].
    params : GalacticParams
        For the component fractions and Z.
    mp : MetallicityParams

    Returns
    -------
    array, broadcast shape
    """
    _, Z = galactocentric_rz(mu, l, b, params)
    return log_prior_feh_rz(feh, Z, log_component_fractions(mu, l, b, params), mp)


def log_prior_mu_feh(feh, mu, l, b, params: GalacticParams = BAYESTAR, mp: MetallicityParams = IVEZIC2008):
    """ln p(μ, [M/H] | l, b) = ln p(μ | l, b) + ln p([M/H] | μ, l, b), Eqs. (G5)+(M4), unnormalized in μ."""
    R, Z = galactocentric_rz(mu, l, b, params)
    lnc = log_number_density_components(R, Z, params)
    ln_disk = jnp.logaddexp(lnc[..., 0], lnc[..., 1])
    joint = jnp.logaddexp(ln_disk + log_p_feh_disk(feh, Z, mp), lnc[..., 2] + log_p_feh_halo(feh, mp))
    return joint + log_volume_jacobian(mu)


def log_prior_mu_feh_sky(feh, mu, params: GalacticParams = BAYESTAR, mp: MetallicityParams = IVEZIC2008,
                         n_dirs: int = 1024):
    """Position-free joint prior ln p(μ, [M/H]), Eq. (M5), unnormalized in μ.

    Its [M/H]-integral is :func:`photoinfer.priors.galactic.log_prior_mu_sky`.

    Parameters
    ----------
    feh, mu : array, broadcastable, shape (...)
        [dex], [mag].
    params : GalacticParams
    mp : MetallicityParams
    n_dirs : int
        Sky quadrature size (static).

    Returns
    -------
    array, broadcast shape
    """
    feh, mu = jnp.broadcast_arrays(jnp.asarray(feh, jnp.float32), jnp.asarray(mu, jnp.float32))
    lnc, Z = _sky_log_components(mu, params, n_dirs)          # (..., N, 3), (..., N)
    f = feh[..., None]
    ln_disk = jnp.logaddexp(lnc[..., 0], lnc[..., 1])
    per_dir = jnp.logaddexp(ln_disk + log_p_feh_disk(f, Z, mp), lnc[..., 2] + log_p_feh_halo(f, mp))
    return logsumexp(per_dir, axis=-1) - jnp.log(float(n_dirs)) + log_volume_jacobian(mu)
