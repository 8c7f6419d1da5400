"""The noise floor of truth recovery: how far from the truth must a trained model be, from the photometric,
parallax, θ and reddening-prior noise of its training stars alone?

Usage::

    python benchmarks/truth_recovery_noise.py --mock-cache benchmarks/results/cache/mock200k_s1.parquet --n 50000 \
        --config '{"latent_theta": "profile", "gn_steps": 1}'

The joint objective F(w, z) of the Gauss–Newton steps (photoinfer/train/gauss_newton.py, Eq. GN1) is −2 ln L
of the training stars; with every star's latent (θ, E) eliminated, its Gauss–Newton matrix S (the Schur
complement, summed over *all* training stars) is the Fisher information of the ~1,700 network weights w.
An estimator at the optimum of F scatters about it with covariance ≈ (S + R)⁻¹ (R: the regularization's
curvature, acting as a prior; the sandwich (S + R)⁻¹ S (S + R)⁻¹ is not positive in float32-accumulated S and
is not reported).  Propagated through the
network's Jacobian ∂(A·M)/∂w at the held-out stars' true θ inside the region of truth_recovery.py, it gives
the expected rms of ΔA·M per component (M_G, colours) and of R_fit/R_true − 1 per band from noise alone —
a floor no estimator of this network on these stars can beat without bias, to compare with the measured
drift of a run started at the truth.

The training stars, their whitening and latent (θ, E) are those the training loop hands to its first
Gauss–Newton call (:func:`captured`: ``train(..., init=truth)`` with two iterations of one epoch, the steps
skipped); S is evaluated at the truth's weights.  Writes ``benchmarks/results/truth_recovery_noise_n<N>.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def captured(cat, cfg, truth, measured=False, ideal_parallax=False, prior_from_truth=False, call=1):
    """The arguments of the training loop's ``call``-th ``gauss_newton_steps`` call (z, ŷ, W, z̃, Λ_x, 1/σ²_E₀,
    keywords), the population prior then (None without one) and a function of a seed that refits that prior
    with it (same stars), from ``train(..., init=truth)`` (the calls
    themselves skipped; ``cfg.iterations`` must be ≥ call + 1).  The first call's y₁ is linearized about the
    distances of the measured θ̂, the later calls' about those of the previous joint fit (as in most of training).
    With ``measured``, z̃ and Λ_x are the θ measurement's alone (not combined with the population prior).  With
    ``ideal_parallax`` the parallax residual's pseudo-observation μ̃ is replaced by μ_true + σ_μ̃ ε (an exactly
    linear, unbiased observation of the true distance modulus with the same error; ε seeded; ``"true"``: that error
    evaluated at the true μ instead of μ_lin, so that it does not depend on the star's photometric and θ noise);
    with ``prior_from_truth`` the population mixture is fitted to the members' true θ instead of deconvolved from θ̂
    (``"all"``: to the true θ of every star of the mock, usable or not — the population before the selection;
    ``"exact"``: to 300,000 fresh draws of the mock's θ distribution, so that only the mixture's shape differs from it)."""
    from dataclasses import replace

    from photoinfer.train import loop, parallax, profile
    box = {}
    real = (profile.with_population_prior, loop._population_prior, parallax.pseudo_distance_modulus)
    mu_true = np.asarray(cat.extra["true_mu"], np.float64)
    eps = np.random.default_rng(12345).normal(size=len(cat))

    def ideal(parallax_, parallax_err, mu_lin):
        mu_t, sig = real[2](parallax_, parallax_err, mu_lin)
        if ideal_parallax == "true":  # σ_μ̃ at the true μ: independent of the star's other noise
            sig = np.where(np.isfinite(sig), real[2](parallax_, parallax_err, mu_true)[1], sig)
        return np.where(np.isfinite(mu_t), mu_true + sig * eps, mu_t), sig


    def population(data, select, state, cfg_):
        if prior_from_truth:  # the mixture fitted to the members' true θ (errors 10⁻³ std): the right p(θ)
            from photoinfer.model import network
            from photoinfer.train.population import fit_population
            if prior_from_truth == "exact":  # the mock's own θ distribution: 300,000 fresh draws of it
                from photoinfer.simulate import sample_theta_validity
                th = sample_theta_validity(np.random.default_rng(777), truth, 300000)
            else:
                th = np.column_stack([cat.extra[k] for k in ("true_teff", "true_logg", "true_feh")])
                th = th if prior_from_truth == "all" else th[select]
            x = np.asarray(network.standardize(th, state.theta_med, state.theta_std), np.float64)
            box["prior"] = fit_population(x, np.broadcast_to(1e-6 * np.eye(3), (len(x), 3, 3)), cfg_.prior_components,
                                          seed=cfg_.seed, max_stars=max(cfg_.prior_stars, len(x)))
            box["prior"][1]["seconds"] = 0.0
        else:
            box["prior"] = real[1](data, select, state, cfg_)
            box["refit"] = lambda seed: real[1](data, select, state, replace(cfg_, seed=seed))[0]
        return box["prior"]
    if measured:
        profile.with_population_prior = lambda aux, prior, x, **k: aux
    loop._population_prior = population
    if ideal_parallax:
        parallax.pseudo_distance_modulus = ideal
    try:
        _, args, kw = gn_call(cat, cfg, truth, call)
    finally:
        profile.with_population_prior, loop._population_prior, parallax.pseudo_distance_modulus = real
    return (*args, kw), box["prior"][0] if box.get("prior") is not None else None, box.get("refit")


def gn_call(cat, cfg, init, call=1):
    """(params, the six arrays, the keywords) of the training loop's ``call``-th ``gauss_newton_steps`` call in
    ``train(cat, cfg, init=init)`` (``cfg.iterations`` ≥ call + 1; the calls themselves skipped): the network after
    that iteration's epochs and scale step, and the objective the call minimizes (the per-star latents after
    ``call`` joint fits, each warm-started at the last)."""
    from photoinfer.train import gauss_newton, train
    box = {}
    real = gauss_newton.gauss_newton_steps

    def grab(params, *args, **kw):
        box["n"] = box.get("n", 0) + 1
        if box["n"] == call:
            box["call"] = (params, args, kw)
        return params, np.asarray(args[0]), []
    gauss_newton.gauss_newton_steps = grab
    try:
        train(cat, cfg, init=init)
    finally:
        gauss_newton.gauss_newton_steps = real
    return box["call"]


def from_truth(mock_cache, n, config, seed=1, **options):
    """(truth, the mock's first ``n`` stars, the TrainConfig, :func:`captured`'s two results) for ``config`` (a dict of
    TrainConfig fields over the truth-recovery defaults; 1 + ``call`` iterations of one epoch, started at the truth)."""
    import truth_recovery as tr

    from photoinfer.io.catalogs import read_catalog
    from photoinfer.io.models import load_model
    from photoinfer.train import TrainConfig
    truth = load_model(tr.SHARED / "green2020_nn_model.h5")
    cat = read_catalog(mock_cache)
    cat = cat.subset(np.arange(n)) if len(cat) > n else cat
    cfg = TrainConfig(**{"parallax_residual": "parallax", "scale_step": True, **config,
                         "iterations": 1 + options.get("call", 1), "epochs": 1, "seed": seed})
    return (truth, cat, cfg) + captured(cat, cfg, truth, **options)


def fisher(params, z, W, Lam_x, ivar, n_bands, l2, l1, batch_size=1024):
    """(S, R): the Gauss–Newton matrix of F over all the given stars and the regularization's curvature, (P, P)
    float64 each (Eq. GN1)."""
    from photoinfer.train.gauss_newton import _reg_terms, curvature
    n = len(z)
    S = sum(np.asarray(curvature(params, *(np.asarray(a)[i:i + batch_size] for a in (z, W, Lam_x, ivar))), np.float64)
            for i in range(0, n, batch_size))
    _, rc = _reg_terms(params, l2, l1, float(n * n_bands))
    return S, np.diag(np.asarray(rc, np.float64))


def propagated_rms(params, theta_med, theta_std, theta, cov, batch_size=256):
    """Expected rms over ``theta`` (n, 3) of ΔA·M (B,) [mag] and of ΔR/R (B,) for weights scattered by the
    (P, P) covariance ``cov`` (the quadratic forms in float64)."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from photoinfer.model import network
    wv, unravel = ravel_pytree(params)

    @jax.jit
    def jacobians(th):
        x = network.standardize(th, theta_med, theta_std)
        ja = jax.vmap(lambda xx: jax.jacrev(lambda w: network.colour_basis_absolute(unravel(w), xx))(wv))(x)
        jr = jax.vmap(lambda xx: jax.jacrev(lambda w: jnp.log(network.extinction_vector(unravel(w), xx)))(wv))(x)
        return ja, jr  # (b, B, P) each
    sums = 0.0
    for i in range(0, len(theta), batch_size):
        ja, jr = (np.asarray(j, np.float64) for j in jacobians(jnp.asarray(theta[i:i + batch_size], jnp.float32)))
        sums = sums + np.array([np.einsum("nbp,nbp->b", j @ cov, j) for j in (ja, jr)])  # (2, B)
    return np.sqrt(sums / len(theta))


def main(argv=None):
    import truth_recovery as tr

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mock-cache", required=True, help="a mock written by truth_recovery.py --mock-cache")
    p.add_argument("--n", type=int, default=50000, help="its first N stars (default 50000)")
    p.add_argument("--seed", type=int, default=1, help="training seed (the split; default 1)")
    p.add_argument("--config", default='{"latent_theta": "profile", "gn_steps": 1}', metavar="JSON",
                   help="TrainConfig fields (default: the profile estimator; gn_steps must be > 0)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    truth, cat, cfg, (z, y, W, z_tilde, Lam_x, ivar, kw), _, _ = from_truth(a.mock_cache, a.n, json.loads(a.config), a.seed)
    S, R = fisher(truth.params, z, W, Lam_x, ivar, kw["n_bands"], cfg.l2_hidden, cfg.l1_extinction)
    cov = np.linalg.inv(S + R)
    # the held-out stars' true θ inside the region (as truth_recovery.py)
    from photoinfer.catalog import TRAINING_UNUSABLE
    from photoinfer.train import schedule
    usable = cat.usable(TRAINING_UNUSABLE)
    th_true = np.column_stack([cat.extra[k] for k in ("true_teff", "true_logg", "true_feh")])
    held = (usable & (schedule.split_labels(len(cat), a.seed, cfg.split) != 0)
            & tr.in_region(th_true, tr.region_mask(th_true, usable)[0]))
    bands = list(truth.bands.names)
    comp = ["M_G"] + [f"{b}-G" for b in bands[1:]]
    res = {"command": "python benchmarks/truth_recovery_noise.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "n": a.n, "n_training_stars": int(len(z)), "n_parameters": int(len(S)), "held_out_stars_in_region": int(held.sum())}
    am, rr = propagated_rms(truth.params, truth.theta_med, truth.theta_std, th_true[held], cov)
    res["inverse_fisher_with_regularization"] = {"AM_rms_mag_stars": dict(zip(comp, am.tolist())),
                                                 "R_rel_rms_stars": dict(zip(bands, rr.tolist()))}
    out = a.out or str(tr.REPO / "benchmarks" / "results" / f"truth_recovery_noise_n{a.n}.json")
    Path(out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
