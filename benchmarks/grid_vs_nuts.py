"""Grid posteriors vs a plain NumPy implementation of the same grid (vs NUTS when photoinfer.infer exists).

    nice python benchmarks/grid_vs_nuts.py --n-mock 2000 --n-real 8000 --n-numpy 200

One run, on this CPU:
- a prior-predictive mock (θ, μ from the very prior the fit uses: the position-free Bayestar
  prior × the model's (Teff, logg | [M/H]) prior on the fine grid's cells; E uniform on [0, E_max];
  photometry and parallax errors from photoinfer.mock_errors), fit with the grid at two
  resolutions: stars/s, Kish effective samples per star, coverage of the 68 % / 95 % intervals;
- the real 8k sample (spectroscopy hidden, parallaxes used, position-free prior): robust scatter
  1.4826·MAD of (posterior median − spectroscopic θ) for dwarfs (logg > 3.5) and giants;
- the same grid posterior written as a user would in NumPy (a loop over stars, vectorized over the
  grid), on a subset, with the same settings: stars/s and agreement of the medians.
Results: JSON in benchmarks/results/grid_vs_nuts.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import logsumexp, ndtr, ndtri

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from photoinfer.grid import make_theta_grid, star_arrays  # noqa: E402
from photoinfer.grid.engine import position_prior_table  # noqa: E402
from photoinfer.grid.posterior import GridSettings, grid_posterior  # noqa: E402
from photoinfer.io.catalogs import read_catalog  # noqa: E402
from photoinfer.io.models import load_model  # noqa: E402
from photoinfer.mock_errors import DEFAULT_ERROR_MODEL, parallax_error  # noqa: E402
from photoinfer.priors import make_prior  # noqa: E402
from photoinfer.simulate import observe_photometry  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "green2020"
PARAMS = ("teff", "logg", "feh", "mu", "E")


def prior_predictive_mock(model, grid, prior, table, n, rng):
    """θ, μ drawn from p(θ) p(μ, [M/H]) (the fit's prior, on the grid's cells), E ~ U(0, E_max)."""
    t = table["table"]
    mus = table["mu0"] + table["dmu"] * np.arange(t.shape[1])
    ok = np.ones(len(mus), bool)                                             # the whole prior range
    fi = np.rint((grid.theta[:, 2] - table["feh0"]) / table["dfeh"]).astype(int)
    lp = grid.ln_prior[:, None] + t[fi][:, ok]                               # (G, nμ)
    p = np.exp(lp - lp.max()).ravel()
    pick = rng.choice(p.size, size=n, p=p / p.sum())
    g, k = np.unravel_index(pick, lp.shape)
    theta = grid.theta[g] + (rng.uniform(size=(n, 3)) - 0.5) * grid.spacing
    mu = mus[ok][k] + (rng.uniform(size=n) - 0.5) * table["dmu"]
    E = rng.uniform(0.0, prior.E_max, n)
    true_mag = np.asarray(model.predict_magnitudes(theta.astype(np.float32), mu, E), np.float64)
    em = DEFAULT_ERROR_MODEL.for_bands(model.bands.keys)
    mag, err = observe_photometry(rng, true_mag, em)
    plx_true = 10 ** (2 - mu / 5)
    plx_err = parallax_error(em, true_mag[:, 0])
    has = np.isfinite(mag[:, 0])
    plx = np.where(has, plx_true + plx_err * rng.normal(size=n), np.nan)
    truth = dict(zip(PARAMS, (theta[:, 0], theta[:, 1], theta[:, 2], mu, E)))
    return mag, err, plx, np.where(has, plx_err, np.nan), truth


def coverage(summary_draws, truth):
    """Fraction of truths inside the central 68 % and 95 % intervals of the draws, per parameter."""
    out = {}
    for i, p in enumerate(PARAMS):
        d = summary_draws[..., i]
        good = np.all(np.isfinite(d), axis=1)
        q = np.percentile(d[good], [2.5, 16, 84, 97.5], axis=1)
        tr = truth[p][good]
        out[p] = {"c68": float(np.mean((q[1] <= tr) & (tr <= q[2]))),
                  "c95": float(np.mean((q[0] <= tr) & (tr <= q[3]))), "n": int(good.sum())}
    return out


# ------------------------------------------------------------------------------------- the NumPy version
def numpy_grid_posterior(grid, mag, err, plx, plx_err, table, settings, rng, E_max):
    """The same posterior as photoinfer.grid (screening, exact IS in μ with E analytic), per star in NumPy."""
    n = len(mag)
    out = np.full((n, settings.n_draws, 5), np.nan)
    ess = np.full(n, np.nan)
    M, R = grid.M.astype(np.float64), grid.R.astype(np.float64)
    tab = table["table"].astype(np.float64)
    mus_tab = table["mu0"] + table["dmu"] * np.arange(tab.shape[1])
    fi = np.rint((grid.theta[:, 2] - table["feh0"]) / table["dfeh"]).astype(int)
    S = settings.n_mu
    for s in range(n):
        o = np.isfinite(mag[s])
        if o.sum() < 2:
            continue
        w = 1.0 / (err[s, o] ** 2 + settings.sigma_model ** 2)
        d = mag[s, o] - M[:, o]                                      # (G, b)
        R_ = R[:, o]
        s0, sR, sRR = w.sum(), R_ @ w, (R_ * R_) @ w
        sd, sRd = d @ w, (R_ * d) @ w
        det = s0 * sRR - sR ** 2
        mu_f, E_f = (sRR * sd - sR * sRd) / det, (s0 * sRd - sR * sd) / det
        r = d - mu_f[:, None] - E_f[:, None] * R_
        chi2 = (r * r) @ w
        vmu, vE, cme = sRR / det, s0 / det, -sR / det
        has_plx = np.isfinite(plx[s])
        # Gauss–Newton parallax update of μ (two steps) for the proposal and the screening
        mu_p, E_p, vmu_p, vE_p, cme_p = mu_f, E_f, vmu, vE, cme
        lnplx = 0.0
        if has_plx:
            for _ in range(2):
                w0 = 10 ** (2 - mu_p / 5)
                j = -np.log(10) / 5 * w0
                Sv = plx_err[s] ** 2 + j * j * vmu
                res = plx[s] - (w0 + j * (mu_f - mu_p))
                gm, gE = vmu * j / Sv, cme * j / Sv
                mu_p, E_p = mu_f + gm * res, E_f + gE * res
                vmu_p, cme_p, vE_p = vmu - gm * j * vmu, cme - gm * j * cme, vE - gE * j * cme
                lnplx = -0.5 * res ** 2 / Sv - 0.5 * np.log(2 * np.pi * Sv)
        sd_E = np.sqrt(vE_p)
        ln_tr = np.log(np.maximum(ndtr((E_max - E_p) / sd_E) - ndtr(-E_p / sd_E), 1e-300))
        mu_e = np.where(E_p < 0, mu_p - cme_p / vE_p * E_p, mu_p)
        lnpos = _interp_rows(tab, fi, mus_tab, mu_e)
        lw0 = -0.5 * chi2 + 0.5 * np.log(vmu * vE - cme ** 2) + lnplx + ln_tr + lnpos + grid.ln_prior
        keep = np.argsort(-lw0)[:settings.keep]
        keep = keep[lw0[keep] >= lw0[keep[0]] - settings.delta]
        # importance sampling in μ on the kept points
        centre = np.where(E_p < 0, mu_p - cme_p / vE_p * E_p, mu_p)[keep]
        scale = settings.inflate * np.sqrt(vmu_p[keep])
        z = ndtri((np.arange(S) + rng.uniform()) / S)
        mu = centre[:, None] + scale[:, None] * z                   # (k, S)
        ln_q = -0.5 * z * z - np.log(scale)[:, None] - 0.5 * np.log(2 * np.pi)
        vm, ce, ve = vmu[keep, None], cme[keep, None], vE[keep, None]
        s2 = ve - ce * ce / vm
        c = E_f[keep, None] + ce / vm * (mu - mu_f[keep, None])
        sd = np.broadcast_to(np.sqrt(s2), mu.shape)
        ptr = np.maximum(ndtr((E_max - c) / sd) - ndtr(-c / sd), 1e-300)
        lw = (-0.5 * chi2[keep, None] - 0.5 * (mu - mu_f[keep, None]) ** 2 / vm + 0.5 * np.log(2 * np.pi * s2)
              - np.log(E_max) + np.log(ptr) + grid.ln_prior[keep, None] - ln_q
              + _interp_rows(tab, fi[keep], mus_tab, mu))
        if has_plx:
            lw += -0.5 * ((plx[s] - 10 ** (2 - mu / 5)) / plx_err[s]) ** 2
        lw = lw.ravel()
        wn = np.exp(lw - logsumexp(lw))
        ess[s] = 1 / np.sum(wn ** 2)
        pick = np.minimum(np.searchsorted(np.cumsum(wn), (np.arange(settings.n_draws) + rng.uniform())
                                          / settings.n_draws), len(wn) - 1)
        p, k = np.divmod(pick, S)
        cc, ss = c.ravel()[pick], sd.ravel()[pick]
        a, b = ndtr(-cc / ss), ndtr((E_max - cc) / ss)
        E = np.clip(cc + ss * ndtri(np.clip(a + rng.uniform(size=len(pick)) * (b - a), 1e-300, 1 - 1e-16)), 0, E_max)
        th = grid.theta[keep[p]] + (rng.uniform(size=(len(pick), 3)) - 0.5) * grid.spacing
        out[s] = np.column_stack([th, mu.ravel()[pick], E])
    return out, ess


def _interp_rows(tab, rows, axis, x):
    """tab[rows, ·] interpolated at x (rows: (k,), x: (k,) or (k, S))."""
    c = np.clip((x - axis[0]) / (axis[1] - axis[0]), 0, len(axis) - 1.000001)
    i = np.floor(c).astype(int)
    f = c - i
    r = rows if x.ndim == 1 else rows[:, None]
    return (1 - f) * tab[r, i] + f * tab[r, i + 1]


# ------------------------------------------------------------------------------------- runs
def timed_grid(grid, stars, prior, settings, table):
    warm = type(stars)(*[a[:settings.star_chunk] for a in stars])
    grid_posterior(grid, warm, prior, settings, table=table)          # compile
    t = time.perf_counter()
    fit = grid_posterior(grid, stars, prior, settings, table=table)
    dt = time.perf_counter() - t
    return fit, dt


def robust_scatter(x):
    x = x[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-mock", type=int, default=2000)
    ap.add_argument("--n-real", type=int, default=8000)
    ap.add_argument("--n-numpy", type=int, default=200)
    ap.add_argument("--E-max", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "grid_vs_nuts.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    model = load_model(SHARED / "green2020_nn_model.h5")
    prior = make_prior("bayestar", model=model, E_max=args.E_max)
    res = {"machine": platform.processor() or platform.machine(), "command": " ".join(sys.argv), "mock": {},
           "real": {}, "numpy": {}}
    grids = {name: make_theta_grid(model, name) for name in ("fine", "coarse")}
    settings = {"fine": GridSettings(position_free=True, keep=6144, n_mu=8),
                "coarse": GridSettings(position_free=True, keep=512, n_mu=16)}
    tables = {k: position_prior_table(prior, g.feh_axis) for k, g in grids.items()}

    mag, err, plx, plx_err, truth = prior_predictive_mock(model, grids["fine"], prior, tables["fine"], args.n_mock, rng)
    stars = star_arrays(mag, err, plx, plx_err)
    fits = {}
    for name, g in grids.items():
        fit, dt = timed_grid(g, stars, prior, settings[name], tables[name])
        fits[name] = fit
        draws = np.stack([fit.fit.samples[p][0] for p in PARAMS], -1).transpose(1, 0, 2)  # (N, D, 5)
        res["mock"][name] = {"grid_points": len(g), "stars": args.n_mock, "seconds": dt,
                             "stars_per_s": args.n_mock / dt, "ess_median": float(np.nanmedian(fit.ess)),
                             "ess_p5": float(np.nanpercentile(fit.ess, 5)),
                             "frac_not_converged": float(np.mean(fit.fit.flags & 1024 > 0)),
                             "coverage": coverage(draws, truth)}
        print(name, json.dumps(res["mock"][name]), flush=True)
    # fine vs coarse agreement (a stand-in for grid vs NUTS until photoinfer.infer lands)
    agree = {}
    for p in PARAMS:
        a, b = fits["fine"].fit.summary, fits["coarse"].fit.summary
        sig = 0.5 * (a[f"{p}_p84"] - a[f"{p}_p16"])
        dmed = np.abs(a[f"{p}_p50"] - b[f"{p}_p50"]) / sig
        wr = (b[f"{p}_p84"] - b[f"{p}_p16"]) / (a[f"{p}_p84"] - a[f"{p}_p16"])
        agree[p] = {"frac_median_within_0.2sigma": float(np.nanmean(dmed < 0.2)),
                    "frac_width_within_15pct": float(np.nanmean(np.abs(wr - 1) < 0.15))}
    res["mock"]["fine_vs_coarse"] = agree

    # the NumPy implementation on a subset, same settings as "fine"
    k = min(args.n_numpy, args.n_mock)
    t = time.perf_counter()
    dnp, ess_np = numpy_grid_posterior(grids["fine"], mag[:k], err[:k], plx[:k], plx_err[:k], tables["fine"],
                                       settings["fine"], rng, args.E_max)
    dt = time.perf_counter() - t
    med_np = np.nanmedian(dnp, axis=1)
    a = fits["fine"].fit.summary
    dev = {p: float(np.nanmedian(np.abs(med_np[:, i] - a[f"{p}_p50"][:k])
                                 / (0.5 * (a[f"{p}_p84"] - a[f"{p}_p16"])[:k]))) for i, p in enumerate(PARAMS)}
    res["numpy"] = {"stars": k, "seconds": dt, "stars_per_s": k / dt, "ess_median": float(np.nanmedian(ess_np)),
                    "median_abs_dmedian_over_sigma_vs_jax": dev,
                    "speedup_jax_fine": res["mock"]["fine"]["stars_per_s"] / (k / dt)}
    print("numpy", json.dumps(res["numpy"]), flush=True)

    # real stars with parallaxes, spectroscopy hidden, position-free prior
    cat = read_catalog(SHARED / "green2020_sample_8k.h5").subset(slice(0, args.n_real))
    stars = star_arrays(cat.mag, cat.mag_err, cat.parallax, cat.parallax_err)
    for name, g in grids.items():
        fit, dt = timed_grid(g, stars, prior, settings[name], tables[name])
        s = fit.fit.summary
        out = {"stars": len(cat), "seconds": dt, "stars_per_s": len(cat) / dt,
               "ess_median": float(np.nanmedian(fit.ess))}
        for label, sel in (("dwarfs", cat.theta[:, 1] > 3.5), ("giants", cat.theta[:, 1] <= 3.5)):
            out[label] = {"n": int(sel.sum())}
            for i, p in enumerate(("teff", "logg", "feh")):
                dd = (s[f"{p}_p50"] - cat.theta[:, i])[sel]
                out[label][p] = {"robust_scatter": robust_scatter(dd), "median_offset": float(np.nanmedian(dd))}
        res["real"][name] = out
        print("real", name, json.dumps(out), flush=True)

    try:
        import photoinfer.infer  # noqa: F401
        res["nuts"] = "photoinfer.infer present: comparison not yet wired (see report)"
    except ImportError:
        res["nuts"] = "photoinfer.infer not available on this branch: NUTS columns not measured"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
