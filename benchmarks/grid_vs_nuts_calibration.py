"""The grid posterior on the NUTS calibration mock, against the NUTS run's own per-star intervals.

    python benchmarks/infer_calibration.py --n 2000        # the NUTS run (~50 min here); writes the
                                                            # per-star quantiles to results/cache/
    python benchmarks/grid_vs_nuts_calibration.py --n 2000 # the grid on the same stars (~10 s per grid)

Same mock (exact draws of the inference prior along 10 sightlines, E flat on [0, 2], the fit's
likelihood: :func:`benchmarks.infer_common.mock_catalog`), same prior object, same stars. Reports,
for the coarse and fine grids and for NUTS: coverage of the 68 % / 95 % central intervals; and the
agreement of grid and NUTS per star — |Δ median| < 0.2 σ (σ = mean half 16–84 % width) and 16–84 %
widths within 15 % — for all stars and for the stars NUTS converged on (r̂ ≤ 1.01, min bulk ESS ≥ 200).
Writes benchmarks/results/grid_vs_nuts_calibration.json.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from grid_vs_nuts import agreement
from infer_common import PARAMS, RESULTS, mock_catalog, model_path, truth, write_json

QUANTILES = (2.5, 16.0, 50.0, 84.0, 97.5)


def coverage(q, t):
    """q (5, N) quantiles, t (N,): fractions inside the 68 % and 95 % intervals."""
    return {"68": float(np.mean((t >= q[1]) & (t <= q[3]))), "95": float(np.mean((t >= q[0]) & (t <= q[4])))}


def summary_of(q, sel):
    """Quantiles q[p] (5, N) of the selected stars as the summary columns ``agreement`` reads."""
    return {f"{p}_p{k}": q[p][i, sel] for p in PARAMS for i, k in ((1, 16), (2, 50), (3, 84))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--e-max", type=float, default=2.0)
    ap.add_argument("--nuts", default=None, help="NUTS per-star file (default results/cache/infer_calibration_<n>_stars.npz)")
    args = ap.parse_args(argv)
    from photoinfer.grid.engine import make_theta_grid
    from photoinfer.grid.posterior import GridSettings, grid_fit
    from photoinfer.infer.predictive import SIGHTLINES
    from photoinfer.infer.prior import build_prior
    from photoinfer.io.models import load_model
    model = load_model(model_path())
    prior = build_prior(model, E_max=args.e_max)
    cat = mock_catalog(model, prior, args.n, args.seed, sightlines=SIGHTLINES)
    nuts = np.load(args.nuts or RESULTS / "cache" / f"infer_calibration_{args.n}_stars.npz")
    t = truth(cat)
    if not np.allclose(nuts["truth"], t):
        raise ValueError("the NUTS file is for another mock (truths differ): rerun infer_calibration.py with the same --n/--seed")
    qn = {p: nuts[f"q_{p}"] for p in PARAMS}
    conv = (nuts["rhat"] <= 1.01) & (nuts["ess"] >= 200)
    res = {"n": args.n, "nuts": {"coverage": {p: coverage(qn[p], t[:, i]) for i, p in enumerate(PARAMS)},
                                 "frac_converged": float(conv.mean())}}
    for spacing in ("coarse", "fine"):
        grid = make_theta_grid(model, spacing, stellar_prior=prior.prior.stellar)
        tt = time.perf_counter()
        fit = grid_fit(model, cat, prior.prior, grid=grid, settings=GridSettings(position_free=False, n_draws=2000))
        dt = time.perf_counter() - tt
        qg = {p: np.percentile(fit.fit.samples[p][0], QUANTILES, axis=0) for p in PARAMS}
        ok = np.isfinite(fit.ess)
        res[spacing] = {"grid_points": len(grid), "seconds": dt, "stars_per_s": args.n / dt,
                        "ess_median": float(np.nanmedian(fit.ess)), "ess_p1": float(np.nanpercentile(fit.ess, 1)),
                        "coverage": {p: coverage(qg[p][:, ok], t[ok, i]) for i, p in enumerate(PARAMS)},
                        "coverage_where_nuts_not_converged": {p: coverage(qg[p][:, ok & ~conv], t[ok & ~conv, i])
                                                              for i, p in enumerate(PARAMS)},
                        "agreement_all": agreement(summary_of(qg, ok), summary_of(qn, ok)),
                        "agreement_nuts_converged": agreement(summary_of(qg, ok & conv), summary_of(qn, ok & conv))}
        print(spacing, res[spacing], flush=True)
    res["nuts"]["coverage_not_converged"] = {p: coverage(qn[p][:, ~conv], t[~conv, i]) for i, p in enumerate(PARAMS)}
    print("wrote", write_json("grid_vs_nuts_calibration.json", res))


if __name__ == "__main__":
    main()
