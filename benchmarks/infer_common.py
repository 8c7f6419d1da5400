"""Shared pieces of the inference benchmarks: model path, mock catalogs cached on disk, coverage."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("PHOTOINFER_SHARED", REPO.parent / "shared"))
RELEASED_MODEL = SHARED / "data" / "green2020" / "green2020_nn_model.h5"
SAMPLE_8K = SHARED / "data" / "green2020" / "green2020_sample_8k.h5"
DEFAULT_MODEL = REPO / "data" / "photoinfer_default_model.h5"
PARAMS = ("teff", "logg", "feh", "mu", "E")


def model_path() -> Path:
    return DEFAULT_MODEL if DEFAULT_MODEL.exists() else RELEASED_MODEL


def mock_catalog(model, prior, n: int, seed: int, sightlines=None):
    """The prior-predictive mock (cached as Parquet under benchmarks/results/cache).

    ``sightlines``: None (position-free prior) or (l, b) pairs dealt to the stars in turn.
    """
    from photoinfer.infer.predictive import prior_predictive_catalog
    from photoinfer.io.catalogs import read_catalog, write_catalog
    tag = "sky" if sightlines is None else f"lb{len(sightlines)}"
    cache = (RESULTS / "cache" / f"mock2_{Path(model_path()).stem}_{prior.name}_{tag}_Emax{prior.E_max:g}"
             f"_n{n}_s{seed}.parquet")
    if cache.exists():
        cat = read_catalog(cache)
        return cat
    t = time.perf_counter()
    cat = prior_predictive_catalog(model, prior, n, seed=seed, sightlines=sightlines)
    print(f"mock of {n} stars drawn in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_catalog(cat, cache)
    return read_catalog(cache)


def fit_nuts(model, cat, prior, *, guided: bool = True, num_samples: int = 500, seed: int = 0,
             use_parallax: bool = True, use_position: bool = True, **kw):
    """What `photoinfer fit --method nuts` runs: the grid (starts and guide), then
    :func:`photoinfer.infer.fit.fit_catalog`; ``guided=False``: fit_catalog alone (no grid).
    Returns (FitResult, seconds of the grid)."""
    from photoinfer.infer.fit import fit_catalog
    init = guide = None
    t = time.perf_counter()
    if guided:
        from photoinfer.grid.methods import grid_start
        init, guide, _ = grid_start(model, cat, prior, num_chains=4, num_samples=num_samples, seed=seed,
                                    use_parallax=use_parallax, use_position=use_position)
    grid_s = time.perf_counter() - t
    res = fit_catalog(model, cat, prior=prior, num_samples=num_samples, seed=seed, use_parallax=use_parallax,
                      use_position=use_position, init=init, guide=guide, **kw)
    return res, grid_s


def truth(cat) -> np.ndarray:
    return np.stack([np.asarray(cat.extra[f"true_{p}"], float) for p in PARAMS], -1)


def coverage(samples: dict, true: np.ndarray, ok: np.ndarray) -> dict:
    """Fraction of stars whose central 68 % / 95 % interval contains the truth, per parameter."""
    out = {}
    for i, p in enumerate(PARAMS):
        d = np.asarray(samples[p]).reshape(-1, true.shape[0])[:, ok]
        t = true[ok, i]
        res = {}
        for level in (68, 95):
            lo, hi = np.percentile(d, [50 - level / 2, 50 + level / 2], axis=0)
            res[str(level)] = float(np.mean((t >= lo) & (t <= hi)))
        out[p] = res
    return out


def write_json(name: str, obj: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(obj, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    return path


def parallax_z_scores(mu_draws: np.ndarray, parallax: np.ndarray, parallax_err: np.ndarray, seed: int = 0) -> dict:
    """z-scores of measured parallaxes against posteriors fit without them, two ways.

    ``gaussian``: (ϖ̂ − E[ϖ]) / sqrt(σ_ϖ² + Var[ϖ]) — assumes a Gaussian posterior parallax; one
    dwarf/giant star with a bimodal posterior dominates its std.
    ``pit``: Φ⁻¹(P(ϖ_rep < ϖ̂)), ϖ_rep = ϖ(μ draw) + N(0, σ_ϖ) (the posterior predictive's probability
    integral transform): exactly N(0, 1) for calibrated posteriors whatever their shape.

    mu_draws : (D, N) posterior draws of μ; parallax, parallax_err : (N,) [mas].
    Returns {name: {n, median, std, scatter_16_84, frac_abs_gt_3}} over the stars with finite values.
    """
    from scipy.stats import norm
    plx = 10.0 ** (2.0 - np.asarray(mu_draws, np.float64) / 5.0)
    rep = plx + np.random.default_rng(seed).normal(size=plx.shape) * parallax_err
    D = plx.shape[0]
    z = {"gaussian": (parallax - plx.mean(0)) / np.sqrt(parallax_err ** 2 + plx.var(0)),
         "pit": norm.ppf(np.clip(np.mean(rep < parallax, axis=0), 0.5 / D, 1 - 0.5 / D))}
    ok = np.isfinite(parallax) & np.all(np.isfinite(plx), axis=0)
    out = {}
    for name, v in z.items():
        v = v[ok]
        q16, q50, q84 = np.percentile(v, [16, 50, 84])
        out[name] = {"n": int(ok.sum()), "median": float(q50), "std": float(np.std(v)),
                     "scatter_16_84": float((q84 - q16) / 2), "frac_abs_gt_3": float(np.mean(np.abs(v) > 3))}
    return out
