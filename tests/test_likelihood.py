"""The likelihood of METHOD §3–4: covariance, exact unobserved components, whitening, gradients, reddening update."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from photoinfer import likelihood as lik
from photoinfer.conventions import colour_matrix
from photoinfer.evaluate import star_data, update_reddening
from photoinfer.model import network


def _star(sample, i):
    return jax.tree_util.tree_map(lambda a: a[i], star_data(sample))


def _args(model):
    return model.params, jnp.asarray(model.theta_med, jnp.float32), jnp.asarray(model.theta_std, jnp.float32)


def test_photometric_covariance_is_A_diag_At(rng):
    sig = rng.uniform(0.01, 0.2, 13)
    A = colour_matrix(13)
    np.testing.assert_allclose(lik.photometric_covariance(jnp.asarray(sig)), A @ np.diag(sig ** 2) @ A.T, rtol=1e-5)


def test_whitening_is_exact_on_observed_components(rng):
    B = 6
    X = rng.normal(size=(B, B))
    C = X @ X.T + B * np.eye(B)
    obs = np.array([True, False, True, True, False, True])
    r = rng.normal(size=B)
    W = lik.whitening_matrix(jnp.asarray(C), jnp.asarray(obs))
    expect = r[obs] @ np.linalg.solve(C[np.ix_(obs, obs)], r[obs])
    np.testing.assert_allclose(float(lik.chi2(W, jnp.asarray(r))), expect, rtol=1e-4)
    # W^T W is the precision on the observed block and zero elsewhere
    P = np.asarray(lik.precision_matrix(jnp.asarray(C), jnp.asarray(obs)))
    np.testing.assert_allclose(np.asarray(W.T @ W), P, atol=1e-5)
    assert np.all(P[~obs] == 0) and np.all(P[:, ~obs] == 0)


def test_missing_band_is_limit_of_huge_error(released_model, sample_8k):
    """Exact treatment equals the released trick (σ = huge) in the limit."""
    p, med, std = _args(released_model)
    i = int(np.flatnonzero(sample_8k.observed.all(axis=1))[0])
    full = sample_8k.subset([i, i])
    full.mag[1, 5] = np.nan  # drop band i (index 5) from the second copy
    full.mag_err[1, 5] = np.nan
    s = star_data(full)
    s0 = jax.tree_util.tree_map(lambda a: a[0], s)
    s1 = jax.tree_util.tree_map(lambda a: a[1], s)
    big = s0._replace(sigma_m=s0.sigma_m.at[5].set(1e4))
    c_missing, n_missing = lik.star_chi2(p, med, std, s1, s1.E0, s1.sigma_E0)
    c_big, n_big = lik.star_chi2(p, med, std, big, big.E0, big.sigma_E0)
    assert int(n_missing) == int(n_big) - 1
    np.testing.assert_allclose(float(c_missing), float(c_big), rtol=1e-3)


def test_jacobian_matches_finite_differences(released_model):
    p, med, std = _args(released_model)
    theta = jnp.array([5100.0, 3.1, -0.4])
    J = np.asarray(lik.model_jacobian(p, med, std, theta, 0.7))
    h = np.array([1.0, 1e-3, 1e-3])
    for k in range(3):
        up = np.asarray(network.predict_y(p, med, std, theta.at[k].add(h[k]), 0.7), np.float64)
        dn = np.asarray(network.predict_y(p, med, std, theta.at[k].add(-h[k]), 0.7), np.float64)
        np.testing.assert_allclose(J[:, k], (up - dn) / (2 * h[k]), atol=2e-3 * np.abs(J[:, k]).max() + 1e-4)


def test_chi2_gradients(released_model, sample_8k):
    """check_grads of χ² with respect to the network parameters and to θ."""
    p, med, std = _args(released_model)
    s = _star(sample_8k, 3)
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), p)
        s64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype != bool else a, s)
        f = lambda params: lik.star_chi2(params, med.astype(jnp.float64), std.astype(jnp.float64), s64, s64.E0,  # noqa: E731
                                         s64.sigma_E0)[0]
        check_grads(f, (p64,), order=1, modes=("rev",), atol=1e-4, rtol=1e-4)
        g = lambda th: lik.star_chi2(p64, med.astype(jnp.float64), std.astype(jnp.float64), s64._replace(theta=th),  # noqa: E731
                                     s64.E0, s64.sigma_E0)[0]
        check_grads(g, (s64.theta,), order=1, modes=("fwd", "rev"), atol=1e-4, rtol=1e-3, eps=1e-3)


def test_reddening_update_is_gaussian_posterior_mode(rng):
    """E_post maximizes −½(d − E a)ᵀP(d − E a) − ½(E − E0)²/σ²; σ² is the inverse curvature."""
    B = 5
    X = rng.normal(size=(B, B))
    P = X @ X.T + np.eye(B)
    a = rng.uniform(0.5, 3, B)
    d = 0.4 * a + rng.normal(scale=0.05, size=B)
    E0, s0 = 0.3, 0.1
    E, var = lik.reddening_update(jnp.asarray(P), jnp.asarray(a), jnp.asarray(d), E0, s0, clip=False)
    grid = np.linspace(0, 1, 200001)
    logp = -0.5 * np.einsum("i,ij,j->", a, P, a) * grid ** 2 + (a @ P @ d) * grid - 0.5 * (grid - E0) ** 2 / s0 ** 2
    assert abs(float(E) - grid[np.argmax(logp)]) < 2e-5
    np.testing.assert_allclose(float(var), 1 / (a @ P @ a + 1 / s0 ** 2), rtol=1e-5)


def test_reddening_update_reproduces_released_fit(released_model, sample_8k):
    """METHOD §4: the released recipe reproduces the sample's r_fit and r_var (float32 here)."""
    E, var = update_reddening(released_model, star_data(sample_8k))
    np.testing.assert_allclose(E, sample_8k.extra["r_fit"], atol=1e-5)
    np.testing.assert_allclose(var, sample_8k.extra["r_var"], atol=1e-6)
