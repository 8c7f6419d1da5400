"""Inference for photometry-only stars: the numpyro model, the batched per-star NUTS, outputs, CLI."""
from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, RELEASED_MODEL, seed

W, S = 40, 30          # tiny chains: the fast tests check plumbing, the slow ones statistics


@pytest.fixture(scope="module")
def prior(released_model):
    from photoinfer.infer.prior import build_prior
    return build_prior(released_model)


def _mock(model, rng, theta, mu, E, plx_err=0.05, err=0.03, parallax=True):
    from photoinfer.catalog import Catalog
    theta = np.atleast_2d(theta)
    n = len(theta)
    mag = np.asarray(model.predict_magnitudes(theta, mu, E), np.float64)
    e = np.full_like(mag, err)
    mag = mag + rng.normal(0, np.sqrt(e ** 2 + 0.02 ** 2))
    plx = 10 ** (2 - np.asarray(mu) / 5) + rng.normal(0, plx_err, n) if parallax else None
    return Catalog.from_arrays(mag, e, parallax=plx, parallax_err=np.full(n, plx_err) if parallax else None)


@pytest.fixture(scope="module")
def small_fit(released_model, prior):
    """3 stars (the last with one band only: not fit) in batches of 2 (a padded batch)."""
    from photoinfer.infer.fit import fit_catalog
    rng = np.random.default_rng(seed())
    cat = _mock(released_model, rng, [[5780, 4.44, 0.0], [4800, 2.5, -0.3], [6000, 4.2, -0.2]],
                np.array([9.0, 11.0, 10.0]), np.array([0.1, 0.3, 0.2]))
    cat.mag[2, 1:] = np.nan
    cat.mag_err[2, 1:] = np.nan
    cat.validate()
    return cat, fit_catalog(released_model, cat, prior=prior, num_warmup=W, num_samples=S, batch_size=2,
                            seed=seed())


def test_log_density_matches_hand_written(released_model, prior):
    from photoinfer.infer.model import log_density, model_arrays, star_inputs
    from photoinfer.priors import log_prior_mu_feh_sky
    rng = np.random.default_rng(seed())
    cat = _mock(released_model, rng, [5500, 4.3, -0.2], np.array([10.0]), np.array([0.2]))
    cat.mag[0, 3] = np.nan
    cat.validate()
    s = jax.tree_util.tree_map(lambda a: jnp.asarray(a[0]), star_inputs(cat))
    arrays = model_arrays(released_model)
    E_max = prior.E_max
    for z in rng.normal(0, 0.5, (3, 5)) + np.array([0, 0, 0, 10.0, -3.0]):
        theta = released_model.theta_med + released_model.theta_std * z[:3]
        mu, e = z[3], 1 / (1 + np.exp(-z[4]))
        E = E_max * e
        pred = np.asarray(released_model.predict_magnitudes(theta, mu, E), np.float64)
        obs = np.isfinite(cat.mag[0])
        var = cat.mag_err[0, obs] ** 2 + 0.02 ** 2
        ll = -0.5 * np.sum((cat.mag[0, obs] - pred[obs]) ** 2 / var + np.log(2 * np.pi * var))
        plx_var = cat.parallax_err[0] ** 2
        ll += -0.5 * ((cat.parallax[0] - 10 ** (2 - mu / 5)) ** 2 / plx_var + np.log(2 * np.pi * plx_var))
        lp = (float(log_prior_mu_feh_sky(theta[2], mu, prior.prior.params, prior.prior.metallicity))
              + float(prior.prior.stellar(theta)) - np.log(E_max))
        jac = np.log(E_max) + np.log(e) + np.log(1 - e)          # E = E_max·sigmoid(z)
        expected = ll + lp + jac
        got = float(log_density(jnp.asarray(z, jnp.float32), s, arrays, prior))
        # the sky prior is tabulated (bilinear): agreement to ~1e-3 nats, float32 on ~1e2 nats
        assert got == pytest.approx(expected, abs=2e-2), (z, got, expected)


def test_prior_predictive_draws(released_model, prior):
    from numpyro.infer import Predictive
    from photoinfer.infer.model import catalog_model, model_arrays, star_inputs
    rng = np.random.default_rng(seed())
    cat = _mock(released_model, rng, [[5500, 4.3, -0.2]] * 2, np.array([10.0, 12.0]), np.array([0.2, 0.5]))
    s = jax.tree_util.tree_map(jnp.asarray, star_inputs(cat))
    arrays = model_arrays(released_model)
    n = 2000
    x = np.zeros((n, 2, 3), np.float32)
    latent = {"x": jnp.asarray(x), "mu": jnp.full((n, 2), 10.0), "E": jnp.full((n, 2), 0.3)}
    draws = Predictive(catalog_model, posterior_samples=latent)(jax.random.PRNGKey(seed()), s, arrays, prior,
                                                                 observe=False)
    assert draws["mag"].shape == (n, 2, released_model.n_bands) and draws["parallax"].shape == (n, 2)
    expect = np.asarray(released_model.predict_magnitudes(released_model.theta_med, 10.0, 0.3))
    sd = np.sqrt(0.03 ** 2 + 0.02 ** 2)
    assert np.all(np.abs(np.asarray(draws["mag"]).mean(0) - expect) < 4 * sd / np.sqrt(n))
    assert np.asarray(draws["mag"]).std(0) == pytest.approx(sd, rel=4 / np.sqrt(2 * n))
    assert np.asarray(draws["parallax"]).mean() == pytest.approx(1.0, abs=4 * 0.05 / np.sqrt(2 * n))


def test_padding_does_not_change_real_stars(released_model, prior, small_fit):
    """Star 0 alone (batch padded with its copy) vs beside star 1: same keys, same posterior.

    XLA may round differently for other batch compositions and MCMC amplifies ulps, so the check is
    statistical: medians agree within 4 combined Monte Carlo standard errors.
    """
    from photoinfer.infer.fit import fit_catalog
    cat, res = small_fit
    res1 = fit_catalog(released_model, cat.subset(np.arange(1)), prior=prior, num_warmup=W, num_samples=S,
                       batch_size=2, seed=seed())
    assert len(res1) == 1 and res1.samples["teff"].shape == (4, S, 1)
    ess = min(res.summary["ess_bulk_min"][0], res1.summary["ess_bulk_min"][0])
    for p in ("teff", "logg", "feh", "mu", "E"):
        a, b = res.samples[p][..., 0].ravel(), res1.samples[p][..., 0].ravel()
        mcse = 1.25 * np.std(np.concatenate([a, b])) / np.sqrt(max(ess, 1.0))
        assert abs(np.median(a) - np.median(b)) < 4 * np.sqrt(2) * mcse, p


def test_refinement_round(released_model, prior, small_fit):
    """Tiny chains (4 × 30 draws) cannot reach ESS 200: both fit stars get both refinement rounds (the
    default, 2), and their chains start at pooled earlier draws with the pooled covariance as metric."""
    from photoinfer.infer.fit import refinement_init
    from photoinfer.infer.model import model_arrays, unconstrain
    cat, res = small_fit
    assert res.attrs["refined_per_round"] == [2, 2] and res.attrs["refined_stars"] == 4
    assert np.isfinite(res.samples["teff"][..., :2]).all() and res.samples["teff"].shape == (4, S, 3)
    rng = np.random.default_rng(seed())
    C, N = 3, 4
    draws = {"teff": rng.normal(5000, 100, (C, S, N)), "logg": rng.normal(4, 0.1, (C, S, N)),
             "feh": rng.normal(0, 0.1, (C, S, N)), "mu": rng.normal(10, 0.2, (C, S, N)),
             "E": rng.uniform(0.1, 0.5, (C, S, N))}
    arrays = model_arrays(released_model)
    rows = np.array([1, 3])
    z0, inv_mass = refinement_init(draws, rows, arrays, prior, seed=1)
    assert z0.shape == (N, C, 5) and inv_mass.shape == (N, C, 5, 5)
    z = np.asarray(unconstrain(*[jnp.asarray(draws[p], jnp.float32) for p in ("teff", "logg", "feh", "mu", "E")],
                               arrays, prior), np.float64)                      # (C, S, N, 5)
    for r in rows:
        pooled = z[:, :, r].reshape(-1, 5)
        for c in range(C):      # every start is one of the star's own pooled draws
            assert np.min(np.abs(pooled - z0[r, c]).max(axis=1)) < 1e-4
        np.testing.assert_allclose(inv_mass[r, 0], np.cov(pooled.T) + 1e-4 * np.eye(5), rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(inv_mass[0, 0], np.eye(5))


def test_summary_one_row_per_star(small_fit):
    from photoinfer.catalog import Flag
    from photoinfer.fitresult import SUMMARY_COLUMNS
    cat, res = small_fit
    s = res.summary
    assert list(s) == SUMMARY_COLUMNS
    assert all(len(v) == len(cat) for v in s.values())
    np.testing.assert_array_equal(s["source_id"], cat.source_id)
    assert s["flags"][2] & Flag.TOO_FEW_BANDS and np.isnan(s["teff_p50"][2])
    assert np.isfinite(s["teff_p50"][:2]).all() and np.isfinite(s["rhat_max"][:2]).all()
    assert np.all(s["teff_p16"][:2] <= s["teff_p50"][:2]) and np.all(s["teff_p50"][:2] <= s["teff_p84"][:2])
    np.testing.assert_allclose(s["distance_p50"][:2], 10 ** (s["mu_p50"][:2] / 5 + 1), rtol=1e-3)


def test_posterior_netcdf_roundtrip(small_fit, tmp_path):
    from photoinfer.posterior import load_inference_data, save_inference_data, to_inference_data
    cat, res = small_fit
    idata = to_inference_data(res, cat)
    path = save_inference_data(idata, tmp_path / "posterior.nc")
    back = load_inference_data(path)
    post = back["posterior"] if not hasattr(back, "posterior") else back.posterior
    assert dict(post["teff"].sizes) == {"chain": 4, "draw": S, "star": 3}
    np.testing.assert_allclose(np.asarray(post["mu"]), res.samples["mu"])
    obs = back["observed_data"] if not hasattr(back, "observed_data") else back.observed_data
    np.testing.assert_allclose(np.asarray(obs["mag"]), cat.mag)
    assert not list(tmp_path.glob("*.tmp"))


def test_candidates_cover_the_priors_support(released_model, prior):
    """Chain starts come from the prior's whole support (wall < 5 nats), not only the region of validity:
    ~18 % of the prior's draws lie outside that region, and a star there needs a start there."""
    from photoinfer.infer.init import candidate_grid
    from photoinfer.infer.model import model_arrays
    arrays = model_arrays(released_model)
    sp = prior.prior.stellar
    x, _ = candidate_grid(prior, arrays)
    theta = np.asarray(arrays.theta_med) + np.asarray(arrays.theta_std) * x
    wall = np.asarray(sp.log_wall(theta))
    inside = np.asarray(sp.in_valid_region(theta))
    assert np.all(wall >= -5.0 - 1e-3)
    assert inside.sum() == np.asarray(sp.valid).sum()                  # every valid node is a candidate
    assert (~inside).sum() > 0.2 * inside.sum()                        # and the wall's nodes too


def test_bimodal_star_gets_chains_in_both_modes(released_model, prior):
    """A K dwarf without parallax: a giant 5 mag farther has the same colours, and more prior volume."""
    from photoinfer.infer.init import candidate_grid, candidate_neighbours, initial_points
    from photoinfer.infer.model import constrain, model_arrays, star_inputs
    rng = np.random.default_rng(seed())
    cat = _mock(released_model, rng, [4700, 4.6, 0.0], np.array([9.0]), np.array([0.1]), parallax=False)
    arrays = model_arrays(released_model)
    x, cell = candidate_grid(prior, arrays)
    nbr = candidate_neighbours(x, cell)
    s = jax.tree_util.tree_map(jnp.asarray, star_inputs(cat))
    key = jax.random.split(jax.random.PRNGKey(seed()), 1)
    z0, cov, dom, mode = initial_points(key, s, jnp.asarray(x), nbr, cell, arrays, prior, n_chains=4)
    logg = np.asarray(constrain(z0[0], s, arrays, prior))[:, 1]
    assert float(dom[0]) < 0.99                                         # → Flag.MULTIMODAL in fit_catalog
    assert (logg > 3.5).any() and (logg < 3.5).any(), logg
    assert np.all(np.linalg.eigvalsh(np.asarray(cov[0])) > 0)
    assert list(np.asarray(mode[0])) == [0, 1, 0, 1]                    # two modes, two chains each
    # a dominant mode takes every chain: with the threshold at the measured mass, all chains share a mode
    z1 = initial_points(key, s, jnp.asarray(x), nbr, cell, arrays, prior, n_chains=4,
                        dominant_mass=float(dom[0]) * 0.999)[0]
    logg1 = np.asarray(constrain(z1[0], s, arrays, prior))[:, 1]
    assert (logg1 > 3.5).all() or (logg1 < 3.5).all(), logg1


def test_cli_fit_tiny(tmp_path, released_model):
    from photoinfer.cli import main
    from photoinfer.io.catalogs import write_catalog
    from photoinfer.io.tables import read_table
    rng = np.random.default_rng(seed())
    cat = _mock(released_model, rng, [[5780, 4.44, 0.0], [5000, 4.6, 0.0]], np.array([9.0, 8.0]),
                np.array([0.1, 0.05]))
    write_catalog(cat, tmp_path / "in.parquet")
    rc = main(["-q", "fit", "--catalog", str(tmp_path / "in.parquet"), "--out", str(tmp_path / "out"), "--model",
               str(RELEASED_MODEL), "--num-warmup", str(W), "--num-samples", str(S), "--num-chains", "2",
               "--batch-size", "2", "--method", "nuts"])
    assert rc == 0
    t = read_table(tmp_path / "out" / "summary.parquet")
    assert len(t["source_id"]) == 2 and (tmp_path / "out" / "posterior.nc").exists()
    assert main(["fit", "--catalog", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "o2"),
                 "--model", str(RELEASED_MODEL)]) == 2


def test_example_runs_tiny(released_model):
    r = subprocess.run([sys.executable, str(REPO / "examples" / "fit_small.py"), "2", "--model", str(RELEASED_MODEL),
                        "--num-warmup", "20", "--num-samples", "10"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "truth inside the 68 % interval" in r.stdout


@pytest.mark.slow
def test_calibration_must_show():
    """Runs benchmarks/infer_calibration.py (writes benchmarks/results/infer_calibration.json)."""
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "infer_calibration.py"), "--n", "2000"],
                       cwd=REPO / "benchmarks", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    out = json.loads((REPO / "benchmarks" / "results" / "infer_calibration.json").read_text())
    for p, cov in out["coverage"].items():
        assert abs(cov["68"] - 0.68) < 0.03 and abs(cov["95"] - 0.95) < 0.02, (p, cov)
    assert out["frac_both"] >= 0.99


def test_sampler_coordinates_roundtrip_and_constant_jacobian(released_model, prior):
    """u = (x, δ, ε) ↔ z = (x, μ, logit E): inverse maps, a triangular Jacobian with det σ_μ,phot, the same
    log density."""
    from photoinfer.infer.model import (from_sampler, log_density, log_density_sampler, model_arrays,
                                        photometric_mu, star_inputs, to_sampler)
    rng = np.random.default_rng(seed())
    cat = _mock(released_model, rng, [5500, 4.3, -0.2], np.array([10.0]), np.array([0.2]))
    s = jax.tree_util.tree_map(lambda a: jnp.asarray(a[0]), star_inputs(cat))
    arrays = model_arrays(released_model)
    err2 = np.asarray(cat.mag_err[0]) ** 2 + 0.02 ** 2
    for u in rng.normal(0, 0.7, (3, 5)).astype(np.float32):
        u = jnp.asarray(u)
        z = from_sampler(u, s, arrays, prior)
        np.testing.assert_allclose(np.asarray(to_sampler(z, s, arrays, prior)), np.asarray(u), atol=2e-3)
        J = np.asarray(jax.jacfwd(lambda v: from_sampler(v, s, arrays, prior))(u))
        assert J[3, 3] == pytest.approx(np.sum(1 / err2) ** -0.5, rel=1e-4)     # constant diagonal
        assert np.allclose(np.diag(J)[[0, 1, 2, 4]], 1.0)
        assert np.allclose(J[:3, 3:], 0.0) and J[4, 3] == 0.0                    # triangular: x → ζ → μ
        assert np.linalg.det(J) == pytest.approx(J[3, 3], rel=1e-4)
        assert float(log_density_sampler(u, s, arrays, prior)) == pytest.approx(
            float(log_density(z, s, arrays, prior)), abs=1e-3)
        # μ_WLS: the weighted mean of m̂ − M(θ) − E R(θ)
        E = prior.E_max / (1 + np.exp(-float(u[4])))
        theta = released_model.theta_med + released_model.theta_std * np.asarray(u[:3])
        pred = np.asarray(released_model.predict_magnitudes(theta[None], np.zeros(1), np.array([E])))[0]
        want = np.sum((cat.mag[0] - pred) / err2) / np.sum(1 / err2)
        assert float(photometric_mu(u[:3], jnp.float32(E), s, arrays)[0]) == pytest.approx(want, abs=2e-3)


def test_chain_modes_groups_overlapping_chains():
    from photoinfer.infer.modes import chain_modes
    rng = np.random.default_rng(seed())
    z = rng.normal(0, 1, (4, 300, 5))
    assert list(chain_modes(z)) == [0, 0, 0, 0]
    z[[1, 3], :, 2] += 10.0                                    # chains 1 and 3 in a mode 10σ away
    assert list(chain_modes(z)) == [0, 1, 0, 1]
    z[2, :, 0] += 1.5                                          # overlapping disagreement: still one mode
    assert list(chain_modes(z)) == [0, 1, 0, 1]


def test_combine_modes_weights_and_within_mode_rhat(released_model, prior):
    """Synthetic chains in the two modes of a dwarf/giant star: the resampled draws follow the modes'
    importance-sampled masses (to one draw), r̂ is computed within modes, and a chain off its mode
    fails.  (The masses' accuracy is checked by the calibration benchmark.)"""
    from photoinfer.infer.init import candidate_grid, candidate_neighbours, initial_points
    from photoinfer.infer.model import constrain, model_arrays, star_inputs
    from photoinfer.infer.modes import combine_modes
    rng = np.random.default_rng(seed())
    cat = _mock(released_model, rng, [4700, 4.6, 0.0], np.array([9.0]), np.array([0.1]), parallax=False)
    arrays = model_arrays(released_model)
    x, cell = candidate_grid(prior, arrays)
    s = jax.tree_util.tree_map(jnp.asarray, star_inputs(cat))
    z0, cov, _, mode = initial_points(jax.random.split(jax.random.PRNGKey(seed()), 1), s, jnp.asarray(x),
                                      candidate_neighbours(x, cell), cell, arrays, prior, n_chains=4)
    assert list(np.asarray(mode[0])) == [0, 1, 0, 1]
    C, S = 4, 400
    z = np.stack([rng.multivariate_normal(np.asarray(z0[0, c % 2]), 0.01 * np.asarray(cov[0, c % 2]), S)
                  for c in range(C)])[:, :, None]                                            # (C, S, 1, 5)
    z = np.concatenate([z, z], axis=2)
    z[2, :, 1, :3] += 0.3                                     # star 1: chain 2 sits off its mode
    phys = np.asarray(constrain(jnp.asarray(z, jnp.float32), None, arrays, prior), np.float64)
    samples = dict(zip(("teff", "logg", "feh", "mu", "E"), np.moveaxis(phys, -1, 0)))
    stars = jax.tree_util.tree_map(lambda a: np.repeat(np.asarray(a), 2, axis=0), star_inputs(cat))
    out, diag, n_modes, w = combine_modes(samples, stars, arrays, prior, seed=seed(), n_draws=2048)
    assert list(n_modes) == [2, 3]
    assert diag["rhat_max"][0] <= 1.01 < diag["rhat_max"][1]
    assert w[0, 0] == w[0, 2] and w[0, 1] == w[0, 3] and w[0, 0] + w[0, 1] == pytest.approx(1.0)
    w1 = w[0, 1]
    in_mode1 = np.abs(out["logg"][:, :, 0] - samples["logg"][1, 0, 0]) < np.abs(out["logg"][:, :, 0] - samples["logg"][0, 0, 0])
    assert np.mean(in_mode1) == pytest.approx(w1, abs=1.0 / (C * S))    # systematic resampling: to one draw


def test_first_round_tree_depth(released_model, prior, small_fit):
    """The first round's trees stop at ``max_num_doublings`` (default 5: ≤ 31 leapfrog steps per draw,
    what keeps a lockstep batch from waiting on its longest lane); the refinement rounds get
    ``refine_max_num_doublings``."""
    from photoinfer.infer.fit import fit_catalog
    cat, refined = small_fit
    res = fit_catalog(released_model, cat.subset(np.arange(1)), prior=prior, num_warmup=W, num_samples=S,
                      batch_size=1, seed=seed(), refine=0, max_num_doublings=3)
    assert np.nanmax(res.sample_stats["n_steps"]) <= 2 ** 3 - 1
    assert res.attrs["max_num_doublings"] == 3
    assert refined.attrs["max_num_doublings"] == 5 and refined.attrs["refine_max_num_doublings"] == 8
