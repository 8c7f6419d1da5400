"""Posterior outputs: arviz InferenceData, NetCDF files, and the per-star summary table.

The one module that imports arviz.  It works with arviz 0.23 (``InferenceData``, Python 3.11)
and arviz ≥ 1.0 (``xarray.DataTree``, Python 3.12): containers are built from plain xarray
Datasets, and r̂/ESS are computed by ``arviz.rhat``/``arviz.ess`` on a Dataset with dims
(chain, draw, star), whose call is the same in both.

Layout of the InferenceData (any :class:`~photoinfer.fitresult.FitResult`):

- ``posterior``: teff [K], logg, feh [dex], mu [mag], E, distance [pc]; dims (chain, draw, star)
- ``sample_stats``: diverging (0/1 int8: NetCDF has no bool), n_steps, acceptance_rate, energy, lp, step_size (what the method gives)
- ``observed_data`` (with a catalog): mag, mag_err (star, band) [mag], parallax, parallax_err (star) [mas]
- ``constant_data``: source_id, flags (star); with a catalog also l, b [deg]
- coordinate ``star`` = source_id; attrs: the FitResult's attrs (prior, seed, settings)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .catalog import INFERENCE_UNUSABLE, Flag
from .fitresult import PARAMETERS, SUMMARY_COLUMNS, FitResult, distance_from_mu

__all__ = ["to_inference_data", "save_inference_data", "load_inference_data", "summarize", "write_summary",
           "diagnostics", "VALIDITY_THRESHOLD"]

#: Draws with ``model.validity.min_density(θ)`` below this are outside the region of validity.
VALIDITY_THRESHOLD = 1e-2
_STAT_NAMES = {"accept_prob": "acceptance_rate"}


def _az():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz
    return arviz


def _posterior_dataset(samples: dict, coords: dict):
    import xarray as xr
    return xr.Dataset({k: (("chain", "draw", "star"), np.asarray(v)) for k, v in samples.items()}, coords=coords)


def _coords(result: FitResult, n_chain: int, n_draw: int) -> dict:
    return {"chain": np.arange(n_chain), "draw": np.arange(n_draw), "star": np.asarray(result.source_id, np.int64)}


def _attrs(result: FitResult) -> dict:
    out = {"method": result.method}
    for k, v in result.attrs.items():       # NetCDF attributes: no bool, no None
        out[k] = int(v) if isinstance(v, (bool, np.bool_)) else v if isinstance(v, (int, float, str)) else str(v)
    return out


def to_inference_data(result: FitResult, catalog=None):
    """An arviz container (``InferenceData`` for arviz < 1, ``xarray.DataTree`` for arviz ≥ 1) of a fit.

    Parameters
    ----------
    result : FitResult
    catalog : Catalog, optional
        The fitted catalog (same stars, same order): adds ``observed_data`` and l, b.
    """
    import xarray as xr
    az = _az()
    n_chain, n_draw, n = next(iter(result.samples.values())).shape
    coords = _coords(result, n_chain, n_draw)
    post = {k: result.samples[k] for k in PARAMETERS}
    post["distance"] = result.draws("distance")
    groups = {"posterior": _posterior_dataset(post, coords)}
    # NetCDF (h5netcdf) has no boolean type: diverging is stored as 0/1 int8
    stats = {_STAT_NAMES.get(k, k): (np.asarray(v).astype(np.int8) if np.asarray(v).dtype == bool else v)
             for k, v in result.sample_stats.items()}
    groups["sample_stats"] = _posterior_dataset(stats, coords)
    const = {"source_id": ("star", np.asarray(result.source_id, np.int64)),
             "flags": ("star", np.asarray(result.flags, np.int64))}
    if catalog is not None:
        if len(catalog) != n or not np.array_equal(catalog.source_id, result.source_id):
            raise ValueError(f"{catalog.name}: catalog stars do not match the fit's (same source_id order needed)")
        band = list(catalog.bands.names)
        groups["observed_data"] = xr.Dataset(
            {"mag": (("star", "band"), catalog.mag), "mag_err": (("star", "band"), catalog.mag_err),
             "parallax": ("star", catalog.parallax), "parallax_err": ("star", catalog.parallax_err)},
            coords={"star": coords["star"], "band": band})
        const.update({"l": ("star", catalog.l), "b": ("star", catalog.b)})
    groups["constant_data"] = xr.Dataset(const, coords={"star": coords["star"]})
    attrs = _attrs(result)
    for ds in groups.values():
        ds.attrs.update(attrs)
    if int(az.__version__.split(".")[0]) < 1:          # arviz < 1: InferenceData
        return az.InferenceData(**groups)
    return xr.DataTree.from_dict(groups)                # arviz >= 1: a DataTree


def save_inference_data(idata, path) -> Path:
    """Write an InferenceData/DataTree to NetCDF atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        idata.to_netcdf(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_inference_data(path):
    """Read a file written by :func:`save_inference_data` (arviz's ``from_netcdf``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such posterior file")
    return _az().from_netcdf(path)


def diagnostics(samples: dict) -> dict:
    """Per-star r̂ (max over parameters), bulk and tail ESS (min over parameters).

    Parameters
    ----------
    samples : dict name -> (chain, draw, N) arrays (NaN stars allowed: they get NaN)

    Returns
    -------
    dict with ``rhat_max``, ``ess_bulk_min``, ``ess_tail_min``: (N,) arrays
    """
    import warnings
    az = _az()
    first = next(iter(samples.values()))
    n_chain, n_draw, n = first.shape
    ok = np.all([np.isfinite(v).all(axis=(0, 1)) for v in samples.values()], axis=0)
    out = {k: np.full(n, np.nan) for k in ("rhat_max", "ess_bulk_min", "ess_tail_min")}
    if not ok.any():
        return out
    ds = _posterior_dataset({k: np.asarray(v, np.float64)[..., ok] for k, v in samples.items()},
                            {"chain": np.arange(n_chain), "draw": np.arange(n_draw), "star": np.flatnonzero(ok)})

    def stack(res, reduce):
        arr = np.stack([np.asarray(res[k]) for k in samples], axis=0)
        arr = np.where(np.isfinite(arr), arr, np.inf if reduce is np.max else 0.0)
        return reduce(arr, axis=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if n_chain > 1:
            out["rhat_max"][ok] = stack(az.rhat(ds, method="rank"), np.max)
        out["ess_bulk_min"][ok] = stack(az.ess(ds, method="bulk"), np.min)
        out["ess_tail_min"][ok] = stack(az.ess(ds, method="tail"), np.min)
    return out


def _fraction_outside(model, samples: dict, observed=None, chunk: int = 256) -> np.ndarray:
    """(N,) fraction of draws outside the region of validity (NaN without a grid).

    A draw is outside when the training density of map 0 (the training sample) or, given
    ``observed`` (N, B), of any band the star has observed is below ``VALIDITY_THRESHOLD``.
    """
    n = samples["teff"].shape[-1]
    if model is None or model.validity is None:
        return np.full(n, np.nan)
    theta = np.stack([samples[k] for k in ("teff", "logg", "feh")], axis=-1)      # (C, D, N, 3)
    out = np.full(n, np.nan)
    for s in range(0, n, chunk):
        t = theta[:, :, s:s + chunk]
        if observed is None:
            maps = np.arange(model.validity.density.shape[0]) == 0
        else:
            maps = model.validity.band_maps(np.asarray(observed)[s:s + chunk])[None, None]
        dens = np.asarray(model.validity.min_density(np.nan_to_num(t), maps))
        frac = np.mean(dens < VALIDITY_THRESHOLD, axis=(0, 1))
        out[s:s + chunk] = np.where(np.isfinite(t).all(axis=(0, 1, 3)), frac, np.nan)
    return out


def summarize(result: FitResult, model=None, ess_threshold: float = 200.0, rhat_threshold: float = 1.01,
              outside_fraction: float = 0.5, observed=None, diag: dict | None = None) -> dict:
    """The per-star summary table (columns :data:`~photoinfer.fitresult.SUMMARY_COLUMNS`), one row per star.

    Percentiles 16/50/84 of each parameter and of distance [pc]; ``rhat_max`` (max over the five
    parameters and distance), ``ess_bulk_min``/``ess_tail_min`` (min), ``n_divergent`` (post-warm-up
    divergent transitions), ``frac_outside_validity``.  ``flags`` = the input flags plus

    - ``FIT_FAILED``: some draw is non-finite (for a star that was fit);
    - ``NOT_CONVERGED``: r̂ > ``rhat_threshold`` or bulk ESS < ``ess_threshold``;
    - ``OUTSIDE_VALIDITY``: more than ``outside_fraction`` of the draws outside the region of validity.

    Stars with :data:`~photoinfer.catalog.INFERENCE_UNUSABLE` flags (not fit) get NaN and their flags.
    ``observed`` (N, B), the stars' observed bands, makes the validity test use each star's own bands.
    ``diag``: precomputed rhat_max/ess_bulk_min/ess_tail_min (e.g. within modes,
    :func:`photoinfer.infer.modes.combine_modes`) instead of :func:`diagnostics` of the draws.
    """
    n = len(result)
    flags = np.asarray(result.flags, np.int64).copy()
    fitted = (flags & int(INFERENCE_UNUSABLE)) == 0
    params = {k: np.asarray(result.samples[k], np.float64) for k in PARAMETERS}
    params["distance"] = distance_from_mu(params["mu"])
    cols = {"source_id": np.asarray(result.source_id, np.int64), "flags": flags,
            "method": np.full(n, result.method, dtype=object)}
    finite = np.all([np.isfinite(v).all(axis=(0, 1)) for v in params.values()], axis=0)
    for k, v in params.items():
        flat = v.reshape(-1, n)
        q = np.full((3, n), np.nan)
        if finite.any():
            q[:, finite] = np.percentile(flat[:, finite], [16, 50, 84], axis=0)
        cols[f"{k}_p16"], cols[f"{k}_p50"], cols[f"{k}_p84"] = q
    if diag is None:
        diag = diagnostics(params)
    diag = {k: np.asarray(diag[k], np.float64).copy() for k in ("rhat_max", "ess_bulk_min", "ess_tail_min")}
    cols.update(diag)
    div = result.sample_stats.get("diverging")
    cols["n_divergent"] = (np.sum(np.asarray(div, bool), axis=(0, 1)).astype(np.int64) if div is not None
                           else np.zeros(n, np.int64))
    cols["frac_outside_validity"] = _fraction_outside(model, params, observed)
    failed = fitted & ~finite
    flags[failed] |= Flag.FIT_FAILED
    ok = fitted & finite
    with np.errstate(invalid="ignore"):
        bad = (diag["rhat_max"] > rhat_threshold) | ~(diag["ess_bulk_min"] >= ess_threshold)
        if not np.isfinite(diag["rhat_max"]).any():      # one chain (or grid): ESS only
            bad = ~(diag["ess_bulk_min"] >= ess_threshold)
        flags[ok & bad] |= Flag.NOT_CONVERGED
        flags[ok & (cols["frac_outside_validity"] > outside_fraction)] |= Flag.OUTSIDE_VALIDITY
    for k in cols:
        if k not in ("source_id", "flags", "method"):
            cols[k][~ok] = np.nan if cols[k].dtype.kind == "f" else 0
    cols["flags"] = flags
    assert list(cols) == SUMMARY_COLUMNS, (list(cols), SUMMARY_COLUMNS)
    return cols


def write_summary(summary: dict, path) -> Path:
    """Write a summary table (Parquet or CSV, atomically) via :func:`photoinfer.io.tables.write_table`."""
    from .io.tables import write_table
    cols = dict(summary)
    cols["method"] = np.asarray(cols["method"]).astype(str)
    return write_table(cols, path)


