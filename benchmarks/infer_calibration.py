"""Calibration of the per-star posteriors on a prior-predictive mock drawn from exactly the fit's prior.

The mock: stars dealt in turn to the 10 sightlines of photoinfer.infer.predictive.SIGHTLINES (poles,
anticentre, low and mid latitudes), the Bayestar Galactic prior along each sightline, E flat on
[0, E_max = 2]; the fit uses the identical prior (use_position=True, E_max=2).

usage: python benchmarks/infer_calibration.py [--n 2000] [--seed 2] [--e-max 2]
Writes benchmarks/results/infer_calibration.json: 68/95 % coverage per parameter (with binomial
errors), the fraction of stars with r̂ <= 1.01 and min bulk ESS >= 200, time.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from infer_common import PARAMS, coverage, fit_nuts, mock_catalog, model_path, truth, write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--num-warmup", type=int, default=400)
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--target-accept", type=float, default=0.85)
    ap.add_argument("--adaptation", default="short", choices=("short", "window"))
    ap.add_argument("--e-max", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--reparam", default="mu_E", choices=("mu_E", "mu", "none"))
    ap.add_argument("--refine", type=int, default=2, help="refinement rounds for unconverged stars (0: none)")
    ap.add_argument("--no-guide", action="store_true",
                    help="NUTS with its own initialization and no grid guide (the sampler before session 5)")
    ap.add_argument("--out", default="infer_calibration.json")
    args = ap.parse_args()
    from photoinfer.infer.prior import build_prior
    from photoinfer.io.models import load_model
    model = load_model(model_path())
    from photoinfer.catalog import Flag
    from photoinfer.infer.predictive import SIGHTLINES
    prior = build_prior(model, E_max=args.e_max)
    cat = mock_catalog(model, prior, args.n, args.seed, sightlines=SIGHTLINES)
    t = time.perf_counter()
    res, grid_seconds = fit_nuts(model, cat, prior, guided=not args.no_guide, num_warmup=args.num_warmup,
                                 num_samples=args.num_samples, seed=args.seed, target_accept=args.target_accept,
                                 batch_size=args.batch_size, adaptation=args.adaptation, reparam=args.reparam,
                                 refine=args.refine)
    seconds = time.perf_counter() - t
    s = res.summary
    ok = np.isfinite(s["ess_bulk_min"])
    cov = coverage(res.samples, truth(cat), ok)
    n_ok = int(ok.sum())
    multi = (np.asarray(res.flags) & int(Flag.MULTIMODAL)) != 0
    uni = ok & ~multi
    out = {"model": model_path().name, "n": args.n, "n_fit": n_ok, "seconds": round(seconds, 1),
           "grid_seconds": round(grid_seconds, 1), "guided": not args.no_guide,
           "prior": f"bayestar along {len(SIGHTLINES)} sightlines {SIGHTLINES}, E flat on [0, {args.e_max}]",
           "target_accept": args.target_accept, "batch_size": args.batch_size, "adaptation": args.adaptation,
           "reparam": args.reparam, "refine": args.refine, "refined_stars": res.attrs["refined_stars"],
           "refined_per_round": res.attrs["refined_per_round"],
           "frac_multimodal": float(np.mean(multi[ok])),
           "frac_both_unimodal": float(np.mean((s["rhat_max"][uni] <= 1.01) & (s["ess_bulk_min"][uni] >= 200))),
           "frac_in_validity_truth": float(np.mean(np.asarray(prior.prior.stellar.in_valid_region(
               np.stack([cat.extra[f"true_{p}"] for p in ("teff", "logg", "feh")], -1))))),
           "num_warmup": args.num_warmup, "num_samples": args.num_samples, "num_chains": 4,
           "coverage": cov, "binomial_sigma": {"68": float(np.sqrt(0.68 * 0.32 / n_ok)),
                                               "95": float(np.sqrt(0.95 * 0.05 / n_ok))},
           "frac_rhat_le_1.01": float(np.mean(s["rhat_max"][ok] <= 1.01)),
           "frac_ess_bulk_ge_200": float(np.mean(s["ess_bulk_min"][ok] >= 200)),
           "frac_both": float(np.mean((s["rhat_max"][ok] <= 1.01) & (s["ess_bulk_min"][ok] >= 200))),
           "ess_bulk_min_median": float(np.median(s["ess_bulk_min"][ok])),
           "divergences_per_star": float(np.mean(s["n_divergent"][ok])),
           "frac_rhat_le_1.02": float(np.mean(s["rhat_max"][ok] <= 1.02)),
           "frac_rhat_le_1.05": float(np.mean(s["rhat_max"][ok] <= 1.05)),
           "mean_leapfrog_steps": float(np.mean(res.sample_stats["n_steps"][..., ok])),
           "guide_accept": float(np.mean(res.sample_stats["guide_accept"][..., ok]))}
    print(out)
    write_json(args.out, out)
    # per-star truth, 68/95 % intervals and diagnostics for follow-up analysis (not committed)
    from infer_common import RESULTS
    q = {p: np.percentile(np.asarray(res.samples[p]).reshape(-1, len(cat)), [2.5, 16, 50, 84, 97.5], axis=0)
         for p in PARAMS}
    (RESULTS / "cache").mkdir(parents=True, exist_ok=True)
    np.savez(RESULTS / "cache" / (args.out.replace(".json", "") + "_stars.npz"), truth=truth(cat), flags=res.flags,
             rhat=s["rhat_max"], ess=s["ess_bulk_min"], ndiv=s["n_divergent"], **{f"q_{p}": v for p, v in q.items()})


if __name__ == "__main__":
    main()
