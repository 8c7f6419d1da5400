"""Calibration of the per-star posteriors on a prior-predictive mock drawn from exactly the fit's prior.

usage: python benchmarks/infer_calibration.py [--n 2000] [--seed 2]
Writes benchmarks/results/infer_calibration.json: 68/95 % coverage per parameter (with binomial
errors), the fraction of stars with r̂ <= 1.01 and min bulk ESS >= 200, time.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from infer_common import PARAMS, coverage, mock_catalog, model_path, truth, write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--num-warmup", type=int, default=300)
    ap.add_argument("--num-samples", type=int, default=250)
    args = ap.parse_args()
    from photoinfer.infer.fit import fit_catalog
    from photoinfer.infer.prior import build_prior
    from photoinfer.io.models import load_model
    model = load_model(model_path())
    prior = build_prior(model)
    cat = mock_catalog(model, prior, args.n, args.seed)
    t = time.perf_counter()
    res = fit_catalog(model, cat, prior=prior, num_warmup=args.num_warmup, num_samples=args.num_samples,
                      seed=args.seed)
    seconds = time.perf_counter() - t
    s = res.summary
    ok = np.isfinite(s["ess_bulk_min"])
    cov = coverage(res.samples, truth(cat), ok)
    n_ok = int(ok.sum())
    out = {"model": model_path().name, "n": args.n, "n_fit": n_ok, "seconds": round(seconds, 1),
           "num_warmup": args.num_warmup, "num_samples": args.num_samples, "num_chains": 4,
           "coverage": cov, "binomial_sigma": {"68": float(np.sqrt(0.68 * 0.32 / n_ok)),
                                               "95": float(np.sqrt(0.95 * 0.05 / n_ok))},
           "frac_rhat_le_1.01": float(np.mean(s["rhat_max"][ok] <= 1.01)),
           "frac_ess_bulk_ge_200": float(np.mean(s["ess_bulk_min"][ok] >= 200)),
           "frac_both": float(np.mean((s["rhat_max"][ok] <= 1.01) & (s["ess_bulk_min"][ok] >= 200))),
           "ess_bulk_min_median": float(np.median(s["ess_bulk_min"][ok])),
           "divergences_per_star": float(np.mean(s["n_divergent"][ok]))}
    print(out)
    write_json("infer_calibration.json", out)


if __name__ == "__main__":
    main()
