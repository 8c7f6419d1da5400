"""Mock catalogs: determinism, the error/coverage model against the real sample, the prior, the CLI."""
from __future__ import annotations

import runpy
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import RELEASED_MODEL, REPO, seed
from photoinfer.mock_errors import DEFAULT_ERROR_MODEL, MAX_MAG_ERR, fit_error_model, photometric_error
from photoinfer.simulate import Cone, HealpixRegion, simulate_catalog

N = 4000


@pytest.fixture(scope="module")
def mock(released_model):
    return simulate_catalog(released_model, N, seed())


def _true_mag(cat):
    return np.stack([cat.extra[f"true_mag_{k}"] for k in cat.bands.keys], axis=1)


def _normal_ok(z, label):
    z = z[np.isfinite(z)]
    n = len(z)
    assert abs(z.mean()) < 4 / np.sqrt(n), f"{label}: mean {z.mean():.4f} (n={n})"
    assert abs(z.std() - 1) < 4 / np.sqrt(2 * n), f"{label}: std {z.std():.4f} (n={n})"


def test_deterministic(released_model):
    a = simulate_catalog(released_model, 200, 7)
    b = simulate_catalog(released_model, 200, 7)
    c = simulate_catalog(released_model, 200, 8)
    for f in ("source_id", "mag", "mag_err", "parallax", "l", "b", "theta", "theta_cov", "E0", "sigma_E0"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert not np.array_equal(a.extra["true_mu"], c.extra["true_mu"])
    assert len(np.unique(a.source_id)) == 200


def test_photometric_and_parallax_noise(mock):
    _normal_ok(((mock.mag - _true_mag(mock)) / mock.mag_err).ravel(), "magnitudes")
    for j, name in enumerate(mock.bands.names):
        z = (mock.mag[:, j] - _true_mag(mock)[:, j]) / mock.mag_err[:, j]
        if np.isfinite(z).sum() > 100:
            _normal_ok(z, f"band {name}")
    assert np.nanmax(mock.mag_err) <= MAX_MAG_ERR and np.nanmin(mock.mag_err) >= 0.02
    _normal_ok((mock.parallax - mock.extra["true_parallax"]) / mock.parallax_err, "parallax")
    assert (mock.parallax < 0).any()  # negative parallaxes are kept
    true = np.stack([mock.extra[k] for k in ("true_teff", "true_logg", "true_feh")], axis=1)
    sig = np.sqrt(np.diagonal(mock.theta_cov, axis1=1, axis2=2))
    for i in range(3):
        _normal_ok((mock.theta[:, i] - true[:, i]) / sig[:, i], f"theta[{i}]")


def _reddening_prior_checks(cat):
    """(z-scores (E − E₀)/σ_E₀ where E₀ > 3σ_E₀, all z, corr(z, E₀)) of a mock."""
    z = (cat.extra["true_E"] - cat.E0) / cat.sigma_E0
    return z[cat.E0 > 3 * cat.sigma_E0], z, np.corrcoef(z, cat.E0)[0, 1]


def test_reddening_prior_is_berkson(mock, released_model):
    """Default mock: the prior N(E₀, σ_E₀²) is the distribution of the true E given the map.  Where the
    truncation at E = 0 does not matter (E₀ > 3σ_E₀), (E − E₀)/σ_E₀ is N(0, 1); over all stars it has
    mean 0 and variance 1 (E₀, σ_E₀ are the truncated normal's moments); and E − E₀ is uncorrelated
    with E₀.  The classical mock fails the last check (E − E₀ = −σ·N anti-correlates with E₀)."""
    hi, z, corr = _reddening_prior_checks(mock)
    assert len(hi) > 300
    _normal_ok(hi, "reddening prior (E0 > 3 sigma)")
    n = len(z)
    assert abs(z.mean()) < 4 * z.std() / np.sqrt(n), z.mean()
    assert abs(np.mean(z ** 2) - 1) < 4 * np.std(z ** 2) / np.sqrt(n), np.mean(z ** 2)
    assert abs(corr) < 4 / np.sqrt(n), corr
    assert np.all(mock.extra["true_E"] >= 0)
    classical = simulate_catalog(released_model, N, seed(), reddening_prior_error="classical")
    hi_c, z_c, corr_c = _reddening_prior_checks(classical)
    assert corr_c < -4 / np.sqrt(len(z_c)), corr_c
    _normal_ok(z_c, "classical reddening prior (E0 - E)/sigma over all stars")
    with pytest.raises(ValueError, match="reddening_prior_error"):
        simulate_catalog(released_model, 10, 1, reddening_prior_error="gaussian")


def test_berkson_truncated_moments():
    """E₀ and σ_E₀ of the Berkson draw are the mean and std of N(E_map, σ²) truncated at 0 (checked
    by Monte Carlo at E_map = 0, σ/2, 3σ), and far from 0 the draw is E_map + σ·N(0, 1)."""
    from photoinfer.simulate import reddening_prior
    rng = np.random.default_rng(seed())
    m = 200000
    for e_map in (0.0, 0.025, 0.15, 5.0):
        E, E0, s0 = reddening_prior(rng, np.full(m, e_map), np.full(m, 0.05), "berkson")
        assert np.all(E >= 0)
        assert abs(E.mean() - E0[0]) < 4 * s0[0] / np.sqrt(m), (e_map, E.mean(), E0[0])
        assert abs(E.std() / s0[0] - 1) < 4 / np.sqrt(m), (e_map, E.std(), s0[0])
    assert abs(E0[0] - 5.0) < 1e-12 and abs(s0[0] - 0.05) < 1e-12


def test_missing_band_fractions_match_real_sample(mock, sample_8k):
    """Where no magnitude limit binds, coverage per reference-magnitude bin is the real sample's."""
    em = DEFAULT_ERROR_MODEL
    tm = _true_mag(mock)
    free = ((tm <= em.mag_limit) & (photometric_error(em, tm) <= MAX_MAG_ERR)).all(axis=1)
    sim_bin = np.digitize(tm[:, 0], em.mask_edges)
    real_bin = np.digitize(sample_8k.mag[:, 0], em.mask_edges)
    checked = 0
    for k in range(len(em.mask_edges) + 1):
        s = free & (sim_bin == k)
        r = real_bin == k
        if s.sum() < 50:
            continue
        ps, pr = mock.observed[s].mean(axis=0), sample_8k.observed[r].mean(axis=0)
        p = (ps * s.sum() + pr * r.sum()) / (s.sum() + r.sum())
        tol = 4 * np.sqrt(p * (1 - p) * (1 / s.sum() + 1 / r.sum())) + 1e-12
        assert np.all(np.abs(ps - pr) <= tol), f"bin {k}: sim {ps.round(3)} real {pr.round(3)} tol {tol.round(3)}"
        checked += 1
    assert checked >= 4


def test_without_magnitude_limits_every_covered_band_is_observed(released_model):
    """A mock with ``mag_limit = max_mag_err = inf`` and errors capped at 1 mag (truth_recovery.py
    --no-magnitude-limits) draws the same stars and keeps every band the default mock keeps, plus the faint ones it
    drops: no star is selected on its magnitudes."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import truth_recovery as tr
    em = tr.scaled_errors(magnitude_limits=False)
    assert np.isinf(em.mag_limit).all() and np.isinf(em.max_mag_err) and em.mag_err_cap == 1.0
    a = tr._mock(released_model, 2000, 3, None, "berkson", None)  # default errors, simulated (no cache)
    b = tr._mock(released_model, 2000, 3, em, "berkson", None)
    np.testing.assert_array_equal(a.extra["true_mu"], b.extra["true_mu"])
    assert (b.observed | ~a.observed).all()  # what the default observes, the unlimited mock observes too
    faint = b.observed & ~a.observed
    assert faint.sum() > 100 and np.nanmin(b.mag_err[faint]) > 0.0 and np.nanmax(b.mag_err) == 1.0
    np.testing.assert_array_equal(b.mag_err[a.observed], a.mag_err[a.observed])  # the cap touches only faint bands
    tm = _true_mag(b)
    lim = np.broadcast_to(DEFAULT_ERROR_MODEL.mag_limit, tm.shape)
    assert ((tm > lim) | (photometric_error(DEFAULT_ERROR_MODEL, tm) > MAX_MAG_ERR))[faint].all()


def test_mu_follows_prior(mock):
    from photoinfer.priors.galactic import BAYESTAR, log_prior_mu
    mu_grid = np.linspace(4, 19, 6001)
    lp = np.asarray(log_prior_mu(mu_grid[None], mock.l[:, None], mock.b[:, None], BAYESTAR), np.float64)
    pdf = np.exp(lp - lp.max(axis=1, keepdims=True))
    cdf = np.concatenate([np.zeros((len(pdf), 1)), np.cumsum(0.5 * (pdf[:, 1:] + pdf[:, :-1]), axis=1)], axis=1)
    cdf /= cdf[:, -1:]
    u = np.array([np.interp(m, mu_grid, c) for m, c in zip(mock.extra["true_mu"], cdf)])
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # the sky is uniform: sin b uniform on [-1, 1]
    assert stats.kstest(np.sin(np.deg2rad(mock.b)), "uniform", args=(-1, 2)).pvalue > 1e-3


def test_reddening_and_theta_ranges(mock, released_model):
    from photoinfer.priors.stellar import StellarPrior
    E = mock.extra["true_E"]
    assert np.all(E >= 0) and np.all(E <= 7 + 6 * mock.sigma_E0) and np.median(E) > 0  # E_max 7, Berkson scatter
    region = StellarPrior.from_model(released_model)
    true = np.stack([mock.extra[k] for k in ("true_teff", "true_logg", "true_feh")], axis=1)
    assert np.all(np.asarray(region.in_valid_region(true)))
    # resampling a real θ sample also stays inside
    src = np.array([[5000.0, 3.0, -0.3], [5800.0, 4.4, 0.0], [4500.0, 2.4, -1.0]])
    cat = simulate_catalog(released_model, 300, 3, theta_source=src)
    t = np.stack([cat.extra[k] for k in ("true_teff", "true_logg", "true_feh")], axis=1)
    assert np.all(np.asarray(region.in_valid_region(t)))
    assert np.min(np.abs(t[:, None, 0] - src[None, :, 0]), axis=1).max() < 6 * 50


def test_dust_screen_and_sky_regions(released_model):
    import healpy as hp
    cat = simulate_catalog(released_model, 400, seed(), sky=HealpixRegion(16, (1234,)), dust_screen=(13.0, 0.8))
    assert np.all(hp.ang2pix(16, cat.l, cat.b, nest=True, lonlat=True) == 1234)
    mu, E = cat.extra["true_mu"], cat.extra["true_E"]
    assert (mu < 13).sum() > 10 and (mu > 13).sum() > 10
    assert np.all(E[mu > 13] >= 0.8) and np.all(E[mu > 13] <= 0.82 + 1e-9)
    assert np.all(E[mu < 13] <= 0.02)
    # the jump is visible in the noisy reddening prior too
    assert np.median(cat.E0[mu > 13.5]) - np.median(cat.E0[mu < 12.5]) > 0.6
    cone = simulate_catalog(released_model, 1000, seed(), sky=Cone(120.0, 30.0, 5.0))
    c1 = np.deg2rad([120.0, 30.0])
    cosd = (np.sin(c1[1]) * np.sin(np.deg2rad(cone.b))
            + np.cos(c1[1]) * np.cos(np.deg2rad(cone.b)) * np.cos(np.deg2rad(cone.l) - c1[0]))
    dist = np.rad2deg(np.arccos(np.clip(cosd, -1, 1)))
    assert dist.max() <= 5.0 + 1e-6
    p = (1 - np.cos(np.deg2rad(2.5))) / (1 - np.cos(np.deg2rad(5.0)))  # inner half-radius area fraction
    k = (dist < 2.5).sum()
    assert abs(k - p * 1000) < 4 * np.sqrt(1000 * p * (1 - p))


@pytest.mark.parametrize("phot_only", [False, True])
def test_cli_writes_readable_parquet(tmp_path, phot_only, released_model):
    from photoinfer.cli import main
    from photoinfer.io.catalogs import read_catalog
    out = tmp_path / "mock.parquet"
    argv = ["-q", "simulate", "--model", str(RELEASED_MODEL), "--n", "150", "--out", str(out), "--seed", "5"]
    assert main(argv + (["--photometry-only"] if phot_only else [])) == 0
    back = read_catalog(out)
    ref = simulate_catalog(released_model, 150, 5, photometry_only=phot_only)
    for f in ("source_id", "mag", "mag_err", "parallax", "parallax_err", "l", "b", "E0", "sigma_E0", "flags"):
        np.testing.assert_array_equal(getattr(back, f), getattr(ref, f), err_msg=f)
    for k, v in ref.extra.items():
        np.testing.assert_array_equal(back.extra[k], v, err_msg=k)
    if phot_only:
        assert np.isnan(back.theta).all()
        assert np.all(back.flags & 32)  # Flag.NO_THETA
    else:
        np.testing.assert_allclose(back.theta, ref.theta, rtol=0, atol=0)
        np.testing.assert_allclose(back.theta_cov, ref.theta_cov, rtol=1e-12)
        assert set(back.atm_source) <= {"lamost", "apogee", "galah"}
    assert set(back.r_source) == {"sim"}


def test_cli_rejects_bad_output(tmp_path, capsys):
    from photoinfer.cli import main
    assert main(["simulate", "--model", str(RELEASED_MODEL), "--n", "5", "--out", str(tmp_path / "x.txt")]) == 2
    assert "x.txt" in capsys.readouterr().err


def test_default_error_model_is_the_fit_on_the_real_sample(sample_8k):
    em = fit_error_model(sample_8k)
    d = DEFAULT_ERROR_MODEL
    np.testing.assert_allclose(em.mag_a, d.mag_a, atol=2e-3)
    np.testing.assert_allclose(em.mag_floor, d.mag_floor, atol=2e-4)
    np.testing.assert_allclose([em.plx_floor, em.plx_c, em.plx_gamma], [d.plx_floor, d.plx_c, d.plx_gamma],
                               rtol=1e-3)
    for a, b in zip(em.mask_codes, d.mask_codes):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(em.mask_counts, d.mask_counts):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(em.ebv_lnmean, d.ebv_lnmean, atol=2e-4)
    np.testing.assert_allclose(em.theta_lnmean, d.theta_lnmean, atol=2e-4)


def test_example_runs_tiny(tmp_path, monkeypatch, capsys, released_model):
    monkeypatch.setattr(sys, "argv", ["simulate_mock.py", "40", str(tmp_path / "m.parquet"), str(RELEASED_MODEL)])
    runpy.run_path(str(REPO / "examples" / "simulate_mock.py"), run_name="__main__")
    assert "40 stars written" in capsys.readouterr().out
