"""Real stars: posteriors from photometry (+ parallax) of the released 8k sample, spectroscopy hidden.

usage: python benchmarks/infer_real.py [--n 1000] [--seed 3]
Writes benchmarks/results/infer_real.json: median and scatter (half the 16–84 % range, and the std)
of (posterior median − spectroscopic value) for Teff, logg, [M/H], for dwarfs (spectroscopic logg > 3.5)
and giants; and, with the parallax hidden too, the z-scores of the measured parallax against the
posterior parallax: (ϖ̂ − E[ϖ]) / sqrt(σ_ϖ² + Var[ϖ]) and the posterior-predictive PIT z-score
(infer_common.parallax_z_scores).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from infer_common import SAMPLE_8K, fit_nuts, model_path, parallax_z_scores, write_json


def residual_stats(res, cat):
    out = {}
    spec = cat.theta
    dwarf = spec[:, 1] > 3.5
    for i, p in enumerate(("teff", "logg", "feh")):
        d = res.summary[f"{p}_p50"] - spec[:, i]
        for name, sel in (("dwarfs", dwarf), ("giants", ~dwarf)):
            x = d[sel & np.isfinite(d)]
            q16, q50, q84 = np.percentile(x, [16, 50, 84])
            out.setdefault(name, {})[p] = {"n": int(len(x)), "median": float(q50), "scatter_16_84": float((q84 - q16) / 2),
                                           "std": float(np.std(x))}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="random subset size (0 = all 8,000)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--num-warmup", type=int, default=300)
    ap.add_argument("--num-samples", type=int, default=250)
    ap.add_argument("--target-accept", type=float, default=0.8)
    ap.add_argument("--no-guide", action="store_true", help="NUTS without the grid (the sampler before session 5)")
    ap.add_argument("--out", default="infer_real.json")
    args = ap.parse_args()
    kw = dict(num_warmup=args.num_warmup, num_samples=args.num_samples, target_accept=args.target_accept)
    from photoinfer.catalog import Flag
    from photoinfer.infer.prior import build_prior
    from photoinfer.io.catalogs import read_catalog
    from photoinfer.io.models import load_model
    model = load_model(model_path())
    prior = build_prior(model)
    cat = read_catalog(SAMPLE_8K)
    if args.n:
        idx = np.sort(np.random.default_rng(args.seed).choice(len(cat), args.n, replace=False))
        cat = cat.subset(idx)
    out = {"model": model_path().name, "n": len(cat), "subset_seed": args.seed,
           "prior": "bayestar, position-free, smooth stellar prior, E flat on [0, 7]",
           "guided": not args.no_guide, **kw}
    t = time.perf_counter()
    res = fit_nuts(model, cat, prior, guided=not args.no_guide, seed=args.seed, use_position=False, **kw)[0]
    out["with_parallax"] = {"seconds": round(time.perf_counter() - t, 1), "residuals": residual_stats(res, cat),
                            "frac_not_converged": float(np.mean((res.summary["flags"] & int(Flag.NOT_CONVERGED)) > 0)),
                            "frac_multimodal": float(np.mean((res.summary["flags"] & int(Flag.MULTIMODAL)) > 0)),
                            "ess_bulk_min_median": float(np.nanmedian(res.summary["ess_bulk_min"]))}
    print(out["with_parallax"])
    write_json(args.out, out)
    t = time.perf_counter()
    res2 = fit_nuts(model, cat, prior, guided=not args.no_guide, seed=args.seed, use_position=False,
                    use_parallax=False, **kw)[0]
    z = parallax_z_scores(np.asarray(res2.samples["mu"]).reshape(-1, len(cat)), cat.parallax, cat.parallax_err)
    out["without_parallax"] = {"seconds": round(time.perf_counter() - t, 1), "residuals": residual_stats(res2, cat),
                               "parallax_z": z["gaussian"], "parallax_z_pit": z["pit"],
                               "frac_not_converged": float(np.mean((res2.summary["flags"] & int(Flag.NOT_CONVERGED)) > 0)),
                               "frac_multimodal": float(np.mean((res2.summary["flags"] & int(Flag.MULTIMODAL)) > 0))}
    print(out["without_parallax"])
    write_json(args.out, out)


if __name__ == "__main__":
    main()
