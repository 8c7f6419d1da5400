"""The grid guide (photoinfer.infer.guide): the mixture's density and draws, the invariance of its
Metropolis–Hastings move, and guided NUTS against the grid on a star with a dwarf and a giant solution."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import seed


def _mixture(rng, K=8, d=5, n_neighbours=3):
    """A mixture on K > d centres (with K ≤ d their covariance is singular and the neighbours depend on rounding)."""
    from photoinfer.infer.guide import build_mixture
    centres = rng.normal(0, 1, (K, d)) * np.array([1.0, 2.0, 0.5, 1.0, 3.0])[:d]
    return centres, build_mixture(jnp.asarray(centres), n_neighbours=n_neighbours)


def test_mixture_density_is_the_sum_of_its_t_kernels():
    from photoinfer.infer.guide import NU, log_q
    rng = np.random.default_rng(seed())
    centres, mix = _mixture(rng)
    for u in rng.normal(0, 2, (5, 5)):
        want = np.log(np.mean([stats.multivariate_t(loc=c, shape=np.asarray(L @ L.T), df=NU).pdf(u)
                               for c, L in zip(centres, np.asarray(mix.chol, np.float64))]))
        assert float(log_q(jnp.asarray(u), mix)) == pytest.approx(want, abs=2e-4)


def test_mixture_draws_have_the_mixtures_moments():
    """Mean to 5 standard errors; variances to 5 standard errors of a t₅ variance (excess kurtosis 6)."""
    from photoinfer.infer.guide import NU, draw_q
    rng = np.random.default_rng(seed())
    centres, mix = _mixture(rng)
    n = 40_000
    u = np.asarray(jax.vmap(lambda k: draw_q(k, mix))(jax.random.split(jax.random.PRNGKey(seed()), n)), np.float64)
    shapes = np.asarray(mix.chol, np.float64) @ np.swapaxes(np.asarray(mix.chol, np.float64), -1, -2)
    mean = centres.mean(0)
    cov = np.mean(NU / (NU - 2) * shapes + centres[:, :, None] * centres[:, None, :], 0) - np.outer(mean, mean)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(u.mean(0) - mean) < 5 * sd / np.sqrt(n))
    assert np.all(np.abs(u.var(0) / np.diag(cov) - 1) < 5 * np.sqrt(8.0 / n))


def test_imh_move_leaves_the_target_invariant():
    """Chains started at exact draws of a correlated Gaussian stay distributed as it after 20 moves from a
    proposal that is centred and shaped wrongly (without the q ratio of Eq. G2 they would drift to q)."""
    from blackjax.mcmc.hmc import HMCState

    from photoinfer.infer.guide import build_mixture, imh_step
    rng = np.random.default_rng(seed())
    cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    prec = jnp.asarray(np.linalg.inv(cov))

    def logdensity(u):
        return -0.5 * u @ prec @ u

    mix = build_mixture(jnp.asarray(rng.normal(0.7, 0.6, (64, 2))), n_neighbours=16)
    n = 4000
    u0 = jnp.asarray(rng.multivariate_normal([0, 0], cov, n))
    states = jax.vmap(lambda u: HMCState(u, logdensity(u), jax.grad(logdensity)(u)))(u0)

    def run(state, key):
        def step(s, k):
            s, acc = imh_step(k, s, logdensity, mix)
            return s, acc
        return jax.lax.scan(step, state, jax.random.split(key, 20))

    out, acc = jax.vmap(run)(states, jax.random.split(jax.random.PRNGKey(seed()), n))
    u = np.asarray(out.position, np.float64)
    assert 0.1 < float(np.mean(acc)) < 0.95                      # the proposal moves the chains
    white = u @ np.linalg.inv(np.linalg.cholesky(cov)).T
    for j in range(2):
        assert stats.kstest(white[:, j], "norm").pvalue > 1e-3
    np.testing.assert_allclose(np.asarray(out.logdensity), jax.vmap(logdensity)(out.position), rtol=1e-5, atol=1e-5)


def test_guided_nuts_weighs_dwarf_and_giant_as_the_grid(released_model):
    """A K dwarf without parallax has a giant solution 5 mag farther: guided chains move between the two,
    every chain sees both, and the giant's share of the draws matches the grid's (binomial, 4σ, with the
    draws' autocorrelation allowed for by the ESS)."""
    from photoinfer.catalog import Catalog
    from photoinfer.grid.methods import fit_with_method
    from photoinfer.infer.prior import build_prior
    rng = np.random.default_rng(seed())
    theta = np.array([[4700.0, 4.6, 0.0]])
    mag = np.asarray(released_model.predict_magnitudes(theta, np.array([9.0]), np.array([0.1])), np.float64)
    err = np.full_like(mag, 0.03)
    cat = Catalog.from_arrays(mag + rng.normal(0, np.sqrt(err ** 2 + 0.02 ** 2)), err)
    prior = build_prior(released_model)
    grid, _ = fit_with_method(released_model, cat, "grid", prior=prior, seed=seed(),
                              grid_settings=None)
    p_grid = float(np.mean(grid.samples["logg"] < 3.5))
    assert 0.05 < p_grid < 0.95, p_grid                          # a genuinely two-mode star
    res, _ = fit_with_method(released_model, cat, "nuts", prior=prior, seed=seed(), num_warmup=150,
                             num_samples=200, batch_size=1, refine=0)
    giant = np.asarray(res.samples["logg"][:, :, 0]) < 3.5          # (chain, draw)
    assert giant.any(axis=1).all() and (~giant).any(axis=1).all()   # every chain visits both modes
    assert float(np.mean(res.sample_stats["guide_accept"])) > 0.1
    ess = float(res.summary["ess_bulk_min"][0])
    p = giant.mean()
    n_grid = grid.samples["logg"].size
    assert abs(p - p_grid) < 4 * np.sqrt(p_grid * (1 - p_grid) * (1 / min(ess, giant.size) + 1 / n_grid))
