"""Priors for photometry-only inference (METHOD §8), as pure JAX log-densities.

- :mod:`.galactic`: thin + thick disk + halo number density, the distance prior along a
  sightline and its sky-averaged (position-free) form; parameter sets ``"bayestar"``, ``"brutus"``.
- :mod:`.metallicity`: the [M/H] prior by component (Ivezić et al. 2008 / Bayestar).
- :mod:`.stellar`: (Teff, logg | [M/H]) from a model's training density, confined to its region
  of validity.
- :mod:`.dust`: flat, truncated-Gaussian and map-informed priors on E.

:class:`GalacticPrior` bundles them into the one function the inference model needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import jax.numpy as jnp

from .dust import E_MAX, log_prior_E_flat, log_prior_E_gaussian, log_prior_E_map, map_informed_E_prior
from .galactic import (BAYESTAR, BRUTUS, COMPONENTS, GalacticParams, component_fractions,
                       component_fractions_sky, distance_pc, galactic_params, galactocentric_rz,
                       log_component_fractions, log_disk_density, log_halo_density, log_number_density,
                       log_number_density_components, log_prior_mu, log_prior_mu_sky, log_volume_jacobian,
                       sky_directions)
from .metallicity import (IVEZIC2008, MetallicityParams, disk_feh_mean, log_p_feh_disk, log_p_feh_halo,
                          log_prior_feh, log_prior_mu_feh, log_prior_mu_feh_sky, SkyPriorTable,
                          log_prior_mu_feh_sky_table, tabulate_mu_feh_sky)
from .stellar import SmoothStellarPrior, StellarPrior

__all__ = ["GalacticPrior", "make_prior",
           "GalacticParams", "BAYESTAR", "BRUTUS", "COMPONENTS", "galactic_params", "distance_pc",
           "galactocentric_rz", "log_disk_density", "log_halo_density", "log_number_density_components",
           "log_number_density", "log_volume_jacobian", "log_prior_mu", "component_fractions",
           "log_component_fractions", "sky_directions", "log_prior_mu_sky", "component_fractions_sky",
           "MetallicityParams", "IVEZIC2008", "disk_feh_mean", "log_p_feh_disk", "log_p_feh_halo",
           "log_prior_feh", "log_prior_mu_feh", "log_prior_mu_feh_sky", "SkyPriorTable",
           "tabulate_mu_feh_sky", "log_prior_mu_feh_sky_table",
           "StellarPrior", "SmoothStellarPrior",
           "E_MAX", "log_prior_E_flat", "log_prior_E_gaussian", "log_prior_E_map", "map_informed_E_prior"]

_DUST_KINDS = ("flat", "gaussian", "map")


@dataclass(frozen=True, eq=False)
class GalacticPrior:
    """The prior p(θ, μ, E | l, b) of METHOD §8 for one star (vmap it over stars).

    ln p = ln p(μ, [M/H] | l, b) + ln p(Teff, logg | [M/H]) + ln p(E)

    Attributes
    ----------
    params : GalacticParams
        Galactic model (see :func:`galactic_params`).
    stellar : SmoothStellarPrior, StellarPrior or None
        (Teff, logg | [M/H]) prior; None leaves that term out (flat).
    metallicity : MetallicityParams
    dust : {"flat", "gaussian", "map"}
        E prior: flat on [0, E_max]; truncated Gaussian N(E0, sigma_E0); map-informed (E0 = the
        map value, sigma_E0 given or 10 % ⊕ 0.02).
    E_max : float
        Upper bound of the flat prior.
    n_dirs : int
        Sky quadrature size of the position-free prior.
    tabulate_sky : bool
        Evaluate the position-free prior from a (μ, [M/H]) table built once (:attr:`sky_table`,
        interpolation error < 0.01 in ln p) instead of the ``n_dirs`` sum at every call.
    """

    params: GalacticParams = BAYESTAR
    stellar: SmoothStellarPrior | StellarPrior | None = None
    metallicity: MetallicityParams = IVEZIC2008
    dust: str = "flat"
    E_max: float = E_MAX
    n_dirs: int = 1024
    tabulate_sky: bool = True

    def __post_init__(self):
        if self.dust not in _DUST_KINDS:
            raise ValueError(f"dust prior {self.dust!r} is not one of {_DUST_KINDS}")

    def log_prior_position(self, feh, mu, l=None, b=None):
        """ln p(μ, [M/H] | l, b) (unnormalized in μ); sky-averaged when l and b are None."""
        if (l is None) != (b is None):
            raise ValueError("give both l and b, or neither")
        if l is None:
            if self.tabulate_sky:
                return log_prior_mu_feh_sky_table(self.sky_table, feh, mu)
            return log_prior_mu_feh_sky(feh, mu, self.params, self.metallicity, self.n_dirs)
        return log_prior_mu_feh(feh, mu, l, b, self.params, self.metallicity)

    @cached_property
    def sky_table(self) -> SkyPriorTable:
        """The position-free prior tabulated once (built on first use)."""
        return tabulate_mu_feh_sky(self.params, self.metallicity, self.n_dirs)

    def log_prior_dust(self, E, E0=None, sigma_E0=None):
        """ln p(E) of the chosen kind; ``E0`` (and ``sigma_E0``) are needed by "gaussian" and "map"."""
        if self.dust == "flat":
            return log_prior_E_flat(E, self.E_max)
        if E0 is None:
            raise ValueError(f"the {self.dust!r} dust prior needs E0")
        if self.dust == "gaussian":
            if sigma_E0 is None:
                raise ValueError("the 'gaussian' dust prior needs sigma_E0")
            return log_prior_E_gaussian(E, E0, sigma_E0)
        return log_prior_E_map(E, E0, sigma_E0)

    def log_prior(self, theta, mu, E, l=None, b=None, E0=None, sigma_E0=None):
        """ln p(θ, μ, E | l, b) for one star (or broadcast over leading axes).

        Parameters
        ----------
        theta : array, shape (..., 3)
            (Teff [K], logg [dex], [M/H] [dex]).
        mu : array, shape (...)
            Distance modulus [mag].
        E : array, shape (...)
            Reddening.
        l, b : array, shape (...), or None
            Galactic coordinates [deg]; None for the position-free (sky-averaged) prior.
        E0, sigma_E0 : array or None
            Per-star dust prior for ``dust="gaussian"`` / ``"map"``.

        Returns
        -------
        array, shape (...)
            Unnormalized in μ; −inf where E is outside its support.
        """
        theta = jnp.asarray(theta, jnp.float32)
        lp = self.log_prior_position(theta[..., 2], mu, l, b)
        if self.stellar is not None:
            lp = lp + self.stellar(theta)
        return lp + self.log_prior_dust(E, E0, sigma_E0)

    __call__ = log_prior


def make_prior(name: str | GalacticParams = "bayestar", model=None,
               stellar: SmoothStellarPrior | StellarPrior | None = None,
               dust: str = "flat", E_max: float = E_MAX, threshold: float = 1e-2, n_dirs: int = 1024,
               **overrides) -> GalacticPrior:
    """A :class:`GalacticPrior` with the Galactic parameter set chosen by name.

    Parameters
    ----------
    name : {"bayestar", "brutus"} or GalacticParams
    model : StellarModel, optional
        Its validity grid gives the (Teff, logg | [M/H]) prior (unless ``stellar`` is given): the
        smooth :class:`SmoothStellarPrior` (a Gaussian mixture with a soft validity wall, cheap
        gradients for HMC); pass ``stellar=StellarPrior.from_model(model)`` for the gridded one.
    stellar : SmoothStellarPrior or StellarPrior, optional
    dust, E_max, n_dirs
        See :class:`GalacticPrior`.
    threshold : float
        Validity threshold for the stellar prior built from ``model``.
    **overrides : float
        Galactic parameter overrides (see :func:`galactic_params`).
    """
    if stellar is None and model is not None:
        stellar = SmoothStellarPrior.from_model(model, threshold=threshold)
    return GalacticPrior(params=galactic_params(name, **overrides), stellar=stellar, dust=dust, E_max=E_max,
                         n_dirs=n_dirs)
