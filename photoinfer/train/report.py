"""The training report: numbers (JSON-able) and the arrays its figures need (paper §5–6)."""
from __future__ import annotations

import numpy as np

from ..catalog import Catalog
from ..evaluate import star_data, update_reddening
from ..model import StellarModel
from . import schedule, validation
from .loop import History

__all__ = ["build_report", "VALIDITY_THRESHOLD"]

#: Below this peak-normalized density a prediction is treated as unreliable (METHOD §7).
VALIDITY_THRESHOLD = 1e-2


def _edges(x, n=12):
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return np.array([0.0, 1.0])
    lo, hi = np.quantile(x, [0.005, 0.995])
    return np.linspace(lo, hi if hi > lo else lo + 1.0, n + 1)


def build_report(model: StellarModel, history: History, cat: Catalog, reference: StellarModel | None = None,
                 reference_name: str = "reference") -> tuple[dict, dict]:
    """Numbers and figure data of a finished training.

    Parameters
    ----------
    model, history : what :func:`~photoinfer.train.train` returned for ``cat``
    reference : StellarModel, optional
        Another model (e.g. the released one) evaluated on the same test stars, each at its own
        reddening update.

    Returns
    -------
    report : dict (JSON-able)
        ``training`` (history summary), ``chi2_per_dof`` per split (at the final reddening, full C_y),
        ``zscores`` (median and 16/84 % per component over held-out stars), ``extinction``
        (R at θ_med and the spread of δR/R), ``validity`` (fraction of test stars below 1e-2),
        and ``reference`` when given.
    figures : dict of arrays for :mod:`photoinfer.plots`
    """
    data = star_data(cat)
    usable = history.usable
    E = np.nan_to_num(history.E)
    sE = np.nan_to_num(history.sigma_E, nan=1.0)
    z, c2, n_obs = validation.residuals(model, data, E, sE)
    report = {"training": history.summary(), "bands": list(model.bands.names)}
    report["chi2_per_dof"] = {name: validation.chi2_per_dof(c2[usable & (history.split == i)],
                                                             n_obs[usable & (history.split == i)])
                              for i, name in enumerate(schedule.SPLIT_NAMES)}
    report["chi2_per_band_mean"] = {name: float(np.mean(c2[usable & (history.split == i)]) / model.n_bands)
                                    if np.any(usable & (history.split == i)) else float("nan")
                                    for i, name in enumerate(schedule.SPLIT_NAMES)}
    held = usable & (history.split != schedule.TRAIN)
    zh = z[held]
    with np.errstate(all="ignore"):
        q = np.nanquantile(zh, [0.16, 0.5, 0.84], axis=0) if len(zh) else np.full((3, model.n_bands), np.nan)
    comp = ["M_" + model.bands.names[0]] + [f"{b}-{model.bands.names[0]}" for b in model.bands.names[1:]]
    report["zscores"] = {"components": comp, "held_out_stars": int(held.sum()),
                         "p16": q[0].tolist(), "median": q[1].tolist(), "p84": q[2].tolist()}
    theta = cat.theta
    figs = {"history": history, "components": comp}
    figs["zscore_bins"] = {}
    for j, (label, x) in enumerate((("Teff [K]", theta[:, 0]), ("logg", theta[:, 1]), ("[M/H]", theta[:, 2]),
                                    ("E", E))):
        centres, qq, counts = validation.binned_quantiles(x[held], zh, _edges(x[held]))
        figs["zscore_bins"][label] = (centres, qq, counts)
    train_sel = usable & (history.split == schedule.TRAIN)
    dR = validation.extinction_variation(model, theta[train_sel])
    R_med = np.asarray(model.extinction(np.asarray(model.theta_med, np.float32)))
    report["extinction"] = {"R_at_theta_med": dict(zip(model.bands.names, R_med.tolist())),
                            "dR_over_R_p16": dict(zip(model.bands.names, np.quantile(dR, 0.16, axis=0).tolist())),
                            "dR_over_R_p84": dict(zip(model.bands.names, np.quantile(dR, 0.84, axis=0).tolist()))}
    figs["dR"] = (theta[train_sel, 0], dR, list(model.bands.names))
    figs["cmd"] = validation.cmd_points(model, data, E)
    figs["cmd"]["train"] = train_sel[figs["cmd"]["index"]]
    if model.validity is not None:
        test = usable & (history.split == schedule.TEST)
        dens = np.asarray(model.validity(theta[test])) if test.any() else np.zeros((0, len(model.validity.labels)))
        report["validity"] = {"labels": list(model.validity.labels), "threshold": VALIDITY_THRESHOLD,
                              "test_frac_below_threshold": dict(zip(model.validity.labels,
                                                                    np.mean(dens < VALIDITY_THRESHOLD, axis=0).tolist()))
                              if len(dens) else {}}
        figs["validity"] = model.validity
    if reference is not None:
        test = usable & (history.split == schedule.TEST)
        sub = cat.subset(test)
        d_sub = star_data(sub)
        E_ref, var_ref = update_reddening(reference, d_sub)
        _, c2_ref, n_ref = validation.residuals(reference, d_sub, E_ref, np.sqrt(var_ref))
        report["reference"] = {"name": reference_name,
                               "test_chi2_per_dof": validation.chi2_per_dof(c2_ref, n_ref),
                               "test_chi2_per_band_mean": float(np.mean(c2_ref) / reference.n_bands),
                               "this_model_test_chi2_per_dof": report["chi2_per_dof"]["test"]}
    return report, figs
