"""Parallax z-scores of real stars fit without their parallax, under the distance prior and variants of it.

The grid method (calibrated, and as exact as NUTS: docs/benchmarks.md "Grid posteriors") fits a seeded
random subset of the released 8k sample from photometry alone (spectroscopy and parallax hidden,
position-free prior), and the measured parallaxes are scored against the posterior predictive
(infer_common.parallax_z_scores: Gaussian and PIT z-scores), for dwarfs (spectroscopic logg > 3.5) and
giants.  Variants of the sky-averaged ln p(μ, [M/H]) show what sets the z-scores:

- ``sky``: the prior as inference uses it (Bayestar number density × d³ volume, averaged over the sky);
- ``no_volume``: the same without the d³ volume term (density along the line of sight only);
- ``flat_mu``: flat in μ (only the [M/H] marginal kept).

Control: the same scores on the 2,000-star calibration mock of infer_calibration.py (drawn from exactly
the fit's prior, 10 sightlines, E flat on [0, 2]; fit with its sightline prior and the parallax hidden),
where calibrated posteriors must give PIT z-scores ~ N(0, 1).

usage: python benchmarks/parallax_zscores.py [--n 2000] [--seed 3] [--model PATH]
Writes benchmarks/results/parallax_zscores.json.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.special import logsumexp

from infer_common import SAMPLE_8K, model_path, parallax_z_scores, write_json


def variant_prior(model, variant: str):
    """The inference prior with its sky table replaced by the ``variant`` (module doc)."""
    from photoinfer.infer.prior import build_prior
    ip = build_prior(model)
    t = ip.prior.sky_table
    v = np.asarray(t.values, np.float64)                        # (nμ, n[M/H]) ln p(μ, [M/H])
    mu = t.mu0 + t.dmu * np.arange(v.shape[0])
    if variant == "no_volume":
        v = v - (3.0 * np.log(10.0) / 5.0) * mu[:, None]        # d³ ∝ 10^(3μ/5)
    elif variant == "flat_mu":
        v = np.broadcast_to(logsumexp(v, axis=0, keepdims=True), v.shape)
    elif variant != "sky":
        raise ValueError(variant)
    ip.prior.__dict__["sky_table"] = t._replace(values=np.asarray(v, np.float32))   # cached_property slot
    return ip


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="random subset size (0 = all 8,000)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    args = ap.parse_args()
    from photoinfer.grid.methods import fit_with_method
    from photoinfer.grid.posterior import GridSettings
    from photoinfer.io.catalogs import read_catalog
    from photoinfer.io.models import load_model
    path = args.model or model_path()
    model = load_model(path)
    cat = read_catalog(SAMPLE_8K)
    if args.n:
        cat = cat.subset(np.sort(np.random.default_rng(args.seed).choice(len(cat), args.n, replace=False)))
    dwarf = cat.theta[:, 1] > 3.5
    out = {"model": str(path), "n": len(cat), "subset_seed": args.seed, "method": "grid (coarse, continuous θ)",
           "dust": "flat on [0, 7]", "variants": {}}
    for variant in ("sky", "no_volume", "flat_mu"):
        t = time.perf_counter()
        res, _ = fit_with_method(model, cat, "grid", prior=variant_prior(model, variant), use_parallax=False,
                                 use_position=False, seed=1, grid_settings=GridSettings(position_free=True))
        mu = np.asarray(res.samples["mu"]).reshape(-1, len(cat))
        row = {"seconds": round(time.perf_counter() - t, 1)}
        for name, sel in (("all", np.ones(len(cat), bool)), ("dwarfs", dwarf), ("giants", ~dwarf)):
            row[name] = parallax_z_scores(mu[:, sel], cat.parallax[sel], cat.parallax_err[sel])
            row[name]["logg_median_residual"] = float(np.nanmedian(res.summary["logg_p50"][sel] - cat.theta[sel, 1]))
        out["variants"][variant] = row
        print(variant, {k: (v["pit"]["median"], v["pit"]["std"]) for k, v in row.items() if k != "seconds"}, flush=True)
    from infer_common import mock_catalog
    from photoinfer.infer.predictive import SIGHTLINES
    from photoinfer.infer.prior import build_prior
    t = time.perf_counter()
    mprior = build_prior(model, E_max=2.0)
    mock = mock_catalog(model, mprior, 2000, 2, sightlines=SIGHTLINES)
    res, _ = fit_with_method(model, mock, "grid", prior=mprior, use_parallax=False, seed=1)
    z = parallax_z_scores(np.asarray(res.samples["mu"]).reshape(-1, len(mock)), mock.parallax, mock.parallax_err)
    out["control_prior_predictive_mock"] = {"n": len(mock), "seconds": round(time.perf_counter() - t, 1), **z}
    print("mock", {k: (v["median"], v["std"]) for k, v in z.items()})
    write_json("parallax_zscores.json", out)


if __name__ == "__main__":
    main()
