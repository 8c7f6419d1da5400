"""``photoinfer info``: what a model or catalog file holds."""
from __future__ import annotations

HELP = "describe a model file or a catalog file"
DESCRIPTION = """\
Describe a file: for a stellar model (photoinfer's own or the released Keras .h5), its
bands, size, θ normalization, provenance and region of validity; for a catalog, its
number of stars, per-band coverage, parallaxes, spectroscopy, reddening priors and flags.

examples:
  photoinfer info green2020_nn_model.h5
  photoinfer info stars.parquet --json
"""


def add_arguments(p) -> None:
    p.add_argument("path", metavar="PATH", help="a model file (.h5) or a catalog (.parquet, .fits, .csv, released .h5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _is_model(path) -> bool:
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return "model_weights" in f or f.attrs.get("format") == "photoinfer-model"
    except OSError:
        return False


def model_info(model) -> dict:
    from ..model.network import n_parameters
    out = {"kind": "stellar model", "bands": model.bands.names, "n_parameters": n_parameters(model.params),
           "theta_med": list(map(float, model.theta_med)), "theta_std": list(map(float, model.theta_std)),
           "provenance": model.provenance}
    if model.validity is not None:
        v = model.validity
        out["validity"] = {"maps": list(v.labels), "teff": [float(v.teff[0]), float(v.teff[-1])],
                           "logg": [float(v.logg[0]), float(v.logg[-1])], "feh": [float(v.feh[0]), float(v.feh[-1])],
                           "grid": list(v.density.shape[1:])}
    return out


def catalog_info(cat) -> dict:
    import numpy as np

    from ..catalog import Flag
    obs = cat.observed
    has_plx = np.isfinite(cat.parallax)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = cat.parallax / cat.parallax_err
    flags = {f.name: int(np.count_nonzero(cat.flags & f)) for f in Flag if np.any(cat.flags & f)}
    sources, counts = np.unique(cat.r_source.astype(str), return_counts=True)
    return {"kind": "catalog", "name": cat.name, "n_stars": len(cat),
            "bands_observed": dict(zip(cat.bands.names, obs.sum(axis=0).tolist())),
            "n_with_parallax": int(has_plx.sum()), "n_parallax_snr_above_5": int(np.sum(snr > 5)),
            "n_with_theta": int(np.isfinite(cat.theta).all(axis=1).sum()),
            "n_with_position": int(np.isfinite(cat.l).sum()),
            "n_with_reddening_prior": int(np.isfinite(cat.E0).sum()),
            "r_source": dict(zip(sources.tolist(), counts.tolist())), "flags": flags,
            "extra_columns": sorted(cat.extra)}


def run(args) -> int:
    from ..io.catalogs import read_catalog
    from ..io.models import load_model
    from . import print_json
    info = model_info(load_model(args.path)) if _is_model(args.path) else catalog_info(read_catalog(args.path))
    if args.json:
        print_json(info)
        return 0
    for k, v in info.items():
        if isinstance(v, dict):
            print(f"{k}:")
            for kk, vv in v.items():
                print(f"  {kk}: {vv}")
        else:
            print(f"{k}: {v}")
    return 0
