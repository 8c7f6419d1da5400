"""Tests of photoinfer.priors against closed forms and direct numerical integration."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize

from photoinfer import priors as P
from photoinfer.model.stellar_model import ValidityGrid

REPO = Path(__file__).parents[1]
GREEN2020 = REPO / ".." / "shared" / "data" / "green2020"
MODEL_FILE = GREEN2020 / "green2020_nn_model.h5"

# float32 evaluation: relative rounding ~6e-8 per operation; exponents of O(10) lose ~1e-6 absolute.
F32_LOG_TOL = 2e-5


def _f64(fn):
    """A scalar float64 wrapper of a jitted JAX function (for scipy.integrate)."""
    j = jax.jit(fn)
    return lambda *a: float(j(*a))


# ---------------------------------------------------------------- parameter sets

def test_parameter_sets_by_name_and_overrides():
    assert P.galactic_params("bayestar") == P.BAYESTAR
    assert P.galactic_params("BRUTUS") == P.BRUTUS
    b = P.BAYESTAR
    assert (b.R_sun, b.Z_sun, b.thin_H, b.thin_L, b.thick_weight, b.thick_H, b.thick_L) == \
        (8000.0, 25.0, 245.0, 2150.0, 0.13, 743.0, 3261.0)
    assert (b.halo_weight, b.halo_slope_inner, b.halo_slope_outer, b.halo_r_break, b.halo_core) == \
        (0.0030, -2.62, -3.8, 27800.0, 500.0)
    assert b.halo_q_center == b.halo_q_inf == 0.70
    r = P.BRUTUS
    assert (r.R_sun, r.thin_H, r.thin_L, r.thick_weight, r.thick_H, r.thick_L) == \
        (8200.0, 300.0, 2600.0, 0.04, 900.0, 2000.0)
    assert (r.halo_slope_inner, r.halo_q_center, r.halo_q_inf) == (-4.2, 0.2, 0.8)
    o = P.galactic_params("brutus", thin_H=350, halo_weight=0.01)
    assert o.thin_H == 350.0 and o.halo_weight == 0.01 and o.thin_L == P.BRUTUS.thin_L
    assert P.galactic_params(o, thin_L=1000.0).thin_H == 350.0
    with pytest.raises(ValueError, match="unknown Galactic parameter set"):
        P.galactic_params("besancon")
    with pytest.raises(ValueError, match="unknown Galactic parameter"):
        P.galactic_params("bayestar", thin_scale=1.0)
    # overrides change the prior; params are pytrees that jit traces
    f = jax.jit(P.log_prior_mu)
    assert float(f(10.0, 90.0, 30.0, o)) != pytest.approx(float(f(10.0, 90.0, 30.0, P.BRUTUS)))


# ---------------------------------------------------------------- geometry

def test_galactic_centre_direction():
    p = P.BAYESTAR
    mu = jnp.linspace(5.0, 5 * np.log10(p.R_sun / 10.0), 200)
    R, Z = P.galactocentric_rz(mu, 0.0, 0.0, p)
    d = np.asarray(P.distance_pc(mu))
    assert np.all(np.diff(np.asarray(R)) < 0)                 # R decreases towards the centre
    np.testing.assert_allclose(np.asarray(R), p.R_sun - d, rtol=1e-5, atol=0.05)
    assert float(R[-1]) < 0.05                                 # R ≈ 0 at d = R⊙
    np.testing.assert_allclose(np.asarray(Z), p.Z_sun)
    # anticentre: R grows as R⊙ + d; towards the pole: R = R⊙, Z = Z⊙ + d
    R2, _ = P.galactocentric_rz(10.0, 180.0, 0.0, p)
    assert float(R2) == pytest.approx(p.R_sun + 1000.0, rel=1e-6)
    R3, Z3 = P.galactocentric_rz(10.0, 37.0, 90.0, p)
    assert float(R3) == pytest.approx(p.R_sun, rel=1e-6) and float(Z3) == pytest.approx(1025.0, rel=1e-6)
    # the gradient stays finite on the Galactic centre itself
    g = jax.grad(lambda m: P.log_prior_mu(m, 0.0, 0.0, p))(5 * np.log10(p.R_sun / 10.0))
    assert np.isfinite(float(g))


# ---------------------------------------------------------------- densities

THIN_ONLY = P.galactic_params("bayestar", thick_weight=0.0, halo_weight=0.0)


def test_thin_disk_scale_height_and_length():
    p = THIN_ONLY
    ln = jax.jit(lambda R, Z: P.log_number_density(R, Z, p))
    n0 = float(ln(p.R_sun, p.Z_sun))
    assert n0 == pytest.approx(0.0, abs=F32_LOG_TOL)             # local thin-disk density is the unit
    assert float(ln(p.R_sun, p.Z_sun + p.thin_H)) - n0 == pytest.approx(-1.0, abs=F32_LOG_TOL)
    assert float(ln(p.R_sun, -p.Z_sun - p.thin_H)) - n0 == pytest.approx(-1.0, abs=F32_LOG_TOL)
    assert float(ln(p.R_sun + p.thin_L, p.Z_sun)) - n0 == pytest.approx(-1.0, abs=F32_LOG_TOL)
    # numerically: the n-weighted mean |Z| is H and the mean R - R⊙ beyond the Sun is L
    n = _f64(lambda Z: jnp.exp(ln(p.R_sun, Z)))
    num, _ = integrate.quad(lambda z: z * n(z), 0, 40 * p.thin_H, limit=200)
    den, _ = integrate.quad(n, 0, 40 * p.thin_H, limit=200)
    assert num / den == pytest.approx(p.thin_H, rel=1e-5)
    nR = _f64(lambda R: jnp.exp(ln(R, p.Z_sun)))
    num, _ = integrate.quad(lambda r: (r - p.R_sun) * nR(r), p.R_sun, p.R_sun + 40 * p.thin_L, limit=200)
    den, _ = integrate.quad(nR, p.R_sun, p.R_sun + 40 * p.thin_L, limit=200)
    assert num / den == pytest.approx(p.thin_L, rel=1e-5)


@pytest.mark.parametrize("name", ["bayestar", "brutus"])
def test_thick_disk_scale_height(name):
    p = P.galactic_params(name)
    ln = jax.jit(lambda Z: P.log_disk_density(p.R_sun, Z, p.R_sun, p.Z_sun, p.thick_H, p.thick_L,
                                              p.thick_R_smooth, p.thick_weight))
    assert float(ln(p.Z_sun + p.thick_H) - ln(p.Z_sun)) == pytest.approx(-1.0, abs=F32_LOG_TOL)


def test_bayestar_halo_known_values_and_break():
    p = P.BAYESTAR
    lh = jax.jit(lambda R, Z: P.log_halo_density(R, Z, p))
    # at the Sun: 0.003 ((R⊙² + (Z⊙/q)² + core²)/R⊙²)^(-2.62/2)
    ref = np.log(0.003) - 1.31 * np.log((8000**2 + (25 / 0.7) ** 2 + 500**2) / 8000**2)
    assert float(lh(8000.0, 25.0)) == pytest.approx(ref, abs=F32_LOG_TOL)
    # flattening: a point at height Z on the axis equals one at R = Z/q in the plane
    assert float(lh(0.0, 0.7 * 12000.0)) == pytest.approx(float(lh(12000.0, 0.0)), abs=1e-5)
    # local log-slopes: -2.62 inside, -3.8 beyond 27.8 kpc; continuous at the break
    slope = jax.jit(jax.grad(lambda lnr: P.log_halo_density(jnp.sqrt(jnp.exp(2 * lnr) - 500.0**2), 0.0, p)))
    assert float(slope(np.log(15000.0))) == pytest.approx(-2.62, abs=1e-4)
    assert float(slope(np.log(60000.0))) == pytest.approx(-3.8, abs=1e-4)
    rb = np.sqrt(27800.0**2 - 500.0**2)
    assert float(lh(rb * (1 + 1e-4), 0.0) - lh(rb * (1 - 1e-4), 0.0)) == pytest.approx(0.0, abs=1e-3)


def _brutus_logn_halo_kpc(R, Z, R_solar=8.2, Z_solar=0.025, R_smooth=2.0, eta=4.2, q_ctr=0.2, q_inf=0.8, r_q=6.0):
    """brutus's ``logn_halo`` written out independently (kpc) from its documented formula."""
    def reff(R, Z):
        r = np.hypot(R, Z)
        q = q_inf - (q_inf - q_ctr) * np.exp(1.0 - np.sqrt(r**2 + r_q**2) / r_q)
        return np.sqrt(R**2 + (Z / q) ** 2 + R_smooth**2)
    return -eta * np.log(reff(R, Z) / reff(R_solar, Z_solar))


def test_brutus_components_match_brutus_formulas():
    p = P.BRUTUS
    R = np.array([0.5, 4.0, 8.2, 12.0, 30.0])
    Z = np.array([0.1, -2.0, 0.025, 5.0, 20.0])
    ours = np.asarray(P.log_number_density_components(R * 1e3, Z * 1e3, p))
    halo = np.log(0.005) + _brutus_logn_halo_kpc(R, Z)
    thin = -(np.sqrt(R**2 + 4.0) - 8.2) / 2.6 - (np.abs(Z) - 0.025) / 0.3
    thick = np.log(0.04) - (np.sqrt(R**2 + 4.0) - 8.2) / 2.0 - (np.abs(Z) - 0.025) / 0.9
    np.testing.assert_allclose(ours, np.stack([thin, thick, halo], -1), rtol=1e-5, atol=1e-4)


def test_component_fractions():
    for p in (P.BAYESTAR, P.BRUTUS):
        mu = jnp.linspace(2.0, 20.0, 50)
        f = np.asarray(P.component_fractions(mu, 120.0, 60.0, p))
        np.testing.assert_allclose(f.sum(-1), 1.0, atol=1e-6)
        assert np.all(f >= 0)
        assert f[0, 0] > 0.85 and f[-1, 2] > 0.999            # thin disk nearby, halo far out
        fs = np.asarray(jax.jit(P.component_fractions_sky)(mu, p))
        np.testing.assert_allclose(fs.sum(-1), 1.0, atol=1e-6)


# ---------------------------------------------------------------- distance prior

def _bayestar_n_numpy(d, l, b):
    """Bayestar's n(d) written out independently in float64 (METHOD §8)."""
    lr, br = np.deg2rad(l), np.deg2rad(b)
    x = 8000.0 - d * np.cos(br) * np.cos(lr)
    y = d * np.cos(br) * np.sin(lr)
    R, Z = np.hypot(x, y), d * np.sin(br) + 25.0
    thin = np.exp(-(R - 8000) / 2150 - (abs(Z) - 25) / 245)
    thick = 0.13 * np.exp(-(R - 8000) / 3261 - (abs(Z) - 25) / 743)
    r = np.sqrt(R**2 + (Z / 0.7) ** 2 + 500**2)
    halo = 0.003 * (r / 8000) ** -2.62 if r <= 27800 else 0.003 * (27800 / 8000) ** -2.62 * (r / 27800) ** -3.8
    return thin + thick + halo


def test_mu_prior_matches_independent_bayestar_and_brutus():
    for mu in (6.0, 10.0, 14.0, 17.0, 19.0):
        d = 10 ** (mu / 5 + 1)
        ref = np.log(_bayestar_n_numpy(d, 120.0, 60.0)) + 3 * np.log(10) / 5 * mu
        assert float(P.log_prior_mu(mu, 120.0, 60.0, P.BAYESTAR)) == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("name", ["bayestar", "brutus"])
def test_mu_prior_peak_high_latitude(name):
    """The maximum of n d³ towards (l, b) = (120°, 60°) is where scipy's maximization puts it.

    At this latitude the disks give no local maximum: ln p rises until the halo's n d³ turns over
    (Bayestar: at the break, r_eff = 27.8 kpc, where the local slope of n d³ goes from +0.38 to −0.8).
    """
    p = P.galactic_params(name)
    l, b = 120.0, 60.0
    grid = jnp.linspace(4.0, 24.0, 20001)
    lp = np.asarray(jax.jit(lambda m: P.log_prior_mu(m, l, b, p))(grid))
    i = int(np.argmax(lp))
    assert 0 < i < len(grid) - 1                                      # an interior maximum
    f = _f64(lambda m: P.log_prior_mu(m, l, b, p))
    res = optimize.minimize_scalar(lambda m: -f(m), bounds=(14.0, 19.0), method="bounded",
                                   options={"xatol": 1e-7})
    assert float(grid[i]) == pytest.approx(res.x, abs=2e-3)            # grid step 1e-3
    if name == "bayestar":   # against the independent float64 implementation too
        g = lambda m: -np.log(_bayestar_n_numpy(10 ** (m / 5 + 1), l, b)) - 3 * np.log(10) / 5 * m
        ref = optimize.minimize_scalar(g, bounds=(14.0, 19.0), method="bounded", options={"xatol": 1e-7})
        assert res.x == pytest.approx(ref.x, abs=1e-3)
        # the kink: r_eff(μ_peak) = 27.8 kpc
        R, Z = P.galactocentric_rz(ref.x, l, b, p)
        r_eff = np.sqrt(float(R) ** 2 + (float(Z) / 0.7) ** 2 + 500.0**2)
        assert r_eff == pytest.approx(27800.0, rel=2e-3)


def test_mu_prior_peak_thin_disk_pole():
    """Thin disk only, towards the pole: n d³ = e^(−d/H) d³ peaks at d = 3H."""
    p = THIN_ONLY
    f = _f64(lambda m: P.log_prior_mu(m, 0.0, 90.0, p))
    res = optimize.minimize_scalar(lambda m: -f(m), bounds=(5.0, 15.0), method="bounded", options={"xatol": 1e-7})
    assert res.x == pytest.approx(5 * np.log10(3 * p.thin_H / 10.0), abs=1e-3)


@pytest.mark.parametrize("name", ["bayestar", "brutus"])
def test_sky_average_matches_dense_integration(name):
    """Eq. (G6) with the default 1024-direction lattice against a dense (l, sin b) trapezoid."""
    p = P.galactic_params(name)
    sb = np.linspace(-1.0, 1.0, 4001)
    l = np.linspace(0.0, 360.0, 181)
    Lg, SB = np.meshgrid(l, sb, indexing="ij")
    B = np.rad2deg(np.arcsin(SB))
    ln_n = jax.jit(lambda m: P.log_number_density(*P.galactocentric_rz(m, Lg, B, p), p))
    for mu in (6.0, 9.0, 12.0, 14.5, 16.0, 18.0):
        n = np.exp(np.asarray(ln_n(mu), np.float64))
        mean = np.trapezoid(np.trapezoid(n, sb, axis=1), l) / (360.0 * 2.0)
        ref = np.log(mean) + 3 * np.log(10) / 5 * mu
        got = float(P.log_prior_mu_sky(mu, p))
        # lattice quadrature error (measured < 0.003): inner-disk sightlines are narrow in l and b
        assert got == pytest.approx(ref, abs=0.006), mu
        assert float(P.log_prior_mu_sky(mu, p, n_dirs=4096)) == pytest.approx(ref, abs=0.003), mu


# ---------------------------------------------------------------- metallicity

@pytest.mark.parametrize("name", ["bayestar", "brutus"])
def test_metallicity_prior_normalized(name):
    p = P.galactic_params(name)
    for mu, l, b in [(6.0, 0.0, 0.0), (10.0, 90.0, 30.0), (13.0, 200.0, -45.0), (17.0, 10.0, 80.0)]:
        f = _f64(lambda x: jnp.exp(P.log_prior_feh(x, mu, l, b, p)))
        tot, err = integrate.quad(f, -6.0, 4.0, points=[-1.46, -0.9, -0.3], limit=200)
        assert tot == pytest.approx(1.0, abs=1e-5)


def test_metallicity_components():
    # disk mean at the plane and far above it (Eq. M3)
    assert float(P.disk_feh_mean(0.0)) == pytest.approx(-0.82 + 0.55 - 0.067, abs=1e-6)
    assert float(P.disk_feh_mean(1e5)) == pytest.approx(-0.82 - 0.067, abs=1e-6)
    # halo-dominated point: the prior is the halo Gaussian
    lp = float(P.log_prior_feh(-1.46, 19.0, 10.0, 80.0, P.BAYESTAR))
    assert lp == pytest.approx(-np.log(0.3) - 0.5 * np.log(2 * np.pi), abs=1e-4)
    # joint = mu prior + conditional
    j = float(P.log_prior_mu_feh(-0.4, 11.0, 40.0, 20.0, P.BRUTUS))
    s = float(P.log_prior_mu(11.0, 40.0, 20.0, P.BRUTUS) + P.log_prior_feh(-0.4, 11.0, 40.0, 20.0, P.BRUTUS))
    assert j == pytest.approx(s, abs=1e-4)


def test_sky_joint_marginalizes_to_sky_mu_prior():
    for mu in (8.0, 12.0, 16.0):
        f = _f64(lambda x: jnp.exp(P.log_prior_mu_feh_sky(x, mu, P.BAYESTAR) - P.log_prior_mu_sky(mu, P.BAYESTAR)))
        tot, _ = integrate.quad(f, -6.0, 4.0, points=[-1.46, -0.9, -0.3], limit=200, epsabs=1e-7, epsrel=1e-7)
        assert tot == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------- dust

def test_dust_priors_normalized_and_supported():
    f = _f64(lambda E: jnp.exp(P.log_prior_E_flat(E)))
    assert integrate.quad(f, 0.0, P.E_MAX)[0] == pytest.approx(1.0, abs=1e-6)
    lp = np.asarray(P.log_prior_E_flat(jnp.array([-0.1, 0.0, 3.0, 7.0, 7.1])))
    assert np.isneginf(lp[0]) and np.isneginf(lp[-1])
    np.testing.assert_allclose(lp[1:4], -np.log(7.0), rtol=1e-6)
    assert float(P.log_prior_E_flat(2.0, E_max=4.0)) == pytest.approx(-np.log(4.0), rel=1e-6)
    for E0, s in [(0.1, 0.3), (1.0, 0.1), (0.0, 0.05), (-0.2, 0.3)]:
        g = _f64(lambda E: jnp.exp(P.log_prior_E_gaussian(E, E0, s)))
        tot, _ = integrate.quad(g, 0.0, max(E0, 0) + 20 * s, points=[max(E0, 0.0)], limit=200)
        assert tot == pytest.approx(1.0, abs=1e-5)
        assert np.isneginf(float(P.log_prior_E_gaussian(-0.01, E0, s)))
    E0, s = P.map_informed_E_prior(0.5)
    assert float(s) == pytest.approx(np.hypot(0.05, 0.02), rel=1e-6)
    h = _f64(lambda E: jnp.exp(P.log_prior_E_map(E, 0.5)))
    assert integrate.quad(h, 0.0, 2.0, points=[0.5])[0] == pytest.approx(1.0, abs=1e-5)
    assert float(P.log_prior_E_map(0.3, 0.5, sigma=0.1)) == pytest.approx(
        float(P.log_prior_E_gaussian(0.3, 0.5, 0.1)), abs=1e-6)
    # gradients are finite inside and (zero) outside the support
    for fn in (lambda E: P.log_prior_E_flat(E), lambda E: P.log_prior_E_gaussian(E, 0.2, 0.1)):
        assert np.isfinite(float(jax.grad(fn)(0.5))) and np.isfinite(float(jax.grad(fn)(-0.5)))


# ---------------------------------------------------------------- stellar

def _synthetic_grid():
    """A Gaussian blob of 'training stars' whose extent in (Teff, logg) shrinks with [M/H]."""
    teff = np.linspace(2500.0, 9000.0, 40)
    logg = np.linspace(-2.0, 7.0, 36)
    feh = np.linspace(-2.5, 1.0, 15)
    T, G, F = np.meshgrid(teff, logg, feh, indexing="ij")
    w = 0.8 + 0.2 * (F + 2.5) / 3.5
    rho = np.exp(-0.5 * (((T - 5500) / (900 * w)) ** 2 + ((G - 4.0) / (0.9 * w)) ** 2 + ((F + 0.3) / 0.5) ** 2))
    return ValidityGrid(rho[None].astype(np.float32), teff, logg, feh, ("synthetic",))


def _slice_integral(sp, grid, feh, per_cell=16):
    """∬ exp ln p(T, g | [M/H]) dT dg over the grid's extent: trapezoid with ``per_cell`` and
    2 ``per_cell`` steps per cell (cell edges on nodes, so the integrand is smooth in each panel),
    Richardson-extrapolated (error O(h⁴))."""
    out = []
    for k in (per_cell, 2 * per_cell):
        T = np.linspace(grid.teff[0], grid.teff[-1], (len(grid.teff) - 1) * k + 1)
        G = np.linspace(grid.logg[0], grid.logg[-1], (len(grid.logg) - 1) * k + 1)
        TT, GG = np.meshgrid(T, G, indexing="ij")
        th = jnp.stack([jnp.asarray(TT), jnp.asarray(GG), jnp.full(TT.shape, feh)], -1)
        v = np.exp(np.asarray(jax.jit(sp.__call__)(th), np.float64))
        out.append(np.trapezoid(np.trapezoid(v, G, axis=1), T))
    return (4 * out[1] - out[0]) / 3


def _check_stellar(sp, grid, nodes):
    for k in nodes:
        # exact on [M/H] nodes, up to float32 evaluation and the extrapolated trapezoid
        assert _slice_integral(sp, grid, float(grid.feh[k])) == pytest.approx(1.0, abs=1e-4), k
    # inside vs outside the region of validity, gradients finite everywhere (also off the grid)
    v = np.argwhere(sp.valid)
    inside = np.array([grid.teff[v[0][0]], grid.logg[v[0][1]], grid.feh[v[0][2]]])
    inv = np.argwhere(~sp.valid)[0]
    outside = np.array([grid.teff[inv[0]], grid.logg[inv[1]], grid.feh[inv[2]]])
    lp_in, lp_out = float(sp(inside)), float(sp(outside))
    assert np.isfinite(lp_out) and lp_out < lp_in - sp.wall + 1.0
    assert bool(sp.in_valid_region(inside)) and not bool(sp.in_valid_region(outside))
    g = jax.jit(jax.grad(lambda t: sp(t)))
    for th in (inside, outside, np.array([20000.0, 9.0, 3.0]), np.array([5500.0, 4.2, -0.3])):
        assert np.all(np.isfinite(np.asarray(g(jnp.asarray(th, jnp.float32)))))
    assert float(sp(np.array([20000.0, 9.0, 3.0]))) < lp_out          # keeps falling off the grid


def test_stellar_prior_synthetic_grid():
    grid = _synthetic_grid()
    sp = P.StellarPrior.from_validity(grid)
    _check_stellar(sp, grid, nodes=[3, 7, 11])
    # between nodes, normalized to the accuracy of the log-linear interpolation in [M/H]
    mid = 0.5 * (grid.feh[7] + grid.feh[8])
    assert _slice_integral(sp, grid, mid) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="threshold"):
        P.StellarPrior.from_validity(grid, threshold=2.0)


def _released_model():
    if not MODEL_FILE.exists():
        pytest.skip(f"released model not found at {MODEL_FILE.resolve()} (shared data not mounted)")
    from photoinfer.io.models import load_model
    m = load_model(MODEL_FILE)
    if m.validity is None:
        pytest.skip(f"no green2020_input_density.h5 beside {MODEL_FILE}")
    return m


def test_stellar_prior_released_grid():
    m = _released_model()
    sp = P.StellarPrior.from_model(m)
    assert sp.valid.sum() == int((m.validity.density[0] >= 1e-2).sum())
    _check_stellar(sp, m.validity, nodes=[20, 30, 40])
    # the Sun is inside the region of validity
    assert bool(sp.in_valid_region(np.array([5780.0, 4.44, 0.0])))


def _smooth_slice_mass(sp, feh, wall=True, n=(401, 361)):
    """∬ p(T, g | [M/H]) dT dg over a box well beyond the density grid (trapezoid; the integrand is smooth)."""
    T = np.linspace(0.0, 12000.0, n[0])
    G = np.linspace(-5.0, 10.0, n[1])
    TT, GG = np.meshgrid(T, G, indexing="ij")
    th = jnp.stack([jnp.asarray(TT), jnp.asarray(GG), jnp.full(TT.shape, feh)], -1)
    lp = sp(th) if wall else (sp.log_joint(th) - sp.log_marginal_feh(feh) - np.log(sp.scale[0] * sp.scale[1]))
    v = np.exp(np.asarray(lp, np.float64))
    return np.trapezoid(np.trapezoid(v, G, axis=1), T)


def _gradient_jump_ratio(fn, start, stop):
    """max |Δ∇f| between neighbours at step h / the same at step 10 h along a segment (standardized).

    ~0.1 for a function with a continuous gradient; ~1 where the gradient jumps (a kink).
    """
    g = jax.jit(jax.vmap(jax.grad(fn)))
    out = []
    for n in (201, 2001):
        t = np.linspace(0.0, 1.0, n)[:, None]
        th = jnp.asarray(start + t * (stop - start), jnp.float32)
        out.append(np.max(np.abs(np.diff(np.asarray(g(th), np.float64) * (stop - start), axis=0))))
    return out[1] / out[0]


def test_smooth_stellar_prior_synthetic_grid():
    grid = _synthetic_grid()
    sp = P.SmoothStellarPrior.from_validity(grid, n_components=4)
    # normalization: exactly 1 without the wall (analytic marginal); the wall only removes mass
    for feh in (-1.0, -0.3, 0.4):
        assert _smooth_slice_mass(sp, feh, wall=False) == pytest.approx(1.0, abs=2e-3), feh
        m = _smooth_slice_mass(sp, feh)
        assert 0.85 < m <= 1.0 + 2e-3, (feh, m)
    # a Gaussian density is reproduced: ln q − ln ρ constant where ρ is well sampled
    T, G, F = np.meshgrid(grid.teff, grid.logg, grid.feh, indexing="ij")
    nodes = np.stack([T, G, F], -1)
    rho = grid.density[0] / grid.density[0].max()
    good = rho >= 0.1
    d = np.asarray(sp.log_joint(nodes))[good] - np.log(rho[good])
    assert np.ptp(d) < 0.1
    assert sp.valid.sum() == pytest.approx(int((rho >= 1e-2).sum()), rel=0.1)
    with pytest.raises(ValueError, match="threshold"):
        P.SmoothStellarPrior.from_validity(grid, threshold=2.0)


def test_smooth_stellar_prior_released_grid():
    m = _released_model()
    sp = P.SmoothStellarPrior.from_model(m)
    old = P.StellarPrior.from_model(m)
    for feh in (-1.0, -0.3, 0.2):
        assert _smooth_slice_mass(sp, feh, wall=False) == pytest.approx(1.0, abs=2e-3), feh
    # inside the well-populated metallicities the wall removes little; where the training density
    # never reaches the threshold (metal-poor) it removes most of the mass
    assert 0.95 < _smooth_slice_mass(sp, 0.0) <= 1.002
    assert _smooth_slice_mass(sp, -2.0) < 0.1
    # agreement with the gridded density where it is well sampled (ρ ≥ 0.1 of the peak): measured
    # weighted mean |Δ| = 0.16 nats, 90th percentile 0.38 (32 components)
    rho = np.asarray(m.validity.density[0], np.float64)
    rho = rho / rho.max()
    good = rho >= 0.1
    d = sp.log_p[good] - old.log_p[good]
    dev = np.abs(d - np.median(d))
    assert np.average(dev, weights=rho[good]) < 0.25 and np.percentile(dev, 90) < 0.6
    # the region of validity is about the same set of nodes
    both = (sp.valid & old.valid).sum()
    assert both > 0.9 * old.valid.sum() and sp.valid.sum() < 1.3 * old.valid.sum()
    assert bool(sp.in_valid_region(np.array([5780.0, 4.44, 0.0])))
    # smooth: the gradient has no jumps across the wall (the gridded prior's does)
    a, b = np.array([5200.0, 4.6, -0.2]), np.array([5200.0, 7.0, -0.2])      # main sequence → beyond it
    assert _gradient_jump_ratio(sp, a, b) < 0.3
    assert _gradient_jump_ratio(old, a, b) > 0.5
    g = jax.jit(jax.grad(lambda t: sp(t)))
    for th in ([20000.0, 9.0, 3.0], [5500.0, 4.2, -0.3], [3000.0, -1.0, -2.4]):
        assert np.all(np.isfinite(np.asarray(g(jnp.asarray(th, jnp.float32)))))
    # make_prior uses it by default
    assert isinstance(P.make_prior("bayestar", model=m).stellar, P.SmoothStellarPrior)


# ---------------------------------------------------------------- the bundle

@pytest.mark.parametrize("name", ["bayestar", "brutus"])
def test_total_log_prior_finite_gradients(name):
    sp = P.StellarPrior.from_validity(_synthetic_grid())
    pr = P.make_prior(name, stellar=sp)
    theta = jnp.array([5500.0, 4.2, -0.3])
    sky = jax.jit(jax.value_and_grad(pr.log_prior, argnums=(0, 1, 2)))
    pos = jax.jit(jax.value_and_grad(pr.log_prior, argnums=(0, 1, 2)))
    for lb in [(None, None), (120.0, 60.0), (0.0, 0.0), (300.0, -5.0)]:
        for mu, E in [(8.0, 0.1), (12.0, 1.5), (16.0, 0.01)]:
            v, g = sky(theta, mu, E) if lb[0] is None else pos(theta, mu, E, *lb)
            assert np.isfinite(float(v)) and all(np.all(np.isfinite(np.asarray(x))) for x in g), (lb, mu, E)
    # vmap over stars; position-free equals its parts
    th = jnp.tile(theta, (4, 1))
    mus, Es = jnp.linspace(8, 14, 4), jnp.full(4, 0.2)
    out = jax.vmap(pr.log_prior)(th, mus, Es)
    parts = P.log_prior_mu_feh_sky(th[:, 2], mus, pr.params) + sp(th) - np.log(P.E_MAX)
    np.testing.assert_allclose(np.asarray(out), np.asarray(parts), atol=0.01)  # tabulated sky prior: < 0.01
    assert np.isneginf(float(pr.log_prior(theta, 10.0, -0.1)))


def test_prior_bundle_options():
    pr = P.make_prior("bayestar", dust="gaussian", thin_H=300.0)
    assert pr.params.thin_H == 300.0 and pr.stellar is None
    v = float(pr.log_prior(jnp.array([5500.0, 4.2, -0.3]), 10.0, 0.3, 90.0, 30.0, E0=0.2, sigma_E0=0.1))
    ref = float(P.log_prior_mu_feh(-0.3, 10.0, 90.0, 30.0, pr.params) + P.log_prior_E_gaussian(0.3, 0.2, 0.1))
    assert v == pytest.approx(ref, abs=1e-5)
    with pytest.raises(ValueError):
        pr.log_prior(jnp.array([5500.0, 4.2, -0.3]), 10.0, 0.3)          # needs E0
    with pytest.raises(ValueError):
        P.make_prior("bayestar", dust="lognormal")
    with pytest.raises(ValueError):
        pr.log_prior_position(-0.3, 10.0, l=90.0)


def test_example_runs():
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, str(REPO / "examples" / "priors_along_sightline.py")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "bayestar" in r.stdout and "brutus" in r.stdout


def test_sky_table_matches_direct_sum():
    """The tabulated position-free prior equals the direct sky sum to < 0.01 in ln p."""
    from photoinfer.priors import GalacticPrior, log_prior_mu_feh_sky
    rng = np.random.default_rng(int(os.environ.get("PHOTOINFER_TEST_SEED", "20210")))
    mu = rng.uniform(4, 19, 300)
    feh = rng.uniform(-2.5, 0.8, 300)
    tab = GalacticPrior(tabulate_sky=True).log_prior_position(feh, mu)
    direct = log_prior_mu_feh_sky(feh, mu)
    np.testing.assert_allclose(np.asarray(tab), np.asarray(direct), atol=0.01)
