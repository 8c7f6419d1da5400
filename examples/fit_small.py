"""Fit a small prior-predictive mock with the per-star NUTS, started and guided by the grid posterior
(what `photoinfer fit --method nuts` runs), and compare with the truth.

usage: python examples/fit_small.py [N_STARS] [--model PATH]
"""
from __future__ import annotations

import argparse

import numpy as np

from photoinfer.grid.methods import fit_with_method
from photoinfer.infer.predictive import prior_predictive_catalog
from photoinfer.infer.prior import build_prior
from photoinfer.io.models import load_model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", type=int, nargs="?", default=20, help="number of mock stars")
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--num-warmup", type=int, default=300)
    ap.add_argument("--num-samples", type=int, default=250)
    args = ap.parse_args(argv)
    model = load_model(args.model)
    prior = build_prior(model)
    cat = prior_predictive_catalog(model, prior, args.n, seed=0, n_mcmc=50)
    res, _ = fit_with_method(model, cat, "nuts", prior=prior, num_warmup=args.num_warmup,
                             num_samples=args.num_samples)
    print(f"guide moves accepted: {np.mean(res.sample_stats['guide_accept']):.2f} of NUTS transitions")
    s = res.summary
    print(f"{'param':>6} {'truth':>9} {'p16':>9} {'p50':>9} {'p84':>9}")
    for i in range(min(args.n, 5)):
        print(f"star {res.source_id[i]}: r-hat {s['rhat_max'][i]:.3f}, ESS {s['ess_bulk_min'][i]:.0f}")
        for p in ("teff", "logg", "feh", "mu", "E"):
            print(f"{p:>6} {cat.extra['true_' + p][i]:9.3f} {s[p + '_p16'][i]:9.3f} {s[p + '_p50'][i]:9.3f} "
                  f"{s[p + '_p84'][i]:9.3f}")
    inside = np.mean([(cat.extra["true_" + p] >= s[p + "_p16"]) & (cat.extra["true_" + p] <= s[p + "_p84"])
                      for p in ("teff", "logg", "feh", "mu", "E")])
    print(f"truth inside the 68 % interval: {inside:.2f} of (star, parameter) pairs")
    return res


if __name__ == "__main__":
    main()
