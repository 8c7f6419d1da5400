"""The prior p(θ, μ, E | l, b) of METHOD §8 as the inference model evaluates it, per star.

Thin adapter over :class:`photoinfer.priors.GalacticPrior` (the priors themselves live in
:mod:`photoinfer.priors`): stars without a sky position get the position-free (sky-averaged)
ln p(μ, [M/H]) from the priors' own table (:attr:`GalacticPrior.sky_table`, built once, bilinear);
stars with (l, b) the sightline prior, evaluated exactly.  Both are computed for every star and
one is selected, so stars with and without positions share a batch.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import jax.numpy as jnp

from ..priors import GalacticPrior, log_prior_mu_feh, make_prior

__all__ = ["InferencePrior", "build_prior"]


@dataclass(frozen=True, eq=False)
class InferencePrior:
    """ln p(θ, μ, E | l, b) per star, as used by :mod:`photoinfer.infer.model`.

    Attributes
    ----------
    prior : GalacticPrior
        The priors (Galactic parameter set, stellar, dust kind, E_max); its ``sky_table`` gives the
        position-free term.
    name : str
        Galactic parameter set ("bayestar", "brutus").
    sightline : bool
        False skips the sightline term (every star is position-free): saves its cost per evaluation.
    """

    prior: GalacticPrior
    name: str = "bayestar"
    sightline: bool = True

    @property
    def E_max(self) -> float:
        return float(self.prior.E_max)

    @cached_property
    def position_free(self) -> "InferencePrior":
        """This prior without the sightline term, one object per prior (jitted functions take the prior
        as a static argument, hashed by identity: a new object per call would recompile them)."""
        return self if not self.sightline else replace(self, sightline=False)

    def log_prior_sky(self, feh, mu):
        """Position-free ln p(μ, [M/H]) (the priors' tabulated sky average)."""
        return self.prior.log_prior_position(feh, mu)

    def log_prior(self, theta, mu, E, l, b, has_lb, E0, sigma_E0):
        """ln p(θ, μ, E | l, b) for one star (broadcasts).

        Parameters
        ----------
        theta : (..., 3) [K, dex, dex]; mu, E : (...)
        l, b : (...) [deg] (any finite value where ``has_lb`` is False)
        has_lb : (...) bool, the star has a sky position (else the position-free prior)
        E0, sigma_E0 : (...) per-star dust prior (used by the "gaussian"/"map" dust priors)
        """
        feh = theta[..., 2]
        lp = self.log_prior_sky(feh, mu)
        if self.sightline:
            lp = jnp.where(has_lb, log_prior_mu_feh(feh, mu, l, b, self.prior.params, self.prior.metallicity), lp)
        if self.prior.stellar is not None:
            lp = lp + self.prior.stellar(theta)
        if self.prior.dust == "flat":
            return lp + self.prior.log_prior_dust(E)
        return lp + self.prior.log_prior_dust(E, E0, sigma_E0)


def build_prior(model=None, name: str = "bayestar", dust: str = "flat", E_max: float | None = None,
                prior: GalacticPrior | None = None) -> InferencePrior:
    """The inference prior: Galactic set ``name``, the model's (Teff, logg | [M/H]) prior, dust prior.

    Parameters
    ----------
    model : StellarModel, optional
        Its validity grid gives the stellar prior (the smooth
        :class:`~photoinfer.priors.SmoothStellarPrior`; without a grid the (Teff, logg) term is flat:
        a warning is the caller's job).
    name : {"bayestar", "brutus"}
    dust : {"flat", "gaussian", "map"}
    E_max : float, optional
        Upper bound of E (default the priors' E_MAX = 7).
    prior : GalacticPrior, optional
        Use this one instead of building from the other arguments.
    """
    if prior is None:
        kw = {} if E_max is None else {"E_max": float(E_max)}
        use_model = model if (model is not None and model.validity is not None) else None
        prior = make_prior(name, model=use_model, dust=dust, **kw)
    prior.sky_table                      # build the position-free table now, outside any trace
    return InferencePrior(prior=prior, name=str(name))
