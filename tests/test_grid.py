"""Grid posteriors: the closed-form (μ, E) solve, screening, NUTS seeds, the full posterior."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import seed
from photoinfer.grid.engine import (grid_arrays, make_theta_grid, solve_mu_E, solve_mu_E_direct, solve_mu_E_grid,
                                    star_arrays)


@pytest.fixture(scope="module")
def coarse_grid(released_model):
    return make_theta_grid(released_model, "coarse")


@pytest.fixture(scope="module")
def coarse_prior(released_model):
    from photoinfer.priors import make_prior
    return make_prior("bayestar", model=released_model)


#: one set of static settings for every coarse-grid fit below (one compilation)
SMALL = dict(keep=256, n_draws=200, star_chunk=4)


def _random_problem(rng, n=5, g=7, b=13, missing=0.2):
    M = rng.normal(4.0, 2.0, (g, b))
    R = np.abs(rng.normal(2.0, 1.0, (g, b))) + 0.05
    mu = rng.uniform(8, 14, n)
    E = rng.uniform(-0.3, 1.5, n)          # some stars want E < 0
    err = rng.uniform(0.01, 0.1, (n, b))
    mag = M[0] + mu[:, None] + E[:, None] * R[0] + err * rng.normal(size=(n, b))
    mag[rng.uniform(size=(n, b)) < missing] = np.nan
    return M, R, mag, err


def test_solve_equals_lstsq_and_brute_force(rng):
    M, R, mag, err = _random_problem(rng)
    st = star_arrays(mag, err, sigma_model=0.02)
    sol = solve_mu_E(M, R, st.mag, st.weight)
    direct = solve_mu_E_direct(np.broadcast_to(M, (len(mag),) + M.shape), np.broadcast_to(R, (len(mag),) + R.shape),
                               st.mag, st.weight)
    w = np.asarray(st.weight, np.float64)
    for n in range(len(mag)):
        o = np.isfinite(mag[n])
        sw = np.sqrt(w[n, o])
        for g in range(len(M)):
            A = np.stack([np.ones(o.sum()), R[g, o]], 1)
            d = mag[n, o] - M[g, o]
            x, *_ = np.linalg.lstsq(A * sw[:, None], d * sw, rcond=None)
            chi2_free = np.sum(w[n, o] * (d - A @ x) ** 2)
            cov = np.linalg.inv((A * w[n, o][:, None]).T @ A)
            if x[1] < 0:   # E >= 0: the constrained optimum on the edge E = 0
                mu_c = np.sum(w[n, o] * d) / np.sum(w[n, o])
                want = (mu_c, 0.0, np.sum(w[n, o] * (d - mu_c) ** 2))
            else:
                want = (x[0], x[1], chi2_free)
            for s, tol in ((sol, 2e-3), (direct, 2e-4)):
                np.testing.assert_allclose(float(s.mu_free[n, g]), x[0], atol=tol * 10)
                np.testing.assert_allclose(float(s.E_free[n, g]), x[1], atol=tol * 10)
                np.testing.assert_allclose([float(s.mu[n, g]), float(s.E[n, g])], want[:2], atol=tol * 10)
                assert float(s.E[n, g]) >= 0
                # χ² of a brute-force residual sum, absolute tolerance ~ float32 rounding of Σw d²
                np.testing.assert_allclose(float(s.chi2[n, g]), want[2], rtol=1e-4, atol=0.05 if s is sol else 1e-3)
                np.testing.assert_allclose(float(s.chi2_free[n, g]), chi2_free, rtol=1e-4,
                                           atol=0.05 if s is sol else 1e-3)
                np.testing.assert_allclose(np.asarray(s.cov[n, g]), cov, rtol=1e-3, atol=1e-9)


def test_constrained_solution_is_the_edge_minimum(rng):
    """When Ê < 0 the returned (μ, 0) beats every (μ', E' ≥ 0) on a dense scan."""
    M, R, mag, err = _random_problem(rng, n=40, g=1, missing=0.0)
    st = star_arrays(mag, err)
    sol = solve_mu_E(M, R, st.mag, st.weight)
    neg = np.flatnonzero(np.asarray(sol.E_free[:, 0]) < 0)
    assert len(neg) > 0
    w = np.asarray(st.weight, np.float64)
    for n in neg[:5]:
        mus = float(sol.mu[n, 0]) + np.linspace(-0.5, 0.5, 201)
        Es = np.linspace(0, 0.5, 101)
        r = mag[n][None, None] - M[0] - mus[:, None, None] - Es[None, :, None] * R[0]
        chi2 = np.sum(w[n] * r ** 2, -1)
        assert float(sol.chi2[n, 0]) <= chi2.min() + 1e-2
        assert float(sol.E[n, 0]) == 0.0


def _two_mode_star(model, rng):
    """A K star whose photometry fits both a giant (logg 2.5) and a dwarf (logg 4.6); no parallax."""
    th = np.array([[4700.0, 2.5, 0.0], [4700.0, 4.6, 0.0]], np.float32)
    mags = np.asarray(model.predict_magnitudes(th, np.array([13.0, 8.0]), np.array([0.3, 0.3])))
    mag = mags.mean(0)[None] + 0.0 * rng.normal(size=(1, model.n_bands))
    err = np.full((1, model.n_bands), 0.15)
    return mag, err


def test_grid_solve_equals_matmul_solve(coarse_grid, rng):
    """The fused band loop over the whole grid equals the matrix-product path."""
    M, R, mag, err = _random_problem(rng, n=6, g=1, b=coarse_grid.n_bands)
    mag = mag - M[0] + coarse_grid.M[100] + 0.3 * coarse_grid.R[100]
    st = star_arrays(mag, err)
    a = solve_mu_E_grid(grid_arrays(coarse_grid), st.mag, st.weight)
    b = solve_mu_E(coarse_grid.M, coarse_grid.R, st.mag, st.weight)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=2e-3 * float(np.abs(y).max()))


def test_modes_and_chunking(released_model, coarse_grid, coarse_prior, rng):
    mag, err = _two_mode_star(released_model, rng)
    mag_all = np.concatenate([mag, np.asarray(released_model.predict_magnitudes(
        np.array([[5800, 4.4, 0], [4800, 2.6, -0.3], [6300, 4.1, -0.5]], np.float32), 10.0, 0.2))])
    err_all = np.concatenate([err, np.full((3, released_model.n_bands), 0.03)])
    st = star_arrays(mag_all, err_all, l=np.full(4, 90.0), b=np.full(4, 30.0))
    bins = ImageGrid(n_mu=60, n_E=70)
    a = grid_posterior(coarse_grid, st, coarse_prior, GridSettings(**SMALL), n_chains=4, return_points=True,
                       images=bins)
    # star 3 shares its chunk with padding instead of stars 0-2: same result (per-star keys)
    b = grid_posterior(coarse_grid, st, coarse_prior, GridSettings(**SMALL), n_chains=4, return_points=True,
                       images=bins, flags=np.array([int(Flag.TOO_FEW_BANDS), 0, 0, 0]))
    for n in range(1, 4):
        np.testing.assert_array_equal(a.points.index[n], b.points.index[n])
        np.testing.assert_allclose(a.points.log_weight[n], b.points.log_weight[n], atol=1e-4)
    ip = a.initial
    assert ip.position.shape == (4, 4, 5) and ip.cov.shape == (4, 4, 5, 5)
    assert ip.n_modes[0] >= 2
    loggs = ip.position[0, :, 1]
    assert loggs.min() < 3.2 and loggs.max() > 4.0, loggs
    assert np.all(np.linalg.eigvalsh(ip.cov) > 0)
    assert np.all(ip.mode_weight.sum(1) <= 1 + 1e-5) and ip.mode_weight[0, 1] > 1e-3


# ------------------------------------------------------------------------------------ full posterior
from photoinfer.catalog import Catalog, Flag  # noqa: E402
from photoinfer.fitresult import PARAMETERS, SUMMARY_COLUMNS  # noqa: E402
from photoinfer.grid.posterior import GridSettings, grid_fit, grid_posterior
from photoinfer.sightline import ImageGrid  # noqa: E402
from photoinfer.priors import make_prior  # noqa: E402


@pytest.fixture(scope="module")
def small_grid(released_model):
    """A few hundred θ points around a solar-type dwarf (brute force stays cheap)."""
    return make_theta_grid(released_model, (100.0, 0.1, 0.25),
                           bounds=((5300.0, 6300.0), (3.9, 4.7), (-0.5, 0.25)))


def _brute_force_weights(grid, mag, err, plx, plx_err, l, b, prior, sigma_model=0.02):
    """Posterior mass of every grid point by dense (μ, E) quadrature in float64, no closed forms."""
    obs = np.isfinite(mag)
    w = 1.0 / (err[obs] ** 2 + sigma_model ** 2)
    out = np.empty(len(grid))
    for g in range(len(grid)):
        M, R = grid.M[g, obs].astype(np.float64), grid.R[g, obs].astype(np.float64)
        # window: ±9σ around the free least-squares solution (the integrand is < e^-40 beyond)
        A = np.stack([np.ones(obs.sum()), R], 1)
        C = np.linalg.inv((A * w[:, None]).T @ A)
        x = C @ (A * w[:, None]).T @ (mag[obs] - M)
        smu, sE = np.sqrt(np.diag(C))
        mus = np.linspace(x[0] - 9 * smu, x[0] + 9 * smu, 241)
        Es = np.linspace(max(0.0, x[1] - 9 * sE), min(prior.E_max, max(x[1] + 9 * sE, 9 * sE)), 161)
        r = mag[obs] - M - mus[:, None, None] - Es[None, :, None] * R
        lnL = -0.5 * np.sum(w * r ** 2, -1)
        lnL += (-0.5 * ((plx - 10 ** (2 - mus / 5)) / plx_err) ** 2)[:, None]
        lnL += np.asarray(prior.log_prior_position(np.full_like(mus, grid.theta[g, 2]), mus, l, b), np.float64)[:, None]
        lnL += -np.log(prior.E_max) + float(grid.ln_prior[g])
        mx = lnL.max()
        out[g] = mx + np.log(np.trapezoid(np.trapezoid(np.exp(lnL - mx), Es, axis=1), mus))
    return out - np.logaddexp.reduce(out)


def test_grid_posterior_equals_brute_force(released_model, small_grid, rng):
    prior = make_prior("bayestar", model=released_model, E_max=7.0)
    theta = np.array([[5800.0, 4.3, -0.1]], np.float32)
    mu, E = 9.5, 0.35
    mag = np.asarray(released_model.predict_magnitudes(theta, mu, E))[0].astype(np.float64)
    err = np.full(released_model.n_bands, 0.04)
    mag = mag + err * rng.normal(size=mag.shape)
    mag[[3, 11]] = np.nan
    plx_true = 10 ** (2 - mu / 5)
    plx_err = 0.08 * plx_true
    plx = plx_true + plx_err * rng.normal()
    l, b = 120.0, 25.0
    st = star_arrays(mag[None], err[None], [plx], [plx_err], [l], [b])
    # the lattice posterior (θ at the points), whose point masses the brute force computes; the
    # continuous-θ default is checked by the calibration test below
    fit = grid_posterior(small_grid, st, prior, GridSettings(keep=2 * len(small_grid), n_mu=32, star_chunk=1,
                                                             continuous=False), return_points=True)
    lw = np.full(len(small_grid), -np.inf)
    np.logaddexp.at(lw, fit.points.index[0], fit.points.log_weight[0])      # copies of a point add up
    want = _brute_force_weights(small_grid, mag, err, plx, plx_err, l, b, prior)
    drawn = np.isfinite(lw)
    # a point of proposal mass p < 1/keep is drawn with probability keep·p (systematic sampling), so the
    # mass never drawn is about Σ p (1 − keep·p) over those points (an unbiased estimator overall)
    p_true = np.exp(want)
    expect = np.sum(p_true * np.clip(1 - 2 * len(small_grid) * p_true, 0, 1))
    assert np.exp(want[~drawn]).sum() < 2 * expect + 0.005, (np.exp(want[~drawn]).sum(), expect)
    want = want[drawn] - np.logaddexp.reduce(want[drawn])
    lw = lw[drawn]
    big = want > np.log(1e-3)
    assert big.sum() >= 5
    # importance sampling with >= 32 stratified draws per point: per-point relative error well below 3 %
    np.testing.assert_allclose(np.exp(lw[big]), np.exp(want[big]), rtol=0.03)
    mid = (want > np.log(1e-5)) & ~big
    np.testing.assert_allclose(np.exp(lw[mid]), np.exp(want[mid]), rtol=0.1)


def _catalog(model, rng, n=6):
    th = np.array([[5800, 4.4, 0.0], [4800, 2.6, -0.3], [6300, 4.1, -0.5], [5000, 4.6, 0.1], [4600, 2.4, -0.8],
                   [7000, 4.0, -0.2]], np.float32)[:n]
    mu = rng.uniform(8, 12, n)
    E = rng.uniform(0, 0.6, n)
    mag = np.asarray(model.predict_magnitudes(th, mu, E), np.float64)
    err = np.full_like(mag, 0.03)
    mag = mag + err * rng.normal(size=mag.shape)
    mag[1, 1:] = np.nan                    # one band only: TOO_FEW_BANDS, must still get a row
    plx = 10 ** (2 - mu / 5)
    return Catalog.from_arrays(mag, err, bands=model.bands, parallax=plx + 0.05 * plx * rng.normal(size=n),
                               parallax_err=0.05 * plx, l=rng.uniform(0, 360, n), b=rng.uniform(-60, 60, n))


def test_fitresult_images_and_chunking(released_model, coarse_grid, coarse_prior, rng):
    cat = _catalog(released_model, rng)
    prior = coarse_prior
    bins = ImageGrid(n_mu=60, n_E=70)
    s = GridSettings(**SMALL)
    a = grid_fit(released_model, cat, prior, grid=coarse_grid, settings=s, images=bins, n_chains=3, seed=seed())
    fr = a.fit
    assert len(fr) == len(cat) and fr.method == "grid"
    assert list(fr.summary) == SUMMARY_COLUMNS
    for p in PARAMETERS:
        assert fr.samples[p].shape == (1, 200, len(cat))
    assert fr.flags[1] & Flag.TOO_FEW_BANDS and np.all(np.isnan(fr.samples["teff"][:, :, 1]))
    ok = np.arange(len(cat)) != 1
    assert np.all(np.isfinite(fr.summary["ess_bulk_min"][ok])) and np.all(np.isnan(fr.summary["rhat_max"]))
    assert np.all(fr.samples["E"][:, :, ok] >= 0)
    assert a.images.shape == (len(cat), 60, 70) and a.images.dtype == np.float32
    np.testing.assert_allclose(a.images[ok].sum((1, 2)), 1.0, atol=1e-4)
    assert np.all(a.images[1] == 0)
    assert a.initial.position.shape == (len(cat), 3, 5)
    # chunking over stars and grid does not change the result (per-star keys)
    flags = cat.flags.copy()
    flags[0] |= int(Flag.TOO_FEW_BANDS)
    cat.flags = flags
    ok[0] = False
    b = grid_fit(released_model, cat, prior, grid=coarse_grid, settings=s, images=bins, seed=seed())
    for p in PARAMETERS:
        np.testing.assert_allclose(a.fit.samples[p][:, :, ok], b.fit.samples[p][:, :, ok], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a.log_evidence[ok], b.log_evidence[ok], atol=1e-3)


def test_example_runs_tiny(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(repo / "examples" / "grid_fit.py"), "5", "--out", str(tmp_path)],
                         capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(repo)},
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "grid_summary.csv").exists()


def test_calibration_on_prior_predictive_mock(released_model, coarse_prior):
    """Stars drawn from the grid's own prior (continuous θ) and the fit's likelihood, bands missing at random:
    the 68 % / 95 % central intervals contain the truth at the nominal rates, within 3.5 binomial σ
    (10 comparisons)."""
    from photoinfer.grid.engine import position_table
    from photoinfer.grid.mock import PARAMS, prior_predictive_mock
    prior = make_prior("bayestar", stellar=coarse_prior.stellar, E_max=2.0)   # E ≤ 2: most stars bright enough
    grid = make_theta_grid(released_model, "coarse", stellar_prior=prior.stellar)   # continuous θ: coarse is exact
    ga = grid_arrays(grid)
    table = position_table(prior, grid.feh_axis)
    rng = np.random.default_rng(seed())
    mag, err, plx, plx_err, truth = prior_predictive_mock(released_model, grid, table, np.asarray(ga.row),
                                                          prior.E_max, 6000, rng,
                                                          missing="random")
    fit = grid_posterior(grid, star_arrays(mag, err, plx, plx_err), prior,
                         GridSettings(position_free=True, keep=1024, n_draws=1000), table=table,
                         arrays=ga, key=__import__("jax").random.PRNGKey(seed()))
    ok = np.isfinite(fit.ess)
    n = int(ok.sum())
    assert n > 5000
    for p in PARAMS:
        d = fit.fit.samples[p][0][:, ok]
        t = truth[p][ok]
        for level in (68, 95):
            lo, hi = np.percentile(d, [50 - level / 2, 50 + level / 2], axis=0)
            c, q = np.mean((t >= lo) & (t <= hi)), level / 100
            assert abs(c - q) < 3.5 * np.sqrt(q * (1 - q) / n), (p, level, c, n)
