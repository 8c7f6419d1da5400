"""Grid posteriors vs a plain NumPy implementation of the same grid and vs NUTS, in one run.

    nice python benchmarks/grid_vs_nuts.py --n-mock 2000 --n-real 8000 --n-numpy 200 --n-nuts 150 --n-real-nuts 150

- A prior-predictive mock (θ, μ from the very prior both methods use: the position-free Bayestar
  prior × the model's (Teff, logg | [M/H]) prior on the fine grid's cells; E uniform on [0, E_max];
  photometry and parallax errors from photoinfer.mock_errors): the grid at two resolutions —
  stars/s, Kish effective samples per star, coverage of the 68 % / 95 % intervals.
- The same grid posterior written as a user would in NumPy (a loop over stars, vectorized over the
  grid, float64; the same steps: Laplace weights of every point, systematic draw of ``keep`` points,
  each moved to a uniform θ in its cell with the network evaluated there, ``n_mu`` stratified μ draws
  each, E analytic, resampling), on the first ``--n-numpy`` mock stars:
  stars/s and agreement of the medians with the JAX grid.
- NUTS (photoinfer.infer.fit.fit_catalog, same prior object) on the first ``--n-nuts`` mock stars:
  stars/s, coverage, and agreement with the grid: |Δ median| < 0.2 posterior σ and 16–84 % widths
  within 15 %, per parameter and for all five at once.
- The real 8k sample (spectroscopy hidden, parallaxes used, position-free prior): robust scatter
  1.4826·MAD of (posterior median − spectroscopic θ) for dwarfs (logg > 3.5) and giants, grid on
  ``--n-real`` stars and grid vs NUTS on a seeded random ``--n-real-nuts`` of them.
Results: JSON in benchmarks/results/grid_vs_nuts.json.
"""
from __future__ import annotations

import os

# NumPy's small matrix products are fastest single-threaded (BLAS threads only contend on a small or shared
# machine); this favours the NumPy baseline and does not touch JAX (its own thread pool).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import logsumexp, ndtr, ndtri

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from photoinfer.catalog import Catalog  # noqa: E402
from photoinfer.grid import make_theta_grid, star_arrays  # noqa: E402
from photoinfer.grid.engine import grid_arrays, position_table  # noqa: E402
from photoinfer.grid.posterior import GridSettings, grid_posterior  # noqa: E402
from photoinfer.infer.prior import build_prior  # noqa: E402
from photoinfer.io.catalogs import read_catalog  # noqa: E402
from photoinfer.io.models import load_model  # noqa: E402
from photoinfer.grid.mock import PARAMS, prior_predictive_mock  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "green2020"


def draws_of(fit):
    """(N, D, 5) draws of a FitResult (chains merged)."""
    return np.stack([fit.samples[p].reshape(-1, fit.samples[p].shape[-1]) for p in PARAMS], -1).transpose(1, 0, 2)


def coverage(draws, truth, sel=None):
    """Fraction of truths inside the central 68 % and 95 % intervals of the draws, per parameter."""
    out = {}
    good = np.all(np.isfinite(draws), axis=(1, 2))
    if sel is not None:
        good &= sel
    for i, p in enumerate(PARAMS):
        q = np.percentile(draws[good, :, i], [2.5, 16, 84, 97.5], axis=1)
        tr = truth[p][good]
        out[p] = {"c68": float(np.mean((q[1] <= tr) & (tr <= q[2]))),
                  "c95": float(np.mean((q[0] <= tr) & (tr <= q[3]))), "n": int(good.sum())}
    return out


def agreement(a, b):
    """Grid summary a vs NUTS summary b: fraction of stars with |Δ median| < 0.2 σ and width ratio within 15 %."""
    ok = np.isfinite(np.asarray(a["teff_p50"], float)) & np.isfinite(np.asarray(b["teff_p50"], float))
    out, med_all, wid_all = {"n": int(ok.sum())}, np.ones(ok.sum(), bool), np.ones(ok.sum(), bool)
    for p in PARAMS:
        wa = (np.asarray(a[f"{p}_p84"]) - np.asarray(a[f"{p}_p16"]))[ok]
        wb = (np.asarray(b[f"{p}_p84"]) - np.asarray(b[f"{p}_p16"]))[ok]
        sig = 0.25 * (wa + wb)
        dmed = np.abs(np.asarray(a[f"{p}_p50"]) - np.asarray(b[f"{p}_p50"]))[ok] / sig
        wr = np.abs(wa / wb - 1)
        med_all &= dmed < 0.2
        wid_all &= wr < 0.15
        out[p] = {"frac_median_within_0.2sigma": float(np.mean(dmed < 0.2)),
                  "frac_width_within_15pct": float(np.mean(wr < 0.15)),
                  "median_abs_dmedian_over_sigma": float(np.median(dmed)),
                  "median_width_ratio": float(np.median(wa / wb))}
    out["all_params"] = {"frac_median_within_0.2sigma": float(np.mean(med_all)),
                         "frac_width_within_15pct": float(np.mean(wid_all)),
                         "frac_both": float(np.mean(med_all & wid_all))}
    return out


# ------------------------------------------------------------------------------------- the NumPy version
def numpy_grid_posterior(grid, mag, err, plx, plx_err, table, row, settings, rng, E_max):
    """The grid posterior of photoinfer.grid, per star in NumPy (float64), same algorithm and settings."""
    n = len(mag)
    T, S, D = settings.keep, settings.n_mu, settings.n_draws
    out = np.full((n, D, 5), np.nan)
    ess = np.full(n, np.nan)
    M, R = grid.M.astype(np.float64), grid.R.astype(np.float64)
    tab = np.asarray(table.values, np.float64)
    mus_tab = table.mu0 + table.dmu * np.arange(tab.shape[1])
    lnp = grid.ln_prior.astype(np.float64)
    net = {k: np.asarray(v, np.float64) if not isinstance(v, dict) else
           {l: {q: np.asarray(a, np.float64) for q, a in layer.items()} for l, layer in v.items()}
           for k, v in grid.network.items()}
    feh_axis = np.asarray(grid.feh_axis, np.float64)
    import jax
    stellar = jax.jit(grid.stellar)      # the Gaussian-mixture θ prior: one compiled call per star (~its NumPy cost)

    def gauss_newton(mu_f, E_f, vmu, cme, vE, p, pe):
        mu_p, E_p, vmu_p, cme_p, vE_p, lnplx = mu_f, E_f, vmu, cme, vE, 0.0
        for _ in range(2):
            w0 = 10 ** (2 - mu_p / 5)
            j = -np.log(10) / 5 * w0
            Sv = pe ** 2 + j * j * vmu
            res = p - (w0 + j * (mu_f - mu_p))
            gm, gE = vmu * j / Sv, cme * j / Sv
            mu_p, E_p = mu_f + gm * res, E_f + gE * res
            vmu_p, cme_p, vE_p = vmu - gm * j * vmu, cme - gm * j * cme, vE - gE * j * cme
            lnplx = -0.5 * res ** 2 / Sv - 0.5 * np.log(2 * np.pi * Sv)
        return mu_p, E_p, vmu_p, cme_p, vE_p, lnplx

    def solve(d, R_, w):
        s0, sR, sRR = w.sum(), R_ @ w, (R_ * R_) @ w
        sd, sRd = d @ w, (R_ * d) @ w
        det = s0 * sRR - sR ** 2
        mu_f, E_f = (sRR * sd - sR * sRd) / det, (s0 * sRd - sR * sd) / det
        r = d - mu_f[:, None] - E_f[:, None] * R_
        return mu_f, E_f, (r * r) @ w, sRR / det, -sR / det, s0 / det

    for s in range(n):
        o = np.isfinite(mag[s])
        if o.sum() < 2:
            continue
        w = 1.0 / (err[s, o] ** 2 + settings.sigma_model ** 2)
        has_plx = np.isfinite(plx[s])
        # 1. Laplace weight of every grid point
        mu_f, E_f, chi2, vmu, cme, vE = solve(mag[s, o] - M[:, o], R[:, o], w)
        if has_plx:
            mu_p, E_p, vmu_p, cme_p, vE_p, lnplx = gauss_newton(mu_f, E_f, vmu, cme, vE, plx[s], plx_err[s])
        else:
            mu_p, E_p, vmu_p, cme_p, vE_p, lnplx = mu_f, E_f, vmu, cme, vE, 0.0
        sd_E = np.sqrt(vE_p)
        ln_tr = np.log(np.maximum(ndtr((E_max - E_p) / sd_E) - ndtr(-E_p / sd_E), 1e-300))
        mu_e = np.where(E_p < 0, mu_p - cme_p / vE_p * E_p, mu_p)
        lw0 = (-0.5 * chi2 + 0.5 * np.log(vmu * vE - cme ** 2) + lnplx + ln_tr - np.log(E_max)
               + _interp_rows(tab, row, mus_tab, mu_e) + lnp)
        # 2. T points by systematic sampling from the Laplace weights
        p = np.exp(lw0 - logsumexp(lw0))
        cdf = np.cumsum(p)
        pick = np.minimum(np.searchsorted(cdf, (np.arange(T) + rng.uniform()) / T * cdf[-1]), len(p) - 1)
        ln_pick = np.log(p[pick])
        # continuous θ: each drawn copy at a uniform θ in its cell, M, R and p(θ) evaluated there
        th_k = grid.theta[pick] + (rng.uniform(size=(T, 3)) - 0.5) * grid.spacing
        Mk, Rk = _network_numpy(net, th_k)
        lnp_k = np.asarray(stellar(th_k.astype(np.float32)), np.float64)
        # 3. exact weights of n_mu stratified μ draws per drawn point
        mf, Ef, _, vm, ce, ve = solve(mag[s, o] - Mk[:, o], Rk[:, o], w)
        if has_plx:
            mp, Ep, vmp, cmp_, vEp, _ = gauss_newton(mf, Ef, vm, ce, ve, plx[s], plx_err[s])
        else:
            mp, Ep, vmp, cmp_, vEp = mf, Ef, vm, ce, ve
        centre = np.where(Ep < 0, mp - cmp_ / vEp * Ep, mp)
        scale = settings.inflate * np.sqrt(vmp)
        u = np.mod(rng.uniform() + 0.6180339887498949 * np.arange(T), 1.0)
        z = ndtri((np.arange(S)[None, :] + u[:, None]) / S)
        mu = centre[:, None] + scale[:, None] * z                            # (T, S)
        ln_q = -0.5 * z * z - np.log(scale)[:, None] - 0.5 * np.log(2 * np.pi) + ln_pick[:, None]
        vm, ce, ve = vm[:, None], ce[:, None], ve[:, None]
        s2 = ve - ce * ce / vm
        c = Ef[:, None] + ce / vm * (mu - mf[:, None])
        sd = np.broadcast_to(np.sqrt(s2), mu.shape)
        ptr = np.maximum(ndtr((E_max - c) / sd) - ndtr(-c / sd), 1e-300)
        r = mag[s, o] - Mk[:, o]
        chi2_free = ((r - mf[:, None] - Ef[:, None] * Rk[:, o]) ** 2) @ w
        lw = (-0.5 * chi2_free[:, None] - 0.5 * (mu - mf[:, None]) ** 2 / vm + 0.5 * np.log(2 * np.pi * s2)
              - np.log(E_max) + np.log(ptr) + lnp_k[:, None] - ln_q + _interp_feh(tab, feh_axis, th_k[:, 2], mus_tab, mu))
        if has_plx:
            lw += -0.5 * ((plx[s] - 10 ** (2 - mu / 5)) / plx_err[s]) ** 2
        lw = lw.ravel()
        wn = np.exp(lw - logsumexp(lw))
        ess[s] = 1 / np.sum(wn ** 2)
        # 4. resampling; E from its truncated conditional; θ uniform in the cell
        k = np.minimum(np.searchsorted(np.cumsum(wn), (np.arange(D) + rng.uniform()) / D), len(wn) - 1)
        pt = k // S
        cc, ss = c.ravel()[k], sd.ravel()[k]
        a, b = ndtr(-cc / ss), ndtr((E_max - cc) / ss)
        E = np.clip(cc + ss * ndtri(np.clip(a + rng.uniform(size=D) * (b - a), 1e-300, 1 - 1e-16)), 0, E_max)
        out[s] = np.column_stack([th_k[pt], mu.ravel()[k], E])
    return out, ess


def _network_numpy(net, theta):
    """M(θ), R(θ) (k, B) of the released architecture in NumPy (float64)."""
    p = net["params"]
    x = (theta - net["theta_med"]) / net["theta_std"]
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    h = sig(x @ p["hidden_1"]["kernel"] + p["hidden_1"]["bias"])
    h = sig(h @ p["hidden_2"]["kernel"] + p["hidden_2"]["bias"])
    am = h @ p["BM"]["kernel"] + p["BM"]["bias"]
    M = am.copy()
    M[:, 1:] += am[:, :1]
    return M, np.exp(x @ p["R"]["kernel"] + p["R"]["bias"])


def _interp_feh(tab, feh_axis, feh, axis, x):
    """The position table bilinear in ([M/H], μ): rows at ``feh_axis`` (regular), x (k, S)."""
    c = np.clip((feh - feh_axis[0]) / (feh_axis[1] - feh_axis[0]), 0, len(feh_axis) - 1)
    r = np.minimum(np.floor(c).astype(int), len(feh_axis) - 2)
    f = (c - r)[:, None]
    return (1 - f) * _interp_rows(tab, r, axis, x) + f * _interp_rows(tab, r + 1, axis, x)


def _interp_rows(tab, rows, axis, x):
    """tab[rows, ·] interpolated linearly at x (rows: (k,), x: (k,) or (k, S)), clamped at the ends."""
    c = np.clip((x - axis[0]) / (axis[1] - axis[0]), 0, len(axis) - 1)
    i = np.minimum(np.floor(c).astype(int), len(axis) - 2)
    f = c - i
    r = rows if x.ndim == 1 else rows[:, None]
    return (1 - f) * tab[r, i] + f * tab[r, i + 1]


# ------------------------------------------------------------------------------------- runs
def timed_grid(grid, stars, prior, settings, table, arrays):
    warm = type(stars)(*[a[:settings.star_chunk] for a in stars])
    grid_posterior(grid, warm, prior, settings, table=table, arrays=arrays)          # compile
    t = time.perf_counter()
    fit = grid_posterior(grid, stars, prior, settings, table=table, arrays=arrays)
    return fit, time.perf_counter() - t


def timed_nuts(model, cat, prior, args):
    from photoinfer.infer.fit import fit_catalog
    kw = dict(prior=prior, num_warmup=args.num_warmup, num_samples=args.num_samples, num_chains=args.num_chains,
              batch_size=args.batch_size, use_position=False)
    fit_catalog(model, cat.subset(np.arange(min(len(cat), args.batch_size))), **kw)    # compile
    t = time.perf_counter()
    res = fit_catalog(model, cat, **kw)
    return res, time.perf_counter() - t


def robust_scatter(x):
    x = x[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) else float("nan")


def real_scatter(summary, cat):
    out = {}
    for label, sel in (("dwarfs", cat.theta[:, 1] > 3.5), ("giants", cat.theta[:, 1] <= 3.5)):
        out[label] = {"n": int(sel.sum())}
        for i, p in enumerate(("teff", "logg", "feh")):
            dd = (np.asarray(summary[f"{p}_p50"], float) - cat.theta[:, i])[sel]
            out[label][p] = {"robust_scatter": robust_scatter(dd), "median_offset": float(np.nanmedian(dd))}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-mock", type=int, default=2000)
    ap.add_argument("--n-real", type=int, default=8000)
    ap.add_argument("--n-numpy", type=int, default=200)
    ap.add_argument("--n-nuts", type=int, default=2000, help="mock stars fit with NUTS too (the first ones)")
    ap.add_argument("--n-real-nuts", type=int, default=8000, help="real stars fit with NUTS too (a seeded random subset)")
    ap.add_argument("--repeat", type=int, default=3, help="alternating NumPy/JAX timings (median ratio reported)")
    ap.add_argument("--num-warmup", type=int, default=300)
    ap.add_argument("--num-samples", type=int, default=250)
    ap.add_argument("--num-chains", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--keep", type=int, default=GridSettings.keep, help="grid points drawn per star")
    ap.add_argument("--n-mu", type=int, default=GridSettings.n_mu, help="μ draws per drawn point")
    ap.add_argument("--star-chunk", type=int, default=GridSettings.star_chunk)
    ap.add_argument("--E-max", type=float, default=2.0)
    ap.add_argument("--missing", choices=("random", "survey"), default="random",
                    help="mock bands missing at random (exact calibration) or by the survey patterns and limits")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "grid_vs_nuts.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    model = load_model(SHARED / "green2020_nn_model.h5")
    iprior = build_prior(model, name="bayestar", E_max=args.E_max)     # the one prior object of both methods
    prior = iprior.prior
    res = {"machine": platform.processor() or platform.machine(), "command": " ".join(sys.argv), "mock": {},
           "real": {}, "numpy": {}, "nuts": {}}
    grids = {name: make_theta_grid(model, name, stellar_prior=prior.stellar) for name in ("fine", "coarse")}
    arrays = {k: grid_arrays(g) for k, g in grids.items()}
    tables = {k: position_table(prior, g.feh_axis) for k, g in grids.items()}
    gs = GridSettings(position_free=True, keep=args.keep, n_mu=args.n_mu, star_chunk=args.star_chunk)
    settings = {"fine": gs, "coarse": gs}
    res["settings"] = {k: v.__dict__ for k, v in settings.items()}

    mag, err, plx, plx_err, truth = prior_predictive_mock(model, grids["fine"], tables["fine"],
                                                          np.asarray(arrays["fine"].row), args.E_max, args.n_mock, rng,
                                                          missing=args.missing)
    stars = star_arrays(mag, err, plx, plx_err)
    fits = {}
    for name, g in grids.items():
        fit, dt = timed_grid(g, stars, prior, settings[name], tables[name], arrays[name])
        fits[name] = fit
        res["mock"][name] = {"grid_points": len(g), "stars": args.n_mock, "stars_fit": int(np.isfinite(fit.ess).sum()),
                             "seconds": dt, "stars_per_s": args.n_mock / dt,
                             "ess_median": float(np.nanmedian(fit.ess)), "ess_p1": float(np.nanpercentile(fit.ess, 1)),
                             "frac_not_converged": float(np.mean(fit.fit.flags & 1024 > 0)),
                             "coverage": coverage(draws_of(fit.fit), truth)}
        print(name, json.dumps(res["mock"][name]), flush=True)

    # the NumPy implementation on the first stars, same settings as "fine"; JAX on the same stars right
    # after it, alternating --repeat times (the machine is shared: the median ratio is the figure)
    k = min(args.n_numpy, args.n_mock)
    sub = type(stars)(*[a[:k] for a in stars])
    t_np, t_jax = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        dnp, ess_np = numpy_grid_posterior(grids["fine"], mag[:k], err[:k], plx[:k], plx_err[:k], tables["fine"],
                                           np.asarray(arrays["fine"].row), settings["fine"], rng, args.E_max)
        t_np.append(time.perf_counter() - t)
        fk, dtk = timed_grid(grids["fine"], sub, prior, settings["fine"], tables["fine"], arrays["fine"])
        t_jax.append(dtk)
    ratios = np.asarray(t_np) / np.asarray(t_jax)
    dt, dtk = float(np.median(t_np)), float(np.median(t_jax))
    med_np = np.nanmedian(dnp, axis=1)
    a = fk.fit.summary
    dev = {p: float(np.nanmedian(np.abs(med_np[:, i] - a[f"{p}_p50"])
                                 / (0.5 * (a[f"{p}_p84"] - a[f"{p}_p16"])))) for i, p in enumerate(PARAMS)}
    res["numpy"] = {"stars": k, "seconds": dt, "stars_per_s": k / dt, "ess_median": float(np.nanmedian(ess_np)),
                    "jax_same_stars_seconds": dtk, "jax_same_stars_per_s": k / dtk,
                    "median_abs_dmedian_over_sigma_vs_jax": dev, "speedup_jax_vs_numpy": float(np.median(ratios)),
                    "speedup_each_repeat": ratios.tolist()}
    print("numpy", json.dumps(res["numpy"]), flush=True)

    # real stars with parallaxes, spectroscopy hidden, position-free prior
    cat = read_catalog(SHARED / "green2020_sample_8k.h5").subset(slice(0, args.n_real))
    rstars = star_arrays(cat.mag, cat.mag_err, cat.parallax, cat.parallax_err)
    rfits = {}
    for name, g in grids.items():
        fit, dt = timed_grid(g, rstars, prior, settings[name], tables[name], arrays[name])
        rfits[name] = fit
        res["real"][name] = {"stars": len(cat), "seconds": dt, "stars_per_s": len(cat) / dt,
                             "ess_median": float(np.nanmedian(fit.ess)), **real_scatter(fit.fit.summary, cat)}
        print("real", name, json.dumps(res["real"][name]), flush=True)

    # NUTS, same prior object, on the first mock and real stars
    if args.n_nuts > 0:
        kn = min(args.n_nuts, args.n_mock)
        mcat = Catalog.from_arrays(mag[:kn], err[:kn], bands=model.bands, parallax=plx[:kn], parallax_err=plx_err[:kn])
        nres, dt = timed_nuts(model, mcat, iprior, args)
        fine_sub = {c: np.asarray(v)[:kn] for c, v in fits["fine"].fit.summary.items()}
        tr = {p: v[:kn] for p, v in truth.items()}
        res["nuts"]["mock"] = {"stars": kn, "seconds": dt, "stars_per_s": kn / dt,
                               "ess_bulk_min_median": float(np.nanmedian(nres.summary["ess_bulk_min"])),
                               "coverage": coverage(draws_of(nres), tr),
                               "grid_fine_coverage_same_stars": coverage(draws_of(fits["fine"].fit)[:kn], tr),
                               "agreement_grid_fine_vs_nuts": agreement(fine_sub, nres.summary),
                               "agreement_grid_fine_vs_nuts_nuts_converged": agreement(
                                   {c: v[(nres.summary["flags"] & 1024) == 0] for c, v in fine_sub.items()},
                                   {c: np.asarray(v)[(nres.summary["flags"] & 1024) == 0]
                                    for c, v in nres.summary.items()})}
        print("nuts mock", json.dumps(res["nuts"]["mock"]), flush=True)
    if args.n_real_nuts > 0:
        kr = min(args.n_real_nuts, len(cat))
        pick = np.sort(np.random.default_rng(args.seed + 1).choice(len(cat), kr, replace=False))   # a random subset
        rcat = cat.subset(pick)
        rcat = Catalog.from_arrays(rcat.mag, rcat.mag_err, bands=model.bands, parallax=rcat.parallax,
                                   parallax_err=rcat.parallax_err, theta=rcat.theta)
        nres, dt = timed_nuts(model, rcat, iprior, args)
        gsub = {c: np.asarray(v)[pick] for c, v in rfits["fine"].fit.summary.items()}
        res["nuts"]["real"] = {"stars": kr, "seconds": dt, "stars_per_s": kr / dt, "nuts": real_scatter(nres.summary, rcat),
                               "grid_fine_same_stars": real_scatter(gsub, rcat),
                               "agreement_grid_fine_vs_nuts": agreement(gsub, nres.summary)}
        print("nuts real", json.dumps(res["nuts"]["real"]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
