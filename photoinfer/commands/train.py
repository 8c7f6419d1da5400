"""``photoinfer train``: train a stellar model on a catalog of stars with spectroscopy (METHOD §5)."""
from __future__ import annotations

HELP = "train a stellar model M(θ), R(θ) on stars with spectroscopic θ, photometry and parallaxes"
DESCRIPTION = """\
Train the network of Green et al. (2021) on a catalog of stars with measured θ = (Teff,
logg, [M/H]), multi-band photometry, parallaxes and a reddening prior, following the
paper's recipe: a seeded 70/20/10 train/validation/test split; ITERATIONS iterations of
EPOCHS epochs of Adam (learning rate 1e-3·exp(-0.2k) in iteration k); after every
iteration each star's reddening is updated, the covariances are rebuilt with the model's
Jacobian, and stars whose reduced chi^2 exceeds a threshold (100 falling to 5) are left out.

Writes MODEL (a photoinfer model file, with the region of validity of its training
stars), MODEL.report.json (losses, chi^2/dof per split, z-scores, extinction, validity)
and MODEL.<figure>.png (loss curves, z-score trends, colour-magnitude diagrams, dR/R,
validity maps).  A checkpoint is written to MODEL.checkpoint/ after every iteration:
run the same command again after an interruption and it continues where it stopped
(with more --iterations it trains only the missing ones).  --restart ignores it.

--parallax-residual parallax replaces the paper's y1 = G - mu_hat (mu_hat = 10 - 5 log10 parallax,
only stars with sigma_parallax/parallax <= 0.2) by the parallax residual (parallax - model
parallax), in magnitude units, for every star with a parallax (any S/N, negative included),
relinearized about the current model after every iteration: no selection on the observed
parallax, no log bias (docs/training.md).  The default, magnitude, is the paper's.
--distance-prior bayestar (with --parallax-residual parallax and --latent-theta marginal) adds the
distribution of distances along each star's sightline (that Galactic model) to its likelihood:
where theta is uncertain, at a given apparent magnitude the distant, luminous stars are the more
numerous; the prior's normalization keeps the selection on magnitude out (docs/training.md).
--parallax-integral exact (with --latent-theta marginal) integrates each star's parallax likelihood and
distance prior exactly over its distance instead of in the Laplace approximation, whose Gaussian misses
the parallax's skew in distance and makes M_G too faint where theta leaves the distance uncertain (the
subgiants; docs/training.md, Eq. P4).  On the 200,000-star mock it changed M_G by less than the
seed-to-seed scatter (0.0247 -> 0.0230 and 0.0240 -> 0.0245 mag) at 25 % more training time.

--latent-theta profile fits every star's theta and E with the network (the joint objective:
photometry, theta measurement and reddening prior), each step's loss having them profiled out
with the network's Jacobian live: removes the errors-in-variables bias of regressing on the
measured theta (docs/training.md).  --latent-theta marginal: the same, with every star's theta
integrated against the training stars' own population density of theta (deconvolved from their
errors) instead of profiled (consistent in the theta errors; see docs/benchmarks.md).  --latent-theta fit: the profile's
objective by plain alternation.
--gn-steps N adds N joint Gauss-Newton steps on the network and every training star's theta and E
after each iteration's epochs (with --latent-theta profile or marginal): the best from-scratch
recovery measured (docs/benchmarks.md).
--regularization S scales the paper's weight penalties; the loss weighs them per star, so they pull as
hard on 10^6 stars as on 10^4.  Lower them only with --gn-steps (Adam alone then leaves R unconverged).
On two 200,000-star mocks, from scratch, the last example recovered M_G to 0.027 and 0.023 mag and
every colour to 0.004 mag (0.056 and 0.009 mag with S = 1); with this version's parallax weight and
outlier cut, 0.026 on the first (docs/benchmarks.md, session 11).
--polish-steps N adds N full-batch L-BFGS steps after the epochs of the last
--polish-iterations iterations (not with --latent-theta profile or marginal).

Small catalogs need small batches: with B stars per batch there are 0.7 N / B steps per
epoch; 8,000 stars at --batch-size 64 converge in the default 20 x 25 schedule.

examples:
  photoinfer train --catalog stars.parquet --out my_model.h5
  photoinfer train --catalog green2020_sample_8k.h5 --out m.h5 --batch-size 64 --seed 1
  photoinfer train --catalog more_stars.parquet --out tuned.h5 --init my_model.h5 --iterations 5
  photoinfer train --catalog mock.parquet --out m.h5 --latent-theta profile --parallax-residual parallax --scale-step
  photoinfer train --catalog mock.parquet --out m.h5 --latent-theta profile --gn-steps 5 --parallax-residual parallax --scale-step
  # the best measured on 200,000 stars (docs/benchmarks.md):
  photoinfer train --catalog mock.parquet --out m.h5 --latent-theta marginal --gn-steps 5 --distance-prior bayestar --parallax-residual parallax --scale-step --regularization 0.1
"""


def add_arguments(p) -> None:
    p.add_argument("--catalog", required=True, metavar="PATH",
                   help="training catalog: .parquet, .fits, .csv (columns: docs/catalogs.md) or the released .h5 sample")
    p.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.h5)")
    p.add_argument("--iterations", type=int, default=20, metavar="K", help="outer iterations (default 20)")
    p.add_argument("--epochs", type=int, default=25, metavar="N", help="epochs per iteration (default 25)")
    p.add_argument("--batch-size", type=int, default=1024, metavar="B", help="stars per Adam step (default 1024)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the split, weights and shuffles (default 0)")
    p.add_argument("--parallax-residual", choices=("magnitude", "parallax"), default="magnitude",
                   help="how the parallax enters y1: magnitude (the paper: mu_hat = 10 - 5 log10 parallax, stars with "
                        "sigma/parallax <= 0.2) or parallax (the parallax residual for every star with a parallax, "
                        "linearized about the current model; see docs/training.md).  Default magnitude")
    p.add_argument("--theta-denoise", choices=("none", "tweedie"), default="none",
                   help="feed the network the measured theta (none, the paper; default) or its posterior mean by "
                        "Tweedie's formula, theta + C_theta grad ln p(theta) with p the KDE of the training stars' "
                        "theta (tweedie; removes the first-order errors-in-variables bias; see docs/training.md)")
    p.add_argument("--scale-step", action="store_true",
                   help="after every iteration, set the overall scale of R (every E scaled inversely, which the "
                        "photometry cannot see) to its maximum likelihood under the reddening priors (see "
                        "docs/training.md; default off, the paper)")
    p.add_argument("--latent-theta", choices=("none", "fit", "profile", "marginal"), default="none",
                   help="none (the paper; default): the network is fed the measured theta.  profile: every star's "
                        "theta and E are fitted with the network, profiled out of each step's loss with the "
                        "network's Jacobian live (removes most of the errors-in-variables bias); marginal: "
                        "theta and E integrated (Laplace) against the training stars' deconvolved population "
                        "density of theta (consistent in the theta errors); fit: the profile's objective by alternation (slow to "
                        "converge; see docs/training.md)")
    p.add_argument("--distance-prior", choices=("none", "bayestar", "brutus"), default="none",
                   help="with --parallax-residual parallax and --latent-theta marginal: the Galactic model whose distribution of distances "
                        "along each sightline joins every star's likelihood (default none; see docs/training.md)")
    p.add_argument("--parallax-integral", choices=("laplace", "exact"), default="laplace",
                   help="with --latent-theta marginal and --parallax-residual parallax: each star's parallax likelihood "
                        "and distance prior in the Laplace approximation (default) or integrated exactly over its "
                        "distance (removes the Laplace approximation's faint bias of M_G; see docs/training.md)")
    p.add_argument("--gn-steps", type=int, default=0, metavar="N",
                   help="with --latent-theta profile or marginal: N joint Gauss-Newton steps on the network and "
                        "every training star's theta and E after each iteration's epochs (from iteration 1; "
                        "default 0: none; see docs/training.md)")
    p.add_argument("--regularization", type=float, default=1.0, metavar="S",
                   help="multiply the paper's regularization (L2 1e-4 on the hidden kernels, L1 1e-2 on the extinction "
                        "kernel) by S (default 1: the paper's; with --gn-steps on 10^5 stars or more, 0.1: see above)")
    p.add_argument("--polish-steps", type=int, default=0, metavar="N",
                   help="full-batch L-BFGS steps after the epochs of each of the last --polish-iterations "
                        "iterations (default 0: none; not with --latent-theta profile or marginal)")
    p.add_argument("--polish-iterations", type=int, default=1, metavar="K",
                   help="how many of the last iterations get --polish-steps (default 1)")
    p.add_argument("--init", metavar="MODEL", default=None,
                   help="start from this model's weights and θ normalization (fine-tuning); a model file, the "
                        "released Keras .h5, or 'green2020'")
    p.add_argument("--compare", metavar="MODEL", default=None,
                   help="also report this model's chi^2/dof on the same test stars (e.g. the released model)")
    p.add_argument("--restart", action="store_true", help="ignore an existing MODEL.checkpoint/ and start over")
    p.add_argument("--no-report", action="store_true", help="write only the model (no report JSON or figures)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def checkpoint_dir(out):
    from pathlib import Path
    out = Path(out)
    return out.with_name(out.name + ".checkpoint")


def run(args) -> int:
    import json
    from pathlib import Path

    from tqdm import tqdm

    from ..io.catalogs import read_catalog
    from ..io.checkpoints import catalog_fingerprint, check_compatible, load_checkpoint, save_checkpoint
    from ..io.models import load_model, save_model
    from ..train import train
    from . import log, print_json

    out = Path(args.out)
    if not out.parent.exists():
        raise FileNotFoundError(f"the directory of --out {out} does not exist")
    cat = read_catalog(args.catalog)
    log.info("catalog: %s, %d stars", args.catalog, len(cat))
    config = config_from_args(args)
    init = load_model(args.init) if args.init else None
    fingerprint = catalog_fingerprint(cat)
    ckdir = checkpoint_dir(out)
    resume = None
    if ckdir.exists() and not args.restart:
        resume, meta = load_checkpoint(ckdir)
        check_compatible(meta, config, fingerprint, ckdir)
        if meta.get("init") != args.init:
            raise ValueError(f"the checkpoint {ckdir} started from --init {meta.get('init')}, this run from "
                             f"{args.init}; use the same, or --restart")
        log.info("resuming from %s after iteration %d", ckdir, resume.iteration)
    done = resume.iteration if resume is not None else 0
    bar = tqdm(total=config.iterations * config.epochs, initial=min(done, config.iterations) * config.epochs,
               disable=args.no_progress or args.quiet, unit="epoch", dynamic_ncols=True)

    def callback(event, state, rec):
        if event == "epoch":
            bar.update(1)
            bar.set_postfix_str(f"it {rec['iteration']} ep {rec['epoch']} loss {rec['train_loss']:.4g} "
                                f"val {rec['val_loss']:.4g}")
        else:
            save_checkpoint(ckdir, state, config, fingerprint, {"init": args.init, "catalog_path": str(args.catalog)})
            log.debug("checkpoint after iteration %d: %s", rec["iteration"], ckdir)

    try:
        model, history = train(cat, config, init=init, resume=resume, callback=callback)
    finally:
        bar.close()
    model = model.replace(provenance={**model.provenance, "catalog_path": str(args.catalog), "command":
                                      "photoinfer train " + " ".join(_argv(args))})
    save_model(model, out)
    log.info("model written to %s", out)
    summary = {"model": str(out), "final_train_loss": model.provenance["final_train_loss"],
               "final_val_loss": model.provenance["final_val_loss"], "split": model.provenance["split"],
               "seconds": history.timings["total_seconds"]}
    if not args.no_report:
        from ..plots import save_training_figures
        from ..train.report import build_report
        ref = load_model(args.compare) if args.compare else None
        report, figs = build_report(model, history, cat, ref, args.compare or "")
        rpath = out.with_name(out.name + ".report.json")
        tmp = rpath.with_name(rpath.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1, default=_default))
        tmp.replace(rpath)
        pngs = save_training_figures(figs, out)
        log.info("report written to %s and %d figures (%s)", rpath, len(pngs), ", ".join(p.name for p in pngs))
        summary["test_chi2_per_dof"] = report["chi2_per_dof"]["test"]
        if "reference" in report:
            summary["reference_test_chi2_per_dof"] = report["reference"]["test_chi2_per_dof"]
    print_json(summary)
    return 0


def config_from_args(args):
    """The :class:`~photoinfer.train.TrainConfig` of the parsed options."""
    from ..train import TrainConfig
    return TrainConfig(iterations=args.iterations, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                       parallax_residual=args.parallax_residual, distance_prior=args.distance_prior,
                       parallax_integral=args.parallax_integral, theta_denoise=args.theta_denoise,
                       scale_step=args.scale_step, latent_theta=args.latent_theta,
                       polish_steps=args.polish_steps, polish_iterations=args.polish_iterations,
                       gn_steps=args.gn_steps, l2_hidden=TrainConfig.l2_hidden * args.regularization,
                       l1_extinction=TrainConfig.l1_extinction * args.regularization)


def _argv(args):
    parts = [f"--catalog {args.catalog}", f"--out {args.out}", f"--iterations {args.iterations}",
             f"--epochs {args.epochs}", f"--batch-size {args.batch_size}", f"--seed {args.seed}"]
    if args.parallax_residual != "magnitude":
        parts.append(f"--parallax-residual {args.parallax_residual}")
    if args.distance_prior != "none":
        parts.append(f"--distance-prior {args.distance_prior}")
    if args.parallax_integral != "laplace":
        parts.append(f"--parallax-integral {args.parallax_integral}")
    if args.theta_denoise != "none":
        parts.append(f"--theta-denoise {args.theta_denoise}")
    if args.scale_step:
        parts.append("--scale-step")
    if args.latent_theta != "none":
        parts.append(f"--latent-theta {args.latent_theta}")
    if args.gn_steps:
        parts.append(f"--gn-steps {args.gn_steps}")
    if args.polish_steps:
        parts.append(f"--polish-steps {args.polish_steps} --polish-iterations {args.polish_iterations}")
    if args.init:
        parts.append(f"--init {args.init}")
    return parts


def _default(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
