"""Per-star χ² of a model over a catalog of training-type stars (METHOD §3, §4, §9)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import likelihood as lik
from .batching import map_batched
from .catalog import TRAINING_UNUSABLE, Catalog, Flag
from .model import StellarModel

__all__ = ["star_data", "evaluate", "Evaluation", "update_reddening"]


def star_data(cat: Catalog, max_parallax_frac_err: float = 0.2) -> lik.StarData:
    """The likelihood's per-star arrays (:class:`~photoinfer.likelihood.StarData`) for a catalog."""
    return lik.star_data_from_arrays(cat.mag, cat.mag_err, cat.parallax, cat.parallax_err, cat.theta, cat.theta_cov,
                                     cat.E0, cat.sigma_E0, max_parallax_frac_err)


@partial(jax.jit, static_argnames=())
def _chi2_batch(params, med, std, s, E, sigma_E):
    return jax.vmap(lambda si, e, se: lik.star_chi2(params, med, std, si, e, se))(s, E, sigma_E)


@jax.jit
def _update_batch(params, med, std, s):
    return jax.vmap(lambda si: lik.star_reddening_update(params, med, std, si))(s)


def _model_args(model: StellarModel):
    return model.params, jnp.asarray(model.theta_med, jnp.float32), jnp.asarray(model.theta_std, jnp.float32)


def update_reddening(model: StellarModel, data: lik.StarData, batch_size: int = 8192):
    """Closed-form reddening update for every star (METHOD §4).  Returns (E, var_E), each (N,)."""
    p, med, std = _model_args(model)
    return map_batched(lambda s: _update_batch(p, med, std, s), data, batch_size)


@dataclass
class Evaluation:
    """Per-star results and their summary.

    Attributes
    ----------
    source_id, chi2, n_obs, E, sigma_E, flags : (N,) arrays; chi2 is NaN for unusable stars
    r_source : (N,) str
    n_bands : int
    """

    source_id: np.ndarray
    chi2: np.ndarray
    n_obs: np.ndarray
    E: np.ndarray
    sigma_E: np.ndarray
    flags: np.ndarray
    r_source: np.ndarray
    n_bands: int

    @property
    def chi2_per_band(self) -> np.ndarray:
        """χ²/B per star (B = all bands; unobserved components contribute 0, METHOD §9)."""
        return self.chi2 / self.n_bands

    @property
    def reduced_chi2(self) -> np.ndarray:
        """χ²/(n_obs − 1), as the training's outlier cut uses it (METHOD §5)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.chi2 / (self.n_obs - 1)

    def summary(self) -> dict:
        """``n_stars``, ``n_used``, ``chi2_per_band`` (mean), ``median_chi2_per_band`` and ``by_r_source``."""
        ok = np.isfinite(self.chi2)

        def stats(k):
            v = self.chi2_per_band[k & ok]
            return {"n": int(np.count_nonzero(k & ok)), "chi2_per_band": float(np.mean(v)) if len(v) else float("nan"),
                    "median_chi2_per_band": float(np.median(v)) if len(v) else float("nan")}

        out = {"n_stars": int(len(self.chi2)), "n_used": int(ok.sum()), "n_flagged_unusable": int((~ok).sum())}
        out.update({k: v for k, v in stats(np.ones_like(ok)).items() if k != "n"})
        out["by_r_source"] = {str(s): stats(self.r_source == s) for s in sorted(set(self.r_source.astype(str)))}
        return out

    def table(self) -> dict[str, np.ndarray]:
        """Per-star columns for writing."""
        return {"source_id": self.source_id, "chi2": self.chi2, "n_obs": self.n_obs, "chi2_per_band": self.chi2_per_band,
                "reduced_chi2": self.reduced_chi2, "E": self.E, "sigma_E": self.sigma_E, "flags": self.flags,
                "r_source": self.r_source.astype(str)}


def evaluate(model: StellarModel, cat: Catalog, update: bool = False, batch_size: int = 8192) -> Evaluation:
    """χ² of every star of ``cat`` under ``model`` (C_y with E ∂R/∂θ in J and the released stabilization).

    Parameters
    ----------
    update : bool
        False: at the prior reddening (E = E₀, σ_E = σ_E₀).  True: at the closed-form updated
        reddening (E_post, σ_E,post) of METHOD §4.

    Every star gets a row; stars with a :data:`~photoinfer.catalog.TRAINING_UNUSABLE` flag get
    χ² = NaN; a star with no observed component of ŷ has χ² = 0 (it counts in the mean, as in
    METHOD §9); a non-finite χ² gets ``FIT_FAILED``.
    """
    if len(model.bands) != len(cat.bands) or model.bands.keys != cat.bands.keys:
        raise ValueError(f"model bands {model.bands.names} differ from the catalog's {cat.bands.names}")
    data = star_data(cat)
    usable = cat.usable(TRAINING_UNUSABLE)
    E, sigma_E = np.nan_to_num(cat.E0), np.nan_to_num(cat.sigma_E0, nan=1.0)
    if update:
        E, var = update_reddening(model, data, batch_size)
        sigma_E = np.sqrt(var)
    p, med, std = _model_args(model)
    c2, n_obs = map_batched(lambda a: _chi2_batch(p, med, std, *a), (data, np.asarray(E, np.float32),
                                                                       np.asarray(sigma_E, np.float32)), batch_size)
    c2 = c2.astype(np.float64)
    flags = cat.flags.copy()
    failed = usable & ~np.isfinite(c2)
    flags[failed] |= Flag.FIT_FAILED
    c2[~usable | failed] = np.nan
    return Evaluation(cat.source_id, c2, n_obs.astype(np.int64), np.where(usable, E, np.nan),
                      np.where(usable, sigma_E, np.nan), flags, cat.r_source, len(cat.bands))
