"""Throughput of photoinfer's per-star NUTS against a plain numpyro model with one plate over the stars.

Both sample the same posterior (METHOD §8, position-free prior) of the same prior-predictive mock;
the baseline gets the same initial points (chain starts from photoinfer's grid initialization) so
only the sampler layout differs.  Reports stars/s, per-star minimum bulk ESS over the five
parameters, r̂, divergences and 68/95 % coverage.

usage: python benchmarks/infer_throughput.py [--n 1000] [--n-baseline 1000] [--seed 1] [--repeat 3]
The last repeat's figures and the median speed-ups over repeats go in the JSON.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from infer_common import PARAMS, coverage, fit_nuts, mock_catalog, model_path, truth, write_json


def summarize_run(name, n, seconds, samples, diverging, true, diag=None):
    """``diag``: the fit's own r̂/ESS (photoinfer: within modes for MULTIMODAL stars, whose output draws
    are a weighted resample on which r̂ would be meaningless); None: computed from the chains."""
    from photoinfer.posterior import diagnostics
    d = diagnostics({p: samples[p] for p in PARAMS}) if diag is None else diag
    ok = np.isfinite(d["ess_bulk_min"])
    ess = d["ess_bulk_min"][ok]
    rh = d["rhat_max"][ok]
    return {"method": name, "stars": int(n), "seconds": round(seconds, 1), "stars_per_s": round(n / seconds, 3),
            "ess_bulk_min_median": float(np.median(ess)), "ess_bulk_min_p05": float(np.percentile(ess, 5)),
            "ess_bulk_min_min": float(ess.min()), "frac_ess_ge_200": float(np.mean(ess >= 200)),
            "rhat_max_median": float(np.median(rh)), "frac_rhat_le_1.01": float(np.mean(rh <= 1.01)),
            "divergences_per_star": float(np.asarray(diverging).sum() / n),
            "coverage": coverage(samples, true, np.ones(len(true), bool))}


def plate_baseline(model, prior, cat, n_chains, num_warmup, num_samples, seed):
    """numpyro MCMC(NUTS(catalog_model)) over all stars at once, chains run sequentially."""
    from numpyro.infer import MCMC, NUTS
    from photoinfer.infer.fit import _star_keys
    from photoinfer.infer.init import candidate_grid, candidate_neighbours, initial_points
    from photoinfer.infer.model import catalog_model, model_arrays, star_inputs
    arrays = model_arrays(model)
    s = jax.tree_util.tree_map(jnp.asarray, star_inputs(cat))
    x_cand, cell = candidate_grid(prior, arrays)
    keys = _star_keys(seed, np.arange(len(cat)))
    z0 = initial_points(keys, s, jnp.asarray(x_cand), candidate_neighbours(x_cand, cell), cell, arrays, prior,
                        n_chains=n_chains)[0]                                                     # (N, C, 5)
    z0 = np.moveaxis(np.asarray(z0), 1, 0)                                                       # (C, N, 5)
    init = {"x": jnp.asarray(z0[..., :3]), "mu": jnp.asarray(z0[..., 3]), "E": jnp.asarray(z0[..., 4])}
    mcmc = MCMC(NUTS(catalog_model), num_warmup=num_warmup, num_samples=num_samples, num_chains=n_chains,
                chain_method="sequential", progress_bar=False)
    t = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), s, arrays, prior, init_params=init, extra_fields=("diverging",))
    seconds = time.perf_counter() - t
    post = mcmc.get_samples(group_by_chain=True)
    theta = np.asarray(arrays.theta_med) + np.asarray(arrays.theta_std) * np.asarray(post["x"])
    samples = {"teff": theta[..., 0], "logg": theta[..., 1], "feh": theta[..., 2], "mu": np.asarray(post["mu"]),
               "E": np.asarray(post["E"])}
    div = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"])
    return samples, seconds, div


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-baseline", type=int, default=1000, help="stars given to the plate baseline (first n)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--num-warmup", type=int, default=300)
    ap.add_argument("--num-samples", type=int, default=250)
    ap.add_argument("--baseline-warmup", type=int, default=500)
    ap.add_argument("--baseline-samples", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--target-accept", type=float, default=0.8)
    ap.add_argument("--repeat", type=int, default=1, help="alternating photoinfer/plate repeats (median ratios)")
    ap.add_argument("--no-guide", action="store_true",
                    help="photoinfer without the grid (its own initialization, no guide moves): the sampler "
                         "before session 5")
    ap.add_argument("--out", default="infer_throughput.json")
    args = ap.parse_args()

    from photoinfer.infer.prior import build_prior
    from photoinfer.io.models import load_model
    model = load_model(model_path())
    prior = build_prior(model)
    cat = mock_catalog(model, prior, args.n, args.seed)
    true = truth(cat)
    out = {"model": str(model_path().name), "mock": f"prior-predictive, n={args.n}, seed={args.seed}",
           "cpu_cores": __import__("os").cpu_count()}

    def photoinfer_fit(c, **kw):
        """What `photoinfer fit --method nuts` runs (the grid's time included)."""
        return fit_nuts(model, c, prior, guided=not args.no_guide, num_warmup=args.num_warmup,
                        num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
                        target_accept=args.target_accept, **kw)[0]

    # compile once on one full batch so the timing is steady state (compile time reported apart); an
    # unreachable ESS threshold sends it through the refinement rounds too, compiling them as well
    t = time.perf_counter()
    photoinfer_fit(cat.subset(np.arange(min(args.batch_size, len(cat)))), ess_threshold=1e9)
    out["photoinfer_compile_s"] = round(time.perf_counter() - t, 1)
    nb = min(args.n_baseline, len(cat))
    sub = cat.subset(np.arange(nb))
    out["repeats"] = []
    for rep in range(args.repeat):     # alternate the two so both see the same machine load
        t = time.perf_counter()
        res = photoinfer_fit(cat)
        seconds = time.perf_counter() - t
        r = summarize_run("photoinfer per-star NUTS (blackjax, vmapped, 4 chains)"
                          + ("" if args.no_guide else ", grid-started and guided, grid time included"), len(cat),
                          seconds, res.samples, res.sample_stats["diverging"], true, diag=res.summary)
        r["frac_multimodal"] = float(np.mean((np.asarray(res.flags) & 8192) > 0))
        r.update({"num_warmup": args.num_warmup, "num_samples": args.num_samples, "batch_size": args.batch_size,
                  "target_accept": args.target_accept, "refined_stars": res.attrs["refined_stars"],
                  "refined_per_round": res.attrs["refined_per_round"], "guided": not args.no_guide,
                  "guide_accept": float(np.mean(res.sample_stats["guide_accept"])),
                  "mean_leapfrog_steps": float(np.mean(res.sample_stats["n_steps"]))})
        print(r)
        samples, seconds, div = plate_baseline(model, prior, sub, 4, args.baseline_warmup, args.baseline_samples,
                                               args.seed)
        b = summarize_run("numpyro, one plate over the stars (4 chains, sequential)", nb, seconds, samples, div,
                          true[:nb])
        b.update({"num_warmup": args.baseline_warmup, "num_samples": args.baseline_samples})
        print(b)
        # at equal ESS: per-star min bulk ESS per second (median ESS × stars/s)
        out["repeats"].append({"photoinfer": r, "plate_baseline": b,
                               "speedup_stars_per_s": round(r["stars_per_s"] / b["stars_per_s"], 2),
                               "speedup_ess_per_s": round(r["stars_per_s"] * r["ess_bulk_min_median"]
                                                          / (b["stars_per_s"] * b["ess_bulk_min_median"]), 2)})
        out["photoinfer"], out["plate_baseline"] = r, b
        for k in ("speedup_stars_per_s", "speedup_ess_per_s"):
            out[k] = float(np.median([x[k] for x in out["repeats"]]))
        print("repeat", rep, "speed-up", out["repeats"][-1]["speedup_stars_per_s"], "at equal ESS",
              out["repeats"][-1]["speedup_ess_per_s"], "; medians so far", out["speedup_stars_per_s"],
              out["speedup_ess_per_s"])
        write_json(args.out, out)

if __name__ == "__main__":
    main()
