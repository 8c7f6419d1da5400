"""Helpers for the pipeline tests: a deterministic stand-in fit function and a runnable entry point.

``fake_fit`` is a test double of a fitting method for the orchestration tests (resume, kill,
Dask): its draws are a deterministic function of (seed, position in the batch, the star's truth
columns), like a real sampler's, and it sleeps ``delay`` seconds per call so a run can be killed
in the middle.  The physics tests use the real grid method.

Run as a script (the kill test starts it as a subprocess)::

    python tests/pipeline_runner.py CATALOG OUT --nside 2 --batch-size 16 [--method fake|grid] [--delay S]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from photoinfer.fitresult import PARAMETERS, SUMMARY_COLUMNS, FitResult, distance_from_mu  # noqa: E402


def fake_fit(model, catalog, *, seed, n_draws=100, delay=0.0):
    """(1, n_draws, N) draws around the catalog's true μ, E (extra columns true_mu, true_E)."""
    if delay:
        time.sleep(delay)
    n = len(catalog)
    rng = np.random.default_rng([int(seed), n])
    mu0 = np.asarray(catalog.extra.get("true_mu", np.full(n, 10.0)), np.float64)
    E0 = np.asarray(catalog.extra.get("true_E", np.full(n, 0.5)), np.float64)
    draws = {"teff": 5000 + 100 * rng.normal(size=(1, n_draws, n)),
             "logg": 4 + 0.1 * rng.normal(size=(1, n_draws, n)),
             "feh": 0.1 * rng.normal(size=(1, n_draws, n)),
             "mu": mu0 + 0.2 * rng.normal(size=(1, n_draws, n)),
             "E": np.abs(E0 + 0.05 * rng.normal(size=(1, n_draws, n)))}
    summary = {"source_id": catalog.source_id.copy(), "flags": catalog.flags.copy(),
               "method": np.full(n, "fake", dtype=object)}
    for p in (*PARAMETERS, "distance"):
        x = distance_from_mu(draws["mu"]) if p == "distance" else draws[p]
        q = np.percentile(x.reshape(-1, n), [16, 50, 84], axis=0)
        for j, pc in enumerate(("p16", "p50", "p84")):
            summary[f"{p}_{pc}"] = q[j]
    for c in ("rhat_max", "ess_bulk_min", "ess_tail_min", "frac_outside_validity"):
        summary[c] = np.full(n, np.nan)
    summary["n_divergent"] = np.zeros(n, np.int64)
    summary = {c: summary[c] for c in SUMMARY_COLUMNS}
    return FitResult(source_id=catalog.source_id.copy(), samples=draws, sample_stats={}, summary=summary,
                     flags=catalog.flags.copy(), method="fake")


class TinyModel:
    """Enough of a StellarModel for the pipeline with ``fake_fit`` (hashing, bands)."""

    def __init__(self):
        from photoinfer.conventions import DEFAULT_BANDS
        self.bands = DEFAULT_BANDS
        self.params = {"w": np.arange(3.0)}
        self.theta_med = np.zeros(3)
        self.theta_std = np.ones(3)


def mock_catalog(n, seed, n_nopos=0):
    """Random sky positions, true μ/E columns and photometry (values only matter to the hashes)."""
    from photoinfer.catalog import Catalog
    from photoinfer.conventions import DEFAULT_BANDS
    rng = np.random.default_rng(seed)
    l = rng.uniform(0, 360, n)
    b = np.rad2deg(np.arcsin(rng.uniform(-1, 1, n)))
    l[:n_nopos] = np.nan
    b[:n_nopos] = np.nan
    mag = rng.uniform(12, 18, (n, len(DEFAULT_BANDS)))
    return Catalog.from_arrays(mag, np.full_like(mag, 0.03), bands=DEFAULT_BANDS,
                               source_id=1000 + rng.permutation(10 * n)[:n], l=l, b=b,
                               extra={"true_mu": rng.uniform(6, 16, n), "true_E": rng.uniform(0, 2, n)})


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("catalog")
    ap.add_argument("out")
    ap.add_argument("--nside", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--method", default="fake")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--model", default=None)
    a = ap.parse_args(argv)
    from photoinfer.pipeline import PipelineConfig, grid_fit_fn, run_pipeline
    if a.method == "fake":
        model, fit, settings = TinyModel(), fake_fit, {"delay": a.delay}
    else:
        from photoinfer.io.models import load_model
        model, fit = load_model(a.model), grid_fit_fn
        settings = {"spacing": "coarse", "n_draws": 200, "keep": 256}
    cfg = PipelineConfig(nside=a.nside, batch_size=a.batch_size, seed=a.seed, method=a.method, fit_settings=settings,
                         write_samples=False, quicklook=False)
    r = run_pipeline(model, a.catalog, a.out, fit, cfg, workers=a.workers)
    print(r.to_dict())


if __name__ == "__main__":
    main()
