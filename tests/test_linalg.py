"""photoinfer.linalg: small dense linear algebra without LAPACK custom calls (the XLA:CPU pool deadlock of
jaxlib 0.10 – 0.11.0, docstring of photoinfer/linalg.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import seed
from test_train import tiny  # noqa: F401  (fixture)

from photoinfer import linalg as la


@pytest.mark.parametrize("n", [1, 3, 4, 5, 13])
def test_small_linalg_matches_numpy(n):
    """Batched SPD stacks: the factor, solves, inverse and log-determinant agree with float64 numpy to float32
    rounding (relative 1e-4 at condition numbers ≤ ~100), vectors and matrices as right-hand sides."""
    rng = np.random.default_rng(seed())
    M = rng.normal(size=(6, n, n))
    A = M @ M.transpose(0, 2, 1) + n * np.eye(n)
    b, Bm = rng.normal(size=(6, n)), rng.normal(size=(6, n, 2))
    A32 = jnp.asarray(A, jnp.float32)
    L = np.linalg.cholesky(A)
    close = lambda x, y: np.testing.assert_allclose(np.asarray(x, np.float64), y, rtol=1e-4, atol=1e-4 * np.abs(y).max())  # noqa: E731
    close(la.cholesky(A32), L)
    close(la.solve_spd(A32, jnp.asarray(b, jnp.float32)), np.linalg.solve(A, b[..., None])[..., 0])
    close(la.solve_spd(A32, jnp.asarray(Bm, jnp.float32)), np.linalg.solve(A, Bm))
    close(la.inv_spd(A32), np.linalg.inv(A))
    close(la.logdet_spd(A32), np.linalg.slogdet(A)[1])
    close(la.solve_lower_t(jnp.asarray(L, jnp.float32), jnp.asarray(b, jnp.float32)),
          np.linalg.solve(L.transpose(0, 2, 1), b[..., None])[..., 0])
    close(la.inverse_lower(jnp.asarray(L, jnp.float32)), np.linalg.inv(L))
    close(jax.vmap(la.cholesky)(A32), L)
    assert np.isnan(np.asarray(la.cholesky(jnp.asarray([[1.0, 2.0], [2.0, 1.0]])))).any()  # not positive-definite


def test_small_linalg_gradients_match_lapack():
    """Through a symmetric construction A(w) = MᵀM + I the gradients of a solve and a log-determinant equal those
    of jnp.linalg (the factor reads only A's lower triangle, which carries all of A(w))."""
    rng = np.random.default_rng(seed())
    M = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=4), jnp.float32)
    A = lambda M: M.T @ M + jnp.eye(4)  # noqa: E731
    g1 = jax.grad(lambda M: jnp.sum(la.solve_spd(A(M), b) ** 2) + la.logdet_spd(A(M)))(M)
    g0 = jax.grad(lambda M: jnp.sum(jnp.linalg.solve(A(M), b) ** 2) + jnp.linalg.slogdet(A(M))[1])(M)
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-5)


def test_training_and_inference_kernels_make_no_lapack_calls(released_model, tiny):  # noqa: F811
    """The jitted, batched per-star functions of training (profiled loss, Gauss–Newton curvature, joint fit,
    whitening) and inference (the guide) lower to HLO without a LAPACK custom call: batched
    LAPACK calls deadlock XLA:CPU's thread pool under jaxlib 0.10 (photoinfer/linalg.py)."""
    from photoinfer import likelihood as lik
    from photoinfer.evaluate import star_data
    from photoinfer.infer.guide import build_mixture, log_q
    from photoinfer.train.gauss_newton import curvature
    from photoinfer.train.latent import star_joint_fit
    from photoinfer.train.population import PopulationPrior
    from photoinfer.train.profile import star_profile_loss
    p, n, B = released_model.params, 8, len(released_model.bands)
    z, W = jnp.zeros((n, 4)), jnp.broadcast_to(jnp.eye(B), (n, B, B))
    L3, iv, y = jnp.broadcast_to(jnp.eye(3), (n, 3, 3)), jnp.ones(n), jnp.zeros((n, B))
    prior = PopulationPrior(jnp.ones(2) / 2, jnp.zeros((2, 3)), jnp.broadcast_to(jnp.eye(3), (2, 3, 3)))
    centres = jnp.asarray(np.random.default_rng(0).normal(size=(64, 5)), jnp.float32)
    d = jax.tree_util.tree_map(lambda a: a[:n], star_data(tiny))
    med, std = jnp.asarray(released_model.theta_med, jnp.float32), jnp.asarray(released_model.theta_std, jnp.float32)
    lowered = [
        jax.jit(jax.vmap(lambda *a: star_profile_loss(p, *a, log_det=True)[0])).lower(z[:, :3], z[:, 3], z[:, :3], L3, iv, iv, y, W),
        jax.jit(curvature).lower(p, z, W, L3, iv),
        jax.jit(jax.vmap(lik.whitening_matrix)).lower(W, jnp.ones((n, B), bool)),
        jax.jit(jax.vmap(lambda s, t, e: star_joint_fit(p, med, std, s, t, e, prior=prior))).lower(d, d.theta, d.E0),
        jax.jit(lambda c, u: jax.vmap(lambda uu: log_q(uu, build_mixture(c)))(u)).lower(centres, jnp.zeros((n, 5))),
    ]
    for lw in lowered:
        calls = [ln for ln in lw.as_text().lower().splitlines() if "custom_call" in ln]
        assert not [ln for ln in calls if "lapack" in ln], calls[:3]  # (jax >= 0.11 lowers lgamma to a custom call)
