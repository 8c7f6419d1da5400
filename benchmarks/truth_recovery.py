"""Truth recovery: train a model from scratch on a mock drawn with the released model as truth and
compare the recovered A·M(θ), R(θ) and per-star reddenings with the truth.

Usage::

    python benchmarks/truth_recovery.py --n 200000 --seed 1          # the must-show mock, the paper's recipe (~3 min)
    python benchmarks/truth_recovery.py --n 200000 --seed 1 --parallax-residual parallax --scale-step \
        --config '{"latent_theta": "marginal", "gn_steps": 5, "distance_prior": "bayestar", "l2_hidden": 1e-5,
                   "l1_extinction": 1e-3}'     # the best measured (~21 min; docs/benchmarks.md, session 10)
    python benchmarks/truth_recovery.py --n 20000 --iterations 4 --epochs 5   # quick look
    python benchmarks/truth_recovery.py --parallax-residual parallax --scale-step --epochs 75  # options
    python benchmarks/truth_recovery.py --mock-cache /tmp/mock200k_s1.parquet --parallax-residual parallax \
        --scale-step --config '{"latent_theta": "profile"}'     # any TrainConfig field; the mock reused
    python benchmarks/truth_recovery.py --n 50000 --mock-cache /tmp/mock200k_s1.parquet --init-truth ...
        # the first 50k stars of the cached mock; training starts at the truth (does the estimator drift?)

Mock: :func:`photoinfer.simulate.simulate_catalog` with the released model (θ from its
training density, Galactic distances, dust, the real sample's errors and missing bands).
Training: :func:`photoinfer.train.train`, default schedule (20 × 25, batch 1024), seeded.

Region: the θ nodes of the validity grid where the KDE (bandwidth 50 K, 0.05, 0.05) of the
mock's usable stars' true θ is ≥ 1e-2 of its peak.  Reported over that region:

- ``AM_rms`` per component of A·M (M_G, then X − G) [mag], two weightings: at the true θ of the
  held-out (validation + test) stars inside the region (the population the model serves), and
  uniformly over the region's grid nodes (edges weigh as much as the core);
- ``R_rel_rms`` per band with R_true > 0.1: rms of R_fit/R_true − 1, same two weightings;
- ``E_z``: z = (E_fit − E_true)/σ_E of held-out stars (the reddening update with the trained
  model, METHOD §4 with the released σ_E clipping; ``E_z_unclipped`` without it): mean and standard
  deviation (target 0.9–1.1); ``E_z_train``: the same from training's own last reddening update
  (its y₁ treatment, clipped).

Options: the mock's reddening-prior error (``--reddening-prior-error``, default berkson) and
training's options (``--parallax-residual``, ``--theta-denoise``, ``--scale-step``, ``--epochs``,
``--lr-decay``; defaults: the paper's).  Writes ``benchmarks/results/truth_recovery_<prior>_<residual>
[_tweedie][_scale][_thetaerrX][_plxerrY][_epochsE][_lrdecayD][_nN].json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PHOTOINFER_SHARED", REPO.parent / "shared")) / "data" / "green2020"
TARGETS = {"AM_rms_mag": 0.01, "R_rel_rms": 0.03, "E_z_std": (0.9, 1.1)}


def _peak_gib() -> float:
    """Peak resident memory of this process [GiB] (VmHWM on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def region_mask(theta_true, usable):
    """(nT, nG, nF) bool: grid nodes where the mock's true-θ density is ≥ 1e-2 of its peak."""
    from photoinfer.train.validation import validity_density
    dens = validity_density(theta_true[usable], np.ones((int(usable.sum()), 1)))[0]
    return dens >= 1e-2, dens


def in_region(theta, mask):
    """(n,) bool: whether each θ (n, 3) falls on a grid node of ``mask`` (:func:`region_mask`), nearest node."""
    from photoinfer.train.validation import GRID_FEH, GRID_LOGG, GRID_TEFF
    start = [GRID_TEFF[0], GRID_LOGG[0], GRID_FEH[0]]
    step = [GRID_TEFF[1] - GRID_TEFF[0], GRID_LOGG[1] - GRID_LOGG[0], GRID_FEH[1] - GRID_FEH[0]]
    idx = np.clip(np.round((np.asarray(theta) - start) / step).astype(int), 0, np.array(mask.shape) - 1)
    return mask[idx[:, 0], idx[:, 1], idx[:, 2]]


def reddening_z(model, data, E_true):
    """z = (E − E_true)/σ_E of the reddening update with ``model``: with the released σ_E clipping, and without
    it (floor 0.02² + (0.1 E)² off)."""
    import jax
    import jax.numpy as jnp
    from photoinfer import likelihood as lik
    from photoinfer.evaluate import update_reddening
    E, var = update_reddening(model, data)
    med, std = jnp.asarray(model.theta_med, jnp.float32), jnp.asarray(model.theta_std, jnp.float32)
    E_u, var_u = jax.jit(jax.vmap(lambda s: lik.star_reddening_update(model.params, med, std, s, clip=False)))(data)
    return (E - E_true) / np.sqrt(var), (np.asarray(E_u) - E_true) / np.sqrt(np.asarray(var_u))


def compare(trained, truth, theta):
    """Per-component rms of ΔA·M [mag] and per-band rms of R_fit/R_true − 1 (NaN where R_true ≤ 0.1)."""
    am_t = np.asarray(trained.predict_y(theta, 0.0), float)
    am_0 = np.asarray(truth.predict_y(theta, 0.0), float)
    compare.bias = np.mean(am_t - am_0, axis=0)
    R_t = np.asarray(trained.extinction(theta), float)
    R_0 = np.asarray(truth.extinction(theta), float)
    am_rms = np.sqrt(np.mean((am_t - am_0) ** 2, axis=0))
    rel = R_t / R_0 - 1
    big = R_0 > 0.1
    compare.ratio = np.median(R_t / R_0, axis=0)
    r_rms = np.array([np.sqrt(np.mean(rel[big[:, b], b] ** 2)) if big[:, b].mean() > 0.5 else np.nan
                      for b in range(R_0.shape[1])])
    return am_rms, r_rms, R_0.mean(axis=0)


def scaled_errors(theta_scale: float = 1.0, parallax_scale: float = 1.0, magnitude_limits: bool = True):
    """The default mock error model with every σ_θ (floors and cuts too) and σ_ϖ multiplied by the scales; without
    ``magnitude_limits``, every covered band observed whatever its magnitude, its error capped at 1 mag (they grow
    exponentially with magnitude: uncapped, the faintest bands of such a mock reach 10⁴⁶ mag): no selection on
    magnitudes."""
    from dataclasses import replace

    from photoinfer.mock_errors import DEFAULT_ERROR_MODEL as em
    if not magnitude_limits:
        em = replace(em, mag_limit=np.full(len(em.band_keys), np.inf), max_mag_err=np.inf, mag_err_cap=1.0,
                     source=f"{em.source}, no magnitude limits")
    return replace(em, theta_lnmean=np.asarray(em.theta_lnmean) + np.log(theta_scale),
                   theta_err_min=np.asarray(em.theta_err_min) * theta_scale,
                   theta_err_max=np.asarray(em.theta_err_max) * theta_scale,
                   plx_floor=em.plx_floor * parallax_scale, plx_c=em.plx_c + 2 * np.log(parallax_scale),
                   source=f"{em.source}, sigma_theta x {theta_scale}, sigma_parallax x {parallax_scale}")


def _mock(truth, n, seed, em, reddening_prior_error, cache):
    """The mock: simulated, or the first ``n`` stars of ``cache`` (a catalog file written by an earlier
    run with the same seed and error options; the stars are i.i.d., so its first n are an n-star mock)."""
    from photoinfer.io.catalogs import read_catalog, write_catalog
    from photoinfer.simulate import simulate_catalog
    if cache is not None and Path(cache).exists():
        cat = read_catalog(cache)
        if len(cat) < n:
            raise ValueError(f"{cache} has {len(cat)} stars, fewer than --n {n}")
        return cat.subset(np.arange(n)) if len(cat) > n else cat
    cat = simulate_catalog(truth, n, seed, error_model=em, reddening_prior_error=reddening_prior_error)
    if cache is not None:
        write_catalog(cat, cache)
    return cat


def run(n=200000, seed=1, iterations=20, epochs=25, batch_size=1024, out=None, theta_error_scale=1.0,
        save_model=None, parallax_error_scale=1.0, reddening_prior_error="berkson", parallax_residual="magnitude",
        theta_denoise="none", scale_step=False, lr_decay=0.2, mock_cache=None, extra_config=None, init_truth=False,
        magnitude_limits=True, save_iterates=None, init=None):
    from photoinfer.evaluate import star_data
    from photoinfer.io.models import load_model
    from photoinfer.train import TrainConfig, train
    from photoinfer.train.validation import GRID_FEH, GRID_LOGG, GRID_TEFF
    truth = load_model(SHARED / "green2020_nn_model.h5")
    t0 = time.perf_counter()
    em = (None if theta_error_scale == 1.0 and parallax_error_scale == 1.0 and magnitude_limits
          else scaled_errors(theta_error_scale, parallax_error_scale, magnitude_limits))
    cat = _mock(truth, n, seed, em, reddening_prior_error, mock_cache)
    t_sim = time.perf_counter() - t0
    extra_cfg = {} if parallax_residual == "magnitude" else {"parallax_residual": parallax_residual}
    if theta_denoise != "none":
        extra_cfg["theta_denoise"] = theta_denoise
    if scale_step:
        extra_cfg["scale_step"] = True
    extra_cfg.update(extra_config or {})
    cfg = TrainConfig(**{"iterations": iterations, "epochs": epochs, "batch_size": batch_size, "seed": seed,
                         "lr_decay": lr_decay, **extra_cfg})  # --config may set another training seed
    t0 = time.perf_counter()
    iterates = []

    def keep(kind, state, rec):  # the network after every iteration, flat (for --save-iterates)
        if kind == "iteration" and save_iterates:
            from jax.flatten_util import ravel_pytree
            iterates.append(np.asarray(ravel_pytree(state.params)[0]))
    model, hist = train(cat, cfg, init=truth if init_truth else load_model(init) if init else None, callback=keep)
    t_train = time.perf_counter() - t0
    if save_iterates:
        np.save(save_iterates, np.stack(iterates))
    if save_model:
        from photoinfer.io.models import save_model as _save
        _save(model, save_model)
    th_true = np.column_stack([cat.extra[k] for k in ("true_teff", "true_logg", "true_feh")])
    mask, _ = region_mask(th_true, hist.usable)
    held = hist.usable & (hist.split != 0)
    grid = np.stack(np.meshgrid(GRID_TEFF, GRID_LOGG, GRID_FEH, indexing="ij"), -1)
    nodes = grid[mask].astype(np.float32)
    inside = in_region(th_true, mask)
    stars = th_true[held & inside].astype(np.float32)
    am_s, r_s, R_mean = compare(model, truth, stars)
    am_bias, r_ratio = compare.bias, compare.ratio
    am_n, r_n, _ = compare(model, truth, nodes)
    dMG = (np.asarray(model.predict_y(stars, 0.0), float) - np.asarray(truth.predict_y(stars, 0.0), float))[:, 0]
    logg_bins = [-1.0, 2.5, 3.5, 4.2, 4.5, 6.0]
    k_bin = np.digitize(stars[:, 1], logg_bins[1:-1])
    by_logg = {f"{lo:g}-{hi:g}": {"n": int((k_bin == i).sum()), "rms": float(np.sqrt(np.mean(dMG[k_bin == i] ** 2))),
                                  "mean": float(np.mean(dMG[k_bin == i]))}
               for i, (lo, hi) in enumerate(zip(logg_bins[:-1], logg_bins[1:])) if (k_bin == i).any()}
    # reddening z-scores of held-out stars with the trained model
    sub = cat.subset(held)
    data = star_data(sub)
    z, z_u = reddening_z(model, data, sub.extra["true_E"])
    # reference: the truth model's own z-scores on the same stars (what the σ_E clipping allows at best)
    z_truth, z_truth_u = reddening_z(truth, data, sub.extra["true_E"])
    # the training's own last reddening update (its y₁ treatment), held-out stars
    z_t = (hist.E[held] - cat.extra["true_E"][held]) / hist.sigma_E[held]
    z_t = z_t[np.isfinite(z_t)]
    sig_th = np.sqrt(np.diagonal(cat.theta_cov[hist.usable], axis1=1, axis2=2))
    bands = list(truth.bands.names)
    comp = ["M_G"] + [f"{b}-G" for b in bands[1:]]
    res = {
        "command": f"python benchmarks/truth_recovery.py --n {n} --seed {seed} --iterations {iterations} "
                   f"--epochs {epochs} --batch-size {batch_size} --theta-error-scale {theta_error_scale} "
                   f"--parallax-error-scale {parallax_error_scale} --reddening-prior-error {reddening_prior_error} "
                   f"--parallax-residual {parallax_residual} --theta-denoise {theta_denoise}" + (" --scale-step" if scale_step else "")
                   + (f" --lr-decay {lr_decay}" if lr_decay != 0.2 else "")
                   + (f" --config '{json.dumps(extra_config)}'" if extra_config else "") + (" --init-truth" if init_truth else "")
                   + ("" if magnitude_limits else " --no-magnitude-limits"),
        "train_config": cfg.to_dict(),
        "theta_denoise": theta_denoise, "scale_step": scale_step,
        "R_scale_per_iteration": [r.get("R_scale", 1.0) for r in hist.iterations],
        "gauss_newton_per_iteration": [r.get("gauss_newton") for r in hist.iterations],
        "loss_per_iteration": [[r.get("train_loss"), r.get("val_loss")] for r in hist.iterations],
        "reddening_prior_error": reddening_prior_error, "parallax_residual": parallax_residual,
        "theta_error_scale": theta_error_scale, "parallax_error_scale": parallax_error_scale,
        "theta_err_median": np.median(sig_th, axis=0).tolist(),
        "n": n, "n_usable": int(hist.usable.sum()), "seed": seed, "simulate_seconds": t_sim,
        "train_seconds": t_train, "train_timings": hist.timings, "final_train_loss": hist.epochs[-1]["train_loss"],
        "final_val_loss": hist.epochs[-1]["val_loss"], "frac_cut_last": hist.iterations[-1]["frac_cut"],
        "region_nodes": int(mask.sum()), "held_out_stars_in_region": int(len(stars)),
        "frac_held_out_in_region": float(inside[held].mean()),
        "AM_rms_mag_stars": dict(zip(comp, am_s.tolist())), "AM_mean_diff_mag_stars": dict(zip(comp, am_bias.tolist())), "AM_rms_mag_nodes": dict(zip(comp, am_n.tolist())),
        "M_G_by_true_logg": by_logg,
        "R_true_mean": dict(zip(bands, R_mean.tolist())),
        "R_ratio_median_stars": dict(zip(bands, r_ratio.tolist())),
        "R_rel_rms_stars": {b: v for b, v in zip(bands, r_s.tolist()) if np.isfinite(v)},
        "R_rel_rms_nodes": {b: v for b, v in zip(bands, r_n.tolist()) if np.isfinite(v)},
        "E_z_mean": float(np.mean(z)), "E_z_std": float(np.std(z)), "E_z_n": int(len(z)),
        "E_z_std_robust": float((np.quantile(z, 0.84) - np.quantile(z, 0.16)) / 2),
        "E_z_unclipped_mean": float(np.mean(z_u)), "E_z_unclipped_std": float(np.std(z_u)),
        "E_z_unclipped_std_robust": float((np.quantile(z_u, 0.84) - np.quantile(z_u, 0.16)) / 2),
        "E_z_truth_model_std": float(np.std(z_truth)), "E_z_truth_model_unclipped_std": float(np.std(z_truth_u)),
        "E_z_train_mean": float(np.mean(z_t)), "E_z_train_std": float(np.std(z_t)),
        "E_z_train_std_robust": float((np.quantile(z_t, 0.84) - np.quantile(z_t, 0.16)) / 2),
        "targets": TARGETS, "peak_rss_gib": _peak_gib(),
    }
    res["pass_stars"] = {"AM": bool(np.max(am_s) <= 0.01), "R": bool(np.nanmax(r_s) <= 0.03),
                         "E_z": bool(0.9 <= res["E_z_std"] <= 1.1)}
    res["pass_nodes"] = {"AM": bool(np.max(am_n) <= 0.01), "R": bool(np.nanmax(r_n) <= 0.03)}
    if out:
        Path(out).write_text(json.dumps(res, indent=1))
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--theta-error-scale", type=float, default=1.0,
                   help="multiply the mock's θ errors (default 1: the real sample's); 0.1 isolates the fit from "
                        "the errors-in-variables bias of training on measured θ")
    p.add_argument("--parallax-error-scale", type=float, default=1.0,
                   help="multiply the mock's parallax errors (default 1: the real sample's)")
    p.add_argument("--no-magnitude-limits", action="store_true",
                   help="a mock without magnitude selection: every covered band observed, however faint, its error "
                        "capped at 1 mag (is the selection of the training stars on their magnitudes what biases M_G?)")
    p.add_argument("--reddening-prior-error", choices=("berkson", "classical"), default="berkson",
                   help="the mock's reddening prior (docs/simulate.md; default berkson: the prior is the "
                        "distribution of E given the map)")
    p.add_argument("--parallax-residual", choices=("magnitude", "parallax"), default="magnitude",
                   help="training's y1 treatment (docs/training.md; default magnitude: the paper's)")
    p.add_argument("--theta-denoise", choices=("none", "tweedie"), default="none",
                   help="feed the network Tweedie-de-noised θ (docs/training.md; default none: the paper)")
    p.add_argument("--scale-step", action="store_true",
                   help="training's E·R scale step (docs/training.md; default off: the paper)")
    p.add_argument("--lr-decay", type=float, default=0.2, help="learning rate 1e-3·exp(-LR_DECAY·k) (default 0.2)")
    p.add_argument("--mock-cache", default=None, metavar="FILE",
                   help="read the mock from FILE (its first --n stars) if it exists, else simulate and write it "
                        "there (.parquet); it must come from the same --seed and error options")
    p.add_argument("--config", default=None, metavar="JSON",
                   help="further TrainConfig fields as a JSON object, e.g. '{\"polish_steps\": 200}'")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--init-truth", action="store_true",
                       help="start training from the truth's parameters (a diagnostic: does the estimator drift away?)")
    start.add_argument("--init", default=None, metavar="MODEL",
                       help="start training from this saved model (e.g. to continue a run with --config "
                            "'{\"learning_rate\": …, \"lr_decay\": 0}')")
    p.add_argument("--tag", default="", help="appended to the default output name")
    p.add_argument("--save-model", default=None, metavar="PATH", help="also write the trained model here")
    p.add_argument("--save-iterates", default=None, metavar="PATH.npy",
                   help="also write the network after every iteration, (iterations, P) in ravel_pytree order")
    p.add_argument("--out", default=None, help="default benchmarks/results/truth_recovery_<prior>_<residual>[_tweedie][_scale][_thetaerrX]"
                                        "[_plxerrY][_nomaglim][_epochsE][_lrdecayD][_nN][TAG].json")
    a = p.parse_args(argv)
    tag = "".join(f"_{k}{v:g}" for k, v in (("thetaerr", a.theta_error_scale), ("plxerr", a.parallax_error_scale))
                  if v != 1.0)
    tag += "_nomaglim" if a.no_magnitude_limits else ""
    tag = f"_{a.reddening_prior_error}_{a.parallax_residual}" + ("_tweedie" if a.theta_denoise == "tweedie" else "") + ("_scale" if a.scale_step else "") + tag \
        + (f"_epochs{a.epochs}" if a.epochs != 25 else "") + (f"_lrdecay{a.lr_decay:g}" if a.lr_decay != 0.2 else "") + (f"_n{a.n}" if a.n != 200000 else "") + a.tag
    out = a.out or str(REPO / "benchmarks" / "results" / f"truth_recovery{tag}.json")
    print(json.dumps(run(a.n, a.seed, a.iterations, a.epochs, a.batch_size, out, a.theta_error_scale, a.save_model,
                         a.parallax_error_scale, a.reddening_prior_error, a.parallax_residual, a.theta_denoise, a.scale_step, a.lr_decay,
                         a.mock_cache, json.loads(a.config) if a.config else None, a.init_truth,
                         not a.no_magnitude_limits, a.save_iterates, a.init), indent=1))


if __name__ == "__main__":
    main()
