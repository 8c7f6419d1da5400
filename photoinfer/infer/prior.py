"""The prior p(θ, μ, E | l, b) of METHOD §8 as the inference model evaluates it, per star.

Thin adapter over :class:`photoinfer.priors.GalacticPrior` (the priors themselves live in
:mod:`photoinfer.priors`): for stars without a sky position the position-free (sky-averaged)
term ln p(μ, [M/H]) costs a 256-direction quadrature per evaluation, far more than the network
itself, so it is tabulated once on a fine (μ, [M/H]) grid and interpolated bilinearly; beyond the
table's μ range it continues linearly with the slope at the edge.  For stars with (l, b) the
sightline prior is evaluated exactly.  Both are computed for every star and one is selected, so
stars with and without positions share a batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

from ..priors import GalacticPrior, log_prior_mu_feh, make_prior

__all__ = ["InferencePrior", "build_prior", "MU_TABLE", "FEH_TABLE"]

#: μ and [M/H] nodes of the position-free table: (first, last, number).
MU_TABLE = (-3.0, 22.0, 501)
FEH_TABLE = (-3.5, 1.5, 251)


@dataclass(frozen=True, eq=False)
class InferencePrior:
    """ln p(θ, μ, E | l, b) per star, as used by :mod:`photoinfer.infer.model`.

    Attributes
    ----------
    prior : GalacticPrior
        The priors (Galactic parameter set, stellar, dust kind, E_max).
    sky_table : ndarray, shape (n_mu, n_feh)
        ln p(μ, [M/H]) sky-averaged, on :data:`MU_TABLE` × :data:`FEH_TABLE` nodes.
    name : str
        Galactic parameter set ("bayestar", "brutus").
    sightline : bool
        False skips the sightline term (every star is position-free): saves its cost per evaluation.
    """

    prior: GalacticPrior
    sky_table: np.ndarray
    name: str = "bayestar"
    sightline: bool = True

    @property
    def E_max(self) -> float:
        return float(self.prior.E_max)

    def log_prior_sky(self, feh, mu):
        """Tabulated position-free ln p(μ, [M/H]) (bilinear; linear continuation in μ beyond the table)."""
        m0, m1, nm = MU_TABLE
        f0, f1, nf = FEH_TABLE
        dm, df = (m1 - m0) / (nm - 1), (f1 - f0) / (nf - 1)
        cm = (mu - m0) / dm
        cf = jnp.clip((feh - f0) / df, 0.0, nf - 1.0)
        cmc = jnp.clip(cm, 0.0, nm - 1.0)
        tab = jnp.asarray(self.sky_table)
        val = map_coordinates(tab, [cmc, cf], order=1, mode="nearest")
        lo_slope = map_coordinates(tab[1] - tab[0], [cf], order=1, mode="nearest")
        hi_slope = map_coordinates(tab[-1] - tab[-2], [cf], order=1, mode="nearest")
        return val + jnp.where(cm < 0, lo_slope * cm, 0.0) + jnp.where(cm > nm - 1, hi_slope * (cm - (nm - 1)), 0.0)

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


def _sky_table(prior: GalacticPrior) -> np.ndarray:
    from ..priors import log_prior_mu_feh_sky
    mu = np.linspace(*MU_TABLE)
    feh = np.linspace(*FEH_TABLE)
    fn = jax.jit(jax.vmap(lambda m: log_prior_mu_feh_sky(jnp.asarray(feh), m, prior.params, prior.metallicity,
                                                        prior.n_dirs)))
    return np.asarray(fn(jnp.asarray(mu, jnp.float32)), np.float32)


def build_prior(model=None, name: str = "bayestar", dust: str = "flat", E_max: float | None = None,
                prior: GalacticPrior | None = None) -> InferencePrior:
    """The inference prior: Galactic set ``name``, the model's (Teff, logg | [M/H]) prior, dust prior.

    Parameters
    ----------
    model : StellarModel, optional
        Its validity grid gives the stellar prior (without one the (Teff, logg) term is flat: a warning
        is the caller's job).
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
    return InferencePrior(prior=prior, sky_table=_sky_table(prior), name=str(name))
