"""Catalog files: the released sample (HDF5) and users' catalogs in Parquet, FITS and CSV.

User catalog columns (one row per star; see docs/catalogs.md):

=====================================  ==========================================================
column                                 meaning
=====================================  ==========================================================
``source_id``                          integer id (optional: row number if absent)
``{band}_mag``, ``{band}_mag_err``     magnitude and error per band key (``gaia_g``, ``ps1_r``, ...)
                                       [mag]; NaN/empty = unobserved.  The reference band is required.
``parallax``, ``parallax_error``       [mas] (optional)
``l``, ``b`` or ``ra``, ``dec``        [deg], ICRS for ra/dec (optional; needed for sky-dependent priors)
``teff``, ``logg``, ``feh``            θ [K, dex, dex] (training stars), with ``teff_err``, ``logg_err``,
                                       ``feh_err`` and optional ``teff_logg_corr``, ``teff_feh_corr``,
                                       ``logg_feh_corr``
``ebv``, ``ebv_err``, ``ebv_source``   reddening prior and where it comes from (optional)
``atm_source``                         spectroscopic survey of θ (optional)
=====================================  ==========================================================

Any other column is carried through in ``Catalog.extra``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np

from ..catalog import Catalog
from ..conventions import DEFAULT_BANDS, BandSet

__all__ = ["read_catalog", "write_catalog", "read_released_sample", "catalog_to_columns", "catalog_from_columns",
           "CatalogFormatError", "FORMATS"]

log = logging.getLogger(__name__)

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".fits": "fits", ".fit": "fits", ".fits.gz": "fits",
           ".csv": "csv", ".h5": "hdf5", ".hdf5": "hdf5"}
_THETA = ("teff", "logg", "feh")
_CORR = {(0, 1): "teff_logg_corr", (0, 2): "teff_feh_corr", (1, 2): "logg_feh_corr"}
_KNOWN = {"source_id", "parallax", "parallax_error", "l", "b", "ra", "dec", "ebv", "ebv_err", "ebv_source",
          "atm_source", *_THETA, *(t + "_err" for t in _THETA), *_CORR.values()}


class CatalogFormatError(ValueError):
    """A catalog file lacks a required column or has an unreadable one (the message names it)."""


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return FORMATS[ext]
    raise CatalogFormatError(f"{path}: unknown catalog format (known extensions: {sorted(FORMATS)})")


def read_released_sample(path: str | os.PathLike, bands: BandSet = DEFAULT_BANDS) -> Catalog:
    """Read the released sample format (``green2020_sample_8k.h5``: structured dataset ``data``).

    source_id is the row number; ``r_fit``, ``r_var`` (the authors' fitted reddening) land in ``extra``.
    The file's magnitudes already include the 0.02 mag floor and unWISE in AB.
    """
    path = Path(path)
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise CatalogFormatError(f"{path}: no dataset 'data' (not the released sample format)")
        d = f["data"][()]
        extra = {k: f[k][()] for k in ("r_fit", "r_var") if k in f}
    need = ("atm_param", "atm_param_cov", "mag", "mag_err", "parallax", "parallax_err", "r", "r_err")
    missing = [c for c in need if c not in d.dtype.names]
    if missing:
        raise CatalogFormatError(f"{path}: dataset 'data' lacks column(s) {missing}")
    names = d.dtype.names
    return Catalog.from_arrays(d["mag"], d["mag_err"], bands=bands, parallax=d["parallax"],
                               parallax_err=d["parallax_err"], theta=d["atm_param"], theta_cov=d["atm_param_cov"],
                               E0=d["r"], sigma_E0=d["r_err"],
                               r_source=d["r_source"] if "r_source" in names else None,
                               atm_source=d["atm_source"] if "atm_source" in names else None,
                               extra=extra, name=path.name)


def _read_table(path: Path, fmt: str, columns=None) -> dict[str, np.ndarray]:
    if fmt == "parquet":
        import pyarrow.parquet as pq
        t = pq.read_table(path, columns=columns)
        return {c: _arrow_to_numpy(t.column(c)) for c in t.column_names}
    if fmt == "csv":
        import pyarrow.csv as pcsv
        t = pcsv.read_csv(path)
        return {c: _arrow_to_numpy(t.column(c)) for c in t.column_names}
    if fmt == "fits":
        from astropy.table import Table
        t = Table.read(path)
        out = {}
        for c in t.colnames:
            col = t[c]
            a = np.asarray(col.filled(np.nan) if hasattr(col, "filled") and col.dtype.kind == "f" else col)
            if a.dtype.kind == "S":
                a = np.char.decode(a, "utf-8")
            out[c] = a
        return out
    raise CatalogFormatError(f"{path}: format {fmt} is not a column table")


def _arrow_to_numpy(col) -> np.ndarray:
    import pyarrow as pa
    if pa.types.is_floating(col.type):
        return col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    if pa.types.is_integer(col.type) and col.null_count:
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(col.to_numpy(zero_copy_only=False))


def catalog_from_columns(cols: dict[str, np.ndarray], bands: BandSet = DEFAULT_BANDS, name: str = "catalog") -> Catalog:
    """Build a :class:`Catalog` from named columns in the documented format.

    Raises
    ------
    CatalogFormatError
        Naming the missing column: the reference band's magnitude or error; an error column for
        a magnitude column that has one; ``parallax_error`` when ``parallax`` is given; θ errors
        when θ is given; ``ebv_err`` when ``ebv`` is given; ``b`` with ``l``, ``dec`` with ``ra``.
    """
    lower = {c.lower(): c for c in cols}

    def get(c):
        return cols[lower[c]] if c in lower else None

    def need(c, because):
        v = get(c)
        if v is None:
            raise CatalogFormatError(f"{name}: missing required column {c!r} ({because})")
        return v

    n = None
    for v in cols.values():
        n = len(v)
        break
    if n is None:
        raise CatalogFormatError(f"{name}: the table has no columns")
    ref = bands.reference.key
    need(f"{ref}_mag", f"the reference band {bands.reference.name}")
    mag = np.full((n, len(bands)), np.nan)
    err = np.full((n, len(bands)), np.nan)
    used = set()
    for j, band in enumerate(bands):
        m, e = get(f"{band.key}_mag"), get(f"{band.key}_mag_err")
        if m is None and e is None:
            log.warning("%s: no column %s_mag: band %s unobserved for every star", name, band.key, band.name)
            continue
        if m is None or e is None:
            missing = f"{band.key}_mag" if m is None else f"{band.key}_mag_err"
            raise CatalogFormatError(f"{name}: missing required column {missing!r} (its partner column is present)")
        mag[:, j], err[:, j] = _float(m, f"{band.key}_mag", name), _float(e, f"{band.key}_mag_err", name)
        used |= {f"{band.key}_mag", f"{band.key}_mag_err"}

    plx = get("parallax")
    plx_err = need("parallax_error", "parallax is given") if plx is not None else None
    l, b = get("l"), get("b")
    if (l is None) != (b is None):
        raise CatalogFormatError(f"{name}: missing required column {'b' if b is None else 'l'!r} (l and b go together)")
    if l is None and get("ra") is not None:
        ra, dec = get("ra"), need("dec", "ra is given")
        from astropy.coordinates import SkyCoord
        import astropy.units as u
        g = SkyCoord(ra=_float(ra, "ra", name) * u.deg, dec=_float(dec, "dec", name) * u.deg, frame="icrs").galactic
        l, b = g.l.deg, g.b.deg

    theta = cov = None
    if get("teff") is not None or get("logg") is not None or get("feh") is not None:
        theta = np.stack([_float(need(t, "θ is given"), t, name) for t in _THETA], axis=1)
        sig = np.stack([_float(need(t + "_err", "θ is given"), t + "_err", name) for t in _THETA], axis=1)
        corr = np.eye(3)[None].repeat(n, axis=0)
        for (i, j), c in _CORR.items():
            if get(c) is not None:
                corr[:, i, j] = corr[:, j, i] = np.nan_to_num(_float(get(c), c, name))
        cov = corr * sig[:, :, None] * sig[:, None, :]

    E0 = get("ebv")
    sE0 = need("ebv_err", "ebv is given") if E0 is not None else None
    known = _KNOWN | used
    extra = {k: v for k, v in cols.items() if k.lower() not in known}
    sid = get("source_id")
    return Catalog.from_arrays(mag, err, bands=bands, source_id=sid, parallax=plx, parallax_err=plx_err, l=l, b=b,
                               theta=theta, theta_cov=cov, E0=E0, sigma_E0=sE0, r_source=get("ebv_source"),
                               atm_source=get("atm_source"), extra=extra, name=name)


def _float(a, column: str, name: str) -> np.ndarray:
    try:
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise CatalogFormatError(f"{name}: column {column!r} is not numeric ({e})") from None


def read_catalog(path: str | os.PathLike, bands: BandSet = DEFAULT_BANDS) -> Catalog:
    """Read a catalog file (format from its extension: .parquet, .fits, .csv, or the released .h5 sample).

    Raises
    ------
    FileNotFoundError
        Naming the file.
    CatalogFormatError
        Naming the file and the missing or unreadable column.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"catalog file {path} does not exist")
    fmt = _format_of(path)
    if fmt == "hdf5":
        return read_released_sample(path, bands)
    try:
        cols = _read_table(path, fmt)
    except (OSError, ValueError) as e:
        if isinstance(e, CatalogFormatError):
            raise
        raise CatalogFormatError(f"{path}: cannot read as {fmt}: {e}") from None
    return catalog_from_columns(cols, bands, name=path.name)


def catalog_to_columns(cat: Catalog) -> dict[str, np.ndarray]:
    """The catalog as named columns in the documented format (inverse of :func:`catalog_from_columns`)."""
    cols: dict[str, np.ndarray] = {"source_id": cat.source_id}
    for j, band in enumerate(cat.bands):
        cols[f"{band.key}_mag"] = cat.mag[:, j]
        cols[f"{band.key}_mag_err"] = cat.mag_err[:, j]
    if np.isfinite(cat.parallax).any():
        cols["parallax"], cols["parallax_error"] = cat.parallax, cat.parallax_err
    if np.isfinite(cat.l).any():
        cols["l"], cols["b"] = cat.l, cat.b
    if np.isfinite(cat.theta).any():
        sig = np.sqrt(np.diagonal(cat.theta_cov, axis1=1, axis2=2))
        for i, t in enumerate(_THETA):
            cols[t], cols[t + "_err"] = cat.theta[:, i], sig[:, i]
        for (i, j), c in _CORR.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                cols[c] = cat.theta_cov[:, i, j] / (sig[:, i] * sig[:, j])
    if np.isfinite(cat.E0).any():
        cols["ebv"], cols["ebv_err"] = cat.E0, cat.sigma_E0
        cols["ebv_source"] = cat.r_source.astype(str)
    if any(cat.atm_source):
        cols["atm_source"] = cat.atm_source.astype(str)
    for k, v in cat.extra.items():
        cols[k] = v
    return cols


def write_catalog(cat: Catalog, path: str | os.PathLike) -> Path:
    """Write ``cat`` in the documented column format (format from the extension), atomically."""
    path = Path(path)
    fmt = _format_of(path)
    cols = catalog_to_columns(cat)
    tmp = path.with_name(path.name + ".tmp")
    if fmt in ("parquet", "csv"):
        import pyarrow as pa
        table = pa.table({k: (v if np.asarray(v).ndim == 1 else list(np.asarray(v))) for k, v in cols.items()})
        if fmt == "parquet":
            import pyarrow.parquet as pq
            pq.write_table(table, tmp)
        else:
            import pyarrow.csv as pcsv
            pcsv.write_csv(table, tmp)
    elif fmt == "fits":
        from astropy.table import Table
        Table({k: np.asarray(v) for k, v in cols.items()}).write(tmp, format="fits", overwrite=True)
    else:
        raise CatalogFormatError(f"{path}: photoinfer writes catalogs as .parquet, .fits or .csv")
    os.replace(tmp, path)
    return path
