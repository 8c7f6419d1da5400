"""Which bias does a training objective have?  One Gauss–Newton step from the truth, per objective.

Usage::

    python benchmarks/truth_recovery_onestep.py --mock-cache benchmarks/results/cache/mock200k_s1.parquet \
        --n 50000 --nodes 3 --objectives profile laplace gh3 --out benchmarks/results/truth_recovery_onestep_s1.json
    python benchmarks/truth_recovery_onestep.py --pair A.npz B.npz      # two mocks: bias against noise

An estimator ŵ = argmin Σ_i F_i(w) started at the truth w₀ moves to first order by
Δw = −½ (S + R + λ diag(S + R))⁻¹ ∇_w [Σ_i F_i + N_B reg](w₀) (S: the Fisher matrix of truth_recovery_noise.py,
R: the regularization's curvature, λ = 10⁻³ the first damping of the Gauss–Newton steps).  Over noise
realizations Δw averages to the estimator's bias; on one mock it is bias + noise.  Two independent mocks (``--pair``)
separate them: the rms of their mean ("shared") holds the bias and half the noise variance, the rms of their
difference / √2 is one mock's noise, and √(shared² − noise²/2) estimates the bias.  The step is linear in the
gradient, so the regularization's own step (``regularization alone``) and the normalization's (``normalization
alone``, with a distance prior) are reported too, and ``(data)`` in ``--pair`` is a step without the regularization's.
ΔM_G is evaluated at the true θ of stars none of the mocks trained on (as truth_recovery_compare.py: ``--eval-stars``
of ``--eval-mock``, inside the region of truth_recovery.py) and saved per objective in
``benchmarks/results/cache/<name of the JSON>.npz`` (not in git: 0.5 MB each).

Objectives (per star; φ(x, E) = ‖W(ŷ − A M(x) − E A R(x))‖² + (x − x̂)ᵀΛ_x(x − x̂) + (E − E₀)²/σ²_E₀, x standardized θ):

- ``profile``: min over (x, E) of φ (``latent_theta="profile"``; the profiled loss of photoinfer/train/profile.py
  about the mode);
- ``laplace``: min over (x, E) of φ − 2 ln p(x) + ln det(J_zᵀJ_z + Λ), the population prior p (Eq. X0, fitted
  by the training loop) in Λ through its majorizer (Eq. X3): the objective of ``latent_theta="marginal"`` before
  session 11 (the parallax's weight in ln det frozen at μ_lin; training now takes it at the current μ, Eq. P3);
- ``gh<n>``: the marginal −2 ln ∫∫ e^{−φ/2} p(x) dE dx itself, E in closed form (the model is linear in E) and x
  by an n³-node Gauss–Hermite rule on the axes of the Gauss–Newton Laplace posterior of x (n = 1: Laplace).

The inputs are those of the training loop's first Gauss–Newton call (``train(..., init=truth)``, the call skipped;
``latent_theta="marginal"`` with ``--config`` added).  Counterfactuals: ``--config '{"distance_prior":
"bayestar"}'`` (y₁ with the distances' prior, Eq. P1, and Σ_i 2 ln Z_i, Eq. P2, in every objective);
``--ideal-parallax`` (the parallax residual's μ̃ replaced by an exactly linear, unbiased observation of the true μ);
``--mu-range LO HI`` (the distance prior cut to the mock's range); ``--prior-from-truth [members|all|exact]`` (p
fitted to the members' true θ; ``all``: every mock star's, before the selection; ``exact``: 300,000 fresh draws of
the mock's θ distribution).  A mock without magnitude selection:
``truth_recovery.py --no-magnitude-limits --mock-cache FILE``.  Writes ``--out`` (default
``benchmarks/results/truth_recovery_onestep_n<N>.json``) and prints it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def objectives(params, prior, nodes_1d):
    """Per-star objective functions of the network weights (flat) for one star's arrays, by name."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from photoinfer import linalg as la
    from photoinfer.model import network
    from photoinfer.model.network import model_y
    from photoinfer.train.gauss_newton import joint_objective_terms, log_det_h
    from photoinfer.train.population import (
        combine_with_measurement,
        neg2_log_density,
        quadratic_majorizer,
    )
    from photoinfer.train.profile import star_profile_loss
    w0, unravel = ravel_pytree(params)

    def parts(wv, x):
        p = unravel(wv)
        return network.colour_basis_absolute(p, x), network.to_colour_basis(network.extinction_vector(p, x))

    def phi4(wv, z, y, W, xh, L, E0, iv, prior_on=True):
        chi2, q = joint_objective_terms(unravel(wv), z, y, W, jnp.concatenate([xh, E0[None]]), L, iv)
        return chi2 + q + (neg2_log_density(prior, z[:3]) if prior_on else 0.0)

    def newton(f, z0, n_steps=8):
        def step(z, _):
            g, H = jax.grad(f)(z), jax.hessian(f)(z)
            H = H + 1e-6 * jnp.eye(len(z), dtype=z.dtype)
            dz = -la.solve_spd(H + 1e-3 * jnp.diag(jnp.diag(H)), g)
            z2 = z + dz
            ok = jnp.isfinite(f(z2)) & (f(z2) < f(z))
            return jnp.where(ok, z2, z), None
        return jax.lax.scan(step, z0, None, length=n_steps)[0]

    def profile(wv, z, y, W, xh, L, E0, iv):
        """The profiled loss of photoinfer/train/profile.py about the mode z* (its gradient in w is that of
        min_z φ to first order, also where z* is not quite stationary)."""
        zs = jax.lax.stop_gradient(newton(lambda zz: phi4(jax.lax.stop_gradient(wv), zz, y, W, xh, L, E0, iv, False), z))
        return star_profile_loss(unravel(wv), zs[:3], zs[3], xh, L, E0, iv, y, W)[0]

    def laplace(wv, z, y, W, xh, L, E0, iv):
        """As ``latent_theta="marginal"``: the profiled loss + ln det H with the measurement and the prior's
        majorizer combined (Eq. X3) at the mode of φ + ln det H."""
        ws = jax.lax.stop_gradient(wv)

        def logdet(zz, Lp):
            return log_det_h(unravel(ws), zz, W, L + Lp, iv)
        Lp0 = jax.lax.stop_gradient(quadratic_majorizer(prior, z[:3])[0])
        zs = jax.lax.stop_gradient(newton(lambda zz: phi4(ws, zz, y, W, xh, L, E0, iv) + logdet(zz, Lp0), z))
        xt, Lt = combine_with_measurement(prior, zs[:3], xh, L)
        return star_profile_loss(unravel(wv), zs[:3], zs[3], xt, Lt, E0, iv, y, W, log_det=True)[0]

    def g_x(wv, x, y, W, xh, L, E0, iv):
        """−2 ln ∫ e^{−φ/2} dE + ln 2π (E in closed form), as a function of x."""
        a, c = parts(wv, x)
        u, v = W @ (y - a), W @ c
        h = v @ v + iv
        Eh = (v @ u + iv * E0) / h
        d = x - xh
        return u @ u + iv * E0 ** 2 - h * Eh ** 2 + jnp.log(h) + d @ L @ d + neg2_log_density(prior, x)

    gh = {}
    for n in nodes_1d:
        t, wt = np.polynomial.hermite_e.hermegauss(n)
        U = np.stack(np.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)
        lw = np.log(np.prod(np.stack(np.meshgrid(wt, wt, wt, indexing="ij"), -1).reshape(-1, 3), 1)) + 0.5 * (U ** 2).sum(1)
        gh[n] = (jnp.asarray(U, jnp.float32), jnp.asarray(lw, jnp.float32))

    def proposal_precision(wv, x, y, W, L, E0, iv):
        """The Gauss–Newton precision of x at x (E eliminated): the Schur complement of J_zᵀJ_z + Λ (with the
        prior's majorizer), positive definite where the exact Hessian of g need not be."""
        a, c = parts(wv, x)
        u, v = W @ (y - a), W @ c
        Eh = (v @ u + iv * E0) / (v @ v + iv)
        z = jnp.concatenate([x, Eh[None]])
        Jz = jax.jacfwd(lambda q: W @ model_y(unravel(wv), q[:3], q[3]))(z)
        A = Jz.T @ Jz
        A = A.at[:3, :3].add(L + quadratic_majorizer(prior, x)[0]).at[3, 3].add(iv)
        return A[:3, :3] - jnp.outer(A[:3, 3], A[3, :3]) / A[3, 3]

    def cubature(n):
        U, lw = gh[n]

        def F(wv, z, y, W, xh, L, E0, iv):
            ws = jax.lax.stop_gradient(wv)
            f = lambda x: g_x(ws, x, y, W, xh, L, E0, iv)  # noqa: E731
            xs = newton(f, z[:3])
            H = jax.lax.stop_gradient(proposal_precision(ws, xs, y, W, L, E0, iv))
            Lc = la.cholesky(la.inv_spd(H))  # Σ = H⁻¹ = Lc Lcᵀ
            xk = jax.lax.stop_gradient(xs)[None] + U @ Lc.T
            vals = jax.vmap(lambda x: g_x(wv, x, y, W, xh, L, E0, iv))(xk)
            return -2.0 * (jax.scipy.special.logsumexp(lw - 0.5 * vals) + jnp.sum(jnp.log(jnp.diag(Lc))))
        return F

    fns = {"profile": profile, "laplace": laplace, **{f"gh{n}": cubature(n) for n in nodes_1d}}
    return w0, unravel, fns


def normalizer_noise(d):
    """rms over the stars of ΔM_G's Monte Carlo scatter in Σ 2 ln Z_i, from ``--normalizer-resample``'s steps in ``d``:
    "subsample" against the whole pool (exact there), "iid" and "qmc" (one draw set of p(θ) each, :func:`sample` and
    :func:`integration_draws`) as their standard deviation over the R draw sets, and "population" (``--population-resample``:
    p(θ) refitted under R seeds) as theirs."""
    out = {}
    for part in ("subsample", "iid", "qmc", "population"):
        v = np.array([x for k, x in d.items() if k.startswith("population refit " if part == "population"
                                                               else f"normalizer {part} ")])
        if len(v) > 1:
            dev = v if part == "subsample" else (v - v.mean(0)) * np.sqrt(len(v) / (len(v) - 1))
            out[part] = float(np.sqrt(np.mean(dev ** 2)))
    return out


def pair(path_a, path_b):
    """Two mocks' one-step ΔM_G (.npz written by this script, same ``--eval-stars``), per objective: their correlation,
    the rms of their mean ("shared"), of their difference / √2 ("noise", one mock's), and the shared part beyond
    noise, √(shared² − noise²/2) ("bias"); also with the regularization's own step taken out ("data")."""
    a, b = np.load(path_a), np.load(path_b)
    rms = lambda v: float(np.sqrt(np.mean(v ** 2)))  # noqa: E731
    out = {}
    for k in a.files:
        if k == "theta" or k not in b.files:
            continue
        parts = {"": (a[k], b[k])}
        if not k.endswith("alone") and "regularization alone" in a.files and "regularization alone" in b.files:
            parts[" (data)"] = (a[k] - a["regularization alone"], b[k] - b["regularization alone"])
        for part, (x, y) in parts.items():
            sh, no = rms((x + y) / 2), rms(x - y) / np.sqrt(2)
            out[k + part] = {"correlation": float(np.corrcoef(x, y)[0, 1]), "shared": sh, "noise": no,
                             "mean": float(np.mean((x + y) / 2)), "bias": float(np.sqrt(max(sh ** 2 - no ** 2 / 2, 0.0)))}
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--pair"]:
        print(json.dumps(pair(*argv[1:]), indent=1))
        return
    import jax
    import jax.numpy as jnp
    import truth_recovery as tr
    from truth_recovery_noise import fisher, from_truth

    from photoinfer.catalog import TRAINING_UNUSABLE
    from photoinfer.io.catalogs import read_catalog
    from photoinfer.io.models import load_model
    from photoinfer.model import network
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mock-cache", required=True, help="a mock written by truth_recovery.py --mock-cache")
    p.add_argument("--n", type=int, default=50000, help="its first N stars (default 50000)")
    p.add_argument("--seed", type=int, default=1, help="training seed (the split; default 1)")
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 3, 5], help="Gauss–Hermite nodes per axis")
    p.add_argument("--objectives", nargs="+", default=None, help="subset of profile, laplace, gh<n>")
    p.add_argument("--compare", nargs="*", default=[], help="saved models (truth_recovery.py --save-model)")
    p.add_argument("--eval-mock", default=str(Path(__file__).resolve().parent / "results" / "cache" / "mock200k_s1.parquet"),
                   help="the mock whose stars' true θ ΔM_G is evaluated at (default the seed-1 200k cache)")
    p.add_argument("--eval-stars", default="50000:90000", help="its slice START:STOP (default 50000:90000)")
    p.add_argument("--ideal-parallax", nargs="?", const="lin", choices=["lin", "true"], default=None,
                   help="replace the parallax residual's μ̃ by μ_true + σ_μ̃ ε (is the parallax treatment the bias?); "
                        "'true': σ_μ̃ evaluated at the true μ, not at μ_lin (is its dependence on the star's noise?)")
    p.add_argument("--config", default="{}", metavar="JSON",
                   help='more TrainConfig fields, e.g. \'{"distance_prior": "bayestar"}\' (with it every objective has Σ 2 ln Z_i)')
    p.add_argument("--prior-from-truth", nargs="?", const="members", choices=["members", "all", "exact"], default=None,
                   help="fit the population mixture to the members' true θ (is the deconvolved p(θ) the bias?); "
                        "'all': to the true θ of every star of the mock, before the selection; 'exact': to 300,000 fresh draws "
                        "of the mock's θ distribution (with --config's prior_components)")
    p.add_argument("--mu-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="with a distance prior: the Galactic prior of training cut to LO ≤ μ ≤ HI mag with logistic edges "
                        "0.1 mag wide (the mock's own range, simulate.MU_RANGE; is the unbounded prior the bias?)")
    p.add_argument("--call", type=int, default=1,
                   help="capture the training loop's CALL-th Gauss–Newton call (default 1: y₁ linearized about the distances "
                        "of θ̂; 2: about those of the first joint fit, as in the rest of training)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--damping", type=float, default=1e-3,
                   help="λ of the step (S + R + λ diag(S + R))⁻¹ (the Gauss–Newton steps' first damping; default 1e-3)")
    p.add_argument("--normalizer-resample", type=int, default=0, metavar="R",
                   help="with a distance prior: the steps of R other random subsamples of --normalizer-subsample stars "
                        "(scaled to the pool) and of R other draw sets of p(θ), against the whole pool with the loop's draws "
                        "(the Monte Carlo noise of Σ 2 ln Z_i; give --config a normalizer_stars ≥ the pool)")
    p.add_argument("--population-resample", type=int, default=0, metavar="R",
                   help="the laplace objective's steps with p(θ) refitted under R other seeds (its EM's own scatter; "
                        "with a distance prior, the normalizer's points drawn from each refit)")
    p.add_argument("--normalizer-subsample", type=int, default=8192, help="the training's normalizer_stars (default 8192)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.mu_range is not None:  # every ln p(μ) of training (Eqs. P1, P2, P4) calls it at trace time
        from photoinfer.priors import galactic as gal
        uncut, (lo, hi) = gal.log_prior_mu, a.mu_range
        gal.log_prior_mu = lambda mu, l, b, params=gal.BAYESTAR: (
            uncut(mu, l, b, params) + jax.nn.log_sigmoid((hi - mu) / 0.1) + jax.nn.log_sigmoid((mu - lo) / 0.1))
    truth, cat, cfg, (z, y, W, z_tilde, Lam_x, ivar, kw), prior, refit = from_truth(
        a.mock_cache, a.n, {**json.loads(a.config), "latent_theta": "marginal", "gn_steps": 1}, a.seed, measured=True,
        ideal_parallax=a.ideal_parallax, prior_from_truth=a.prior_from_truth, call=a.call)
    n_bands = kw["n_bands"]
    w0, unravel, fns = objectives(truth.params, prior, a.nodes)
    names = a.objectives or list(fns)
    t0 = time.perf_counter()
    S, R = fisher(truth.params, z, W, Lam_x, ivar, n_bands, cfg.l2_hidden, cfg.l1_extinction)
    t_fisher = time.perf_counter() - t0
    reg_grad = jax.grad(lambda wv: len(z) * n_bands * network.regularization(unravel(wv), cfg.l2_hidden,
                                                                             cfg.l1_extinction))(w0)
    damped = S + R + a.damping * np.diag(np.diag(S + R))

    def step(g):
        return -0.5 * np.linalg.solve(damped, g)
    normalizer, z_grad = kw.get("normalizer"), 0.0
    if normalizer is not None:  # + weight · Σ 2 ln Z_i (Eq. P2 of photoinfer/train/parallax.py), in every objective
        from photoinfer.train.parallax import log_normalizer
        from photoinfer.train.population import integration_draws, sample
        zgd = jax.jit(jax.grad(lambda wv, dr, *c: 2.0 * jnp.sum(log_normalizer(unravel(wv), dr, *c, normalizer.galactic))))
        st, m = [np.asarray(q) for q in normalizer.stars()], len(normalizer.mag_ref)

        def z_gradient(idx, draws):
            """∇_w Σ_{i ∈ idx} 2 ln Z_i at w0 with the points ``draws`` (unweighted), float64."""
            return sum(np.asarray(zgd(w0, draws, *(jnp.asarray(q[idx[i:i + 2048]]) for q in st)), np.float64)
                       for i in range(0, len(idx), 2048))
        z_grad = normalizer.weight * z_gradient(np.arange(m), normalizer.draws)
    arrays = [np.asarray(v, np.float32) for v in (z, y, W, z_tilde[:, :3], Lam_x, z_tilde[:, 3], ivar)]

    def summed(f):
        """Σ over the training stars of the per-star objective f and of its gradient at w0 (float64)."""
        gb = jax.jit(lambda wv, *b: jax.value_and_grad(lambda ww: jnp.sum(jax.vmap(lambda *s: f(ww, *s))(*b)))(wv))
        tot, val = 0.0, 0.0
        for i in range(0, len(z), a.batch):
            v, g = gb(w0, *(jnp.asarray(x[i:i + a.batch]) for x in arrays))
            tot, val = tot + np.asarray(g, np.float64), val + float(v)
        return val, tot
    steps, timing, values = {}, {}, {}
    for name in names:
        t0 = time.perf_counter()
        values[name], g = summed(fns[name])
        timing[name] = time.perf_counter() - t0
        steps[name] = step(g + np.asarray(reg_grad, np.float64) + z_grad)
        print(name, f"{timing[name]:.0f} s", flush=True)
    for r in range(a.population_resample):  # p(θ) refitted with another seed: the objective and Z's points with it
        prior_r = refit(1000 + r)
        g = summed(objectives(truth.params, prior_r, a.nodes)[2]["laplace"])[1] + np.asarray(reg_grad, np.float64)
        if normalizer is not None:
            g = g + normalizer.weight * z_gradient(np.arange(m), jnp.asarray(integration_draws(prior_r, len(normalizer.draws),
                                                                                                 cfg.seed)))
        steps[f"population refit {r}"] = step(g)
        print("population refit", r, flush=True)
    steps["regularization alone"] = step(np.asarray(reg_grad, np.float64))
    if normalizer is not None:
        steps["normalization alone"] = step(z_grad)
    if a.normalizer_resample and normalizer is not None:  # Σ 2 ln Z_i's Monte Carlo noise (training: Eq. P2's estimate)
        rng = np.random.default_rng(2024)
        n_sub = min(a.normalizer_subsample, m)
        for r in range(a.normalizer_resample):
            idx = np.sort(rng.choice(m, n_sub, replace=False))
            steps[f"normalizer subsample {r}"] = step((m / n_sub) * z_gradient(idx, normalizer.draws) - z_grad)
            for name, draw in (("iid", sample), ("qmc", integration_draws)):
                g = z_gradient(np.arange(m), jnp.asarray(draw(prior, len(normalizer.draws), 1000 + r))) - z_grad
                steps[f"normalizer {name} {r}"] = step(g)
    # ΔM_G at the held-out stars' true θ in the region
    ev = read_catalog(a.eval_mock)  # the θ where ΔM_G is compared: as truth_recovery_compare.py
    lo, hi = (int(v) for v in a.eval_stars.split(":"))
    ev = ev.subset(np.arange(lo, min(hi, len(ev))))
    th = np.column_stack([ev.extra[k] for k in ("true_teff", "true_logg", "true_feh")])[ev.usable(TRAINING_UNUSABLE)]
    th = th[tr.in_region(th, tr.region_mask(th, np.ones(len(th), bool))[0])].astype(np.float32)
    x = jnp.asarray(network.standardize(th, truth.theta_med, truth.theta_std), jnp.float32)
    jmg = jax.jit(jax.vmap(lambda xx: jax.grad(lambda wv: network.colour_basis_absolute(unravel(wv), xx)[0])(w0)))
    J = np.concatenate([np.asarray(jmg(x[i:i + 2048]), np.float64) for i in range(0, len(x), 2048)])
    d = {k: J @ v for k, v in steps.items()}
    m0 = np.asarray(truth.predict_y(th, 0.0), float)[:, 0]
    for m in a.compare:
        d["model:" + Path(m).name] = np.asarray(load_model(m).predict_y(th, 0.0), float)[:, 0] - m0
    keys = [k for k in d if not k.startswith(("normalizer ", "population refit "))]  # (the resampled ones: in normalizer_noise_rms)
    res = {"command": "python benchmarks/truth_recovery_onestep.py " + " ".join(argv),
           "n": a.n, "n_training_stars": int(len(z)), "eval_stars": int(len(th)),
           "fisher_seconds": t_fisher, "seconds": timing, "objective_sum": values,
           "dM_G": {k: {"rms": float(np.sqrt(np.mean(v ** 2))), "mean": float(v.mean())} for k, v in d.items()},
           "normalizer_noise_rms": normalizer_noise(d),
           "normalizer_pool": int(len(normalizer.mag_ref)) if normalizer is not None else 0,
           "correlation": {f"{k1} | {k2}": float(np.corrcoef(d[k1], d[k2])[0, 1])
                           for i, k1 in enumerate(keys) for k2 in keys[i + 1:]},
           "difference_rms": {f"{k1} - {k2}": float(np.sqrt(np.mean((d[k1] - d[k2]) ** 2)))
                              for i, k1 in enumerate(keys) for k2 in keys[i + 1:]}}
    out = a.out or str(tr.REPO / "benchmarks" / "results" / f"truth_recovery_onestep_n{a.n}.json")
    Path(out).write_text(json.dumps(res, indent=1))
    cache = tr.REPO / "benchmarks" / "results" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(cache / (Path(out).stem + ".npz"), theta=th, **{k: v for k, v in d.items() if not k.startswith("model:")})
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
