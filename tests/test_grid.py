"""Grid posteriors: the closed-form (μ, E) solve, screening, NUTS seeds, the full posterior."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import seed
from photoinfer.grid.engine import (initial_points, make_theta_grid, screen, solve_mu_E, solve_mu_E_direct,
                                    star_arrays)


@pytest.fixture(scope="module")
def coarse_grid(released_model):
    return make_theta_grid(released_model, "coarse")


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


def test_screen_chunking_and_modes(released_model, coarse_grid, rng):
    mag, err = _two_mode_star(released_model, rng)
    M, R, mag2, err2 = _random_problem(rng, n=3, g=1, b=released_model.n_bands)
    mag_all = np.concatenate([mag, np.asarray(released_model.predict_magnitudes(
        np.array([[5800, 4.4, 0], [4800, 2.6, -0.3], [6300, 4.1, -0.5]], np.float32), 10.0, 0.2))])
    err_all = np.concatenate([err, np.full((3, released_model.n_bands), 0.03)])
    st = star_arrays(mag_all, err_all)
    a = screen(coarse_grid, st, keep=256, grid_chunk=len(coarse_grid), star_chunk=4)
    b = screen(coarse_grid, st, keep=256, grid_chunk=300, star_chunk=3)
    fa, fb = np.isfinite(a.log_weight), np.isfinite(b.log_weight)
    for n in range(4):
        sa = dict(zip(a.index[n][fa[n]], a.log_weight[n][fa[n]]))
        sb = dict(zip(b.index[n][fb[n]], b.log_weight[n][fb[n]]))
        assert sa.keys() == sb.keys()
        np.testing.assert_allclose([sa[k] for k in sa], [sb[k] for k in sa], atol=1e-4)
    ip = initial_points(a, n_chains=4)
    assert ip.position.shape == (4, 4, 5) and ip.cov.shape == (4, 4, 5, 5)
    assert ip.n_modes[0] >= 2
    loggs = ip.position[0, :, 1]
    assert loggs.min() < 3.2 and loggs.max() > 4.0, loggs
    assert np.all(np.linalg.eigvalsh(ip.cov) > 0)
    assert np.all(ip.mode_weight.sum(1) <= 1 + 1e-5) and ip.mode_weight[0, 1] > 1e-3
