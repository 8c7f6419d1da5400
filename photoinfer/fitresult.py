"""`FitResult`: the per-star posterior of any fitting method (NUTS, grid), in one shape.

Every method returns this, so outputs (arviz InferenceData, the summary table, per-star (μ, E)
images) are written by the same code whatever produced the draws.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FitResult", "PARAMETERS", "SUMMARY_COLUMNS", "distance_from_mu"]

#: Sampled parameters and their units, in order.
PARAMETERS = {"teff": "K", "logg": "dex", "feh": "dex", "mu": "mag", "E": "mag (reddening units)"}
#: Derived: distance [pc].
DERIVED = {"distance": "pc"}


def distance_from_mu(mu):
    """d = 10^(μ/5 + 1) [pc]."""
    return 10.0 ** (np.asarray(mu) / 5.0 + 1.0)


def _summary_columns() -> list[str]:
    cols = ["source_id", "flags", "method"]
    for p in (*PARAMETERS, *DERIVED):
        cols += [f"{p}_p16", f"{p}_p50", f"{p}_p84"]
    return cols + ["rhat_max", "ess_bulk_min", "ess_tail_min", "n_divergent", "frac_outside_validity"]


#: Columns of the per-star summary table, in order.  For the grid method ``ess_bulk_min`` and
#: ``ess_tail_min`` hold the effective number of grid samples (Kish), ``rhat_max`` is NaN.
SUMMARY_COLUMNS = _summary_columns()


@dataclass
class FitResult:
    """Posterior draws and diagnostics for N stars.

    Attributes
    ----------
    source_id : (N,) int64
    samples : dict name -> (chain, draw, N) array, for every name in :data:`PARAMETERS`
    sample_stats : dict name -> (chain, draw, N) array (e.g. ``diverging``, ``n_steps``, ``accept_prob``;
        for the grid, ``log_weight`` of each resampled draw)
    summary : dict column -> (N,) array, columns :data:`SUMMARY_COLUMNS`
    flags : (N,) int64, :class:`~photoinfer.catalog.Flag` bits
    method : str, ``"nuts"``, ``"grid"`` or ``"grid+nuts"``
    attrs : dict, provenance (model, prior, seed, settings)
    """

    source_id: np.ndarray
    samples: dict
    sample_stats: dict
    summary: dict
    flags: np.ndarray
    method: str
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.source_id)

    def draws(self, name: str) -> np.ndarray:
        """(chain, draw, N) draws of a parameter or of ``distance`` [pc]."""
        if name == "distance":
            return distance_from_mu(self.samples["mu"])
        return self.samples[name]
