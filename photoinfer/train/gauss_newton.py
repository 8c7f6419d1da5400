"""Joint Gauss–Newton (Levenberg–Marquardt) steps on the network and every star's latent (θ, E): an
optimizer for ``latent_theta`` training (``TrainConfig.gn_steps``).

Adam on mini-batches leaves the network far from the minimum of the joint objective (measured: from
scratch M_G ends 0.14 mag from the truth, while started at the truth the same objective keeps it within
0.03), and alternating network steps with per-star fits moves slowly along the directions where the
stars' θ follow the network.  The objective is a sum of squares in (w, z_1 … z_N), w the ~1,700 network
parameters and z_i = (x_i, E_i) each star's standardized θ and E:

    F(w, z) = Σ_i ‖r_i‖² + (z_i − z̃_i)ᵀ Λ_i (z_i − z̃_i) + N_B · reg(w),   r_i = W_i (ŷ_i − f(w, z_i))

(z̃_i, Λ_i: the θ measurement — combined with the population prior's majorizer with ``"marginal"`` —
and the reddening prior; N_B = stars × bands, so reg is weighted as in the mean loss).  A Gauss–Newton
step solves the normal equations of the linearized residuals jointly; the per-star blocks are
eliminated exactly (the Schur complement of bundle adjustment), leaving a P × P system:

    A_i = J_ziᵀ J_zi + Λ_i,   b_i = J_ziᵀ r_i − Λ_i (z_i − z̃_i),   C_i = J_wiᵀ J_zi
    S = Σ_i J_wiᵀ J_wi − C_i A_i⁻¹ C_iᵀ + R,   g = Σ_i J_wiᵀ (r_i − J_zi A_i⁻¹ b_i) − ½∇reg
    (S + λ diag S) Δw = g,   Δz_i = A_i⁻¹ (b_i − C_iᵀ Δw)                               (Eq. GN1)

(J_w = W ∂f/∂w, J_z = W ∂f/∂z; R and ½∇reg from the L2 term and the L1 term's quadratic majorizer at
the current weights).  g and Δz_i are one reverse- and one forward-mode pass over all stars; S, the only
expensive part (P² per star), is summed over a random subsample of ``n_curvature`` stars and scaled to
all — an inexact Gauss–Newton matrix; every step is accepted only if F over all stars decreases
(Levenberg–Marquardt: λ ÷ 3 on success, × 10 on failure).

With ``log_det`` (``latent_theta="marginal"``) F also has each star's Laplace term D_i = ln det H_i,
H_i = J_ziᵀJ_zi + Λ_i (θ_i and E_i integrated instead of profiled; without it the population prior
alone biases M_G: measured 0.148 mag from the truth).  D is not a sum of squares: its gradient enters
the right-hand sides (b_i → b_i − ½∇_z D_i, g → g − ½∇_w Σ D_i) while its curvature is left out of the
Gauss–Newton matrix — a preconditioned gradient step on the small term, still accepted only if the whole
F falls (Eq. GN2); H_i has the parallax's weight at the star's current μ (``plx``: Eq. P3 of
:mod:`photoinfer.train.parallax`), or D_i adds the exact integral over the star's distance (Eq. P4).  With a distance prior, F has Σ_i 2 ln Z_i(w) too (Eq. P2 of
:mod:`photoinfer.train.parallax`, ``normalizer``), which depends on the network alone: its gradient joins
g the same way.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import linalg as la
from ..model import network

__all__ = ["joint_objective_terms", "log_det_h", "curvature", "gauss_newton_steps"]


def _lam4(Lam_x, ivar):
    return jnp.zeros((4, 4), Lam_x.dtype).at[:3, :3].set(Lam_x).at[3, 3].set(ivar)


def joint_objective_terms(params, z, y, W, z_tilde, Lam_x, ivar):
    """One star's data χ² ‖r‖² and prior term (z − z̃)ᵀ Λ (z − z̃) of F (module docstring)."""
    r = W @ (y - network.model_y(params, z[:3], z[3]))
    d = z - z_tilde
    return r @ r, d @ _lam4(Lam_x, ivar) @ d


def log_det_h(params, z, W, Lam_x, ivar, plx=None, y=None, z_tilde=None, galactic=None):
    """One star's Laplace term D = ln det (J_zᵀJ_z + Λ) at z (Eq. GN2); with ``plx`` (its row of
    :func:`~photoinfer.train.parallax.weight_terms`, 3 wide), the parallax's weight at the star's current μ (Eq. P3);
    with an 8-wide row of :func:`~photoinfer.train.parallax.integral_terms`, the exact μ integral instead (Eq. P4, which
    needs ŷ ``y``, the prior's centre ``z_tilde`` and the ``galactic`` model of the distance prior, None without one)."""
    def f(zz):
        ym = network.model_y(params, zz[:3], zz[3])
        return W @ ym, ym

    Jz, ym = jax.jacfwd(f, has_aux=True)(z)  # (the model's ŷ at z from the same forward pass)
    Lam = _lam4(Lam_x, ivar)
    H = Jz.T @ Jz + Lam
    if plx is None:
        return la.logdet_spd(H)
    from .parallax import integral_correction, log_det_weight_change
    L = la.cholesky(H)
    extra = (integral_correction(W @ (y - ym), Jz, W[:, 0], Lam, z - z_tilde, plx, galactic) if plx.shape[-1] == 8
             else log_det_weight_change(ym[0], Jz, W[:, 0], lambda u: la.cho_solve(L, u), plx))
    return 2.0 * jnp.sum(jnp.log(jnp.diag(L))) + extra


def _star_parts(params, z, y, W, z_tilde, Lam_x, ivar):
    """r (B,), J_z (B, 4), A⁻¹ b (4,), A⁻¹ (4, 4), b (4,) for one star (Eq. GN1)."""
    f = lambda zz: W @ network.model_y(params, zz[:3], zz[3])  # noqa: E731
    r = W @ y - f(z)
    Jz = jax.jacfwd(f)(z)
    Lam = _lam4(Lam_x, ivar)
    A = Jz.T @ Jz + Lam
    b = Jz.T @ r - Lam @ (z - z_tilde)
    Ainv = la.inv_spd(A)
    return r, Jz, Ainv @ b, Ainv, b


def _projected_jacobian(Jw, Jz, Lam_x, ivar):
    """L⁻¹ J_w (B, P) with L Lᵀ = I + J_z Λ⁻¹ J_zᵀ: by Woodbury (L⁻¹J_w)ᵀ(L⁻¹J_w) = J_wᵀJ_w − C A⁻¹ Cᵀ,
    one star's Schur term of Eq. GN1 as a sum of squares (no cancellation in float32)."""
    K = jnp.eye(Jz.shape[0], dtype=Jz.dtype) + Jz @ la.solve_spd(_lam4(Lam_x, ivar), Jz.T)
    return la.solve_lower(la.cholesky(K), Jw)


@jax.jit
def curvature(params, z, W, Lam_x, ivar):
    """S = Σ_i (J_wᵢᵀJ_wᵢ − C_i A_i⁻¹ C_iᵀ) over the given stars, (P, P) in the order of ``ravel_pytree(params)``:
    the Gauss–Newton matrix of Eq. GN1 with every star's latent (θ, E) eliminated — the Fisher information of
    the network's weights.  z (n, 4), W (n, B, B), Lam_x (n, 3, 3), ivar (n,) as in :func:`gauss_newton_steps`."""
    def rows(zz, Wz, L, iv):
        f = lambda p, x: Wz @ network.model_y(p, x[:3], x[3])  # noqa: E731
        Jw = jax.jacrev(f)(params, zz)
        Jw = jnp.concatenate([a.reshape(a.shape[0], -1) for a in jax.tree_util.tree_leaves(Jw)], axis=1)  # (B, P)
        return _projected_jacobian(Jw, jax.jacfwd(f, argnums=1)(params, zz), L, iv)
    M = jax.vmap(rows)(z, W, Lam_x, ivar)
    M = M.reshape(-1, M.shape[-1])
    return M.T @ M


def _reg_terms(params, l2, l1, nb):
    """½∇ and ½∇² (diagonal) of N_B·reg at ``params`` (L1 through its quadratic majorizer), flat (P,) each."""
    grad, curv = {}, {}
    for k, layer in params.items():
        grad[k], curv[k] = {}, {}
        for kk, a in layer.items():
            g = jnp.zeros_like(a)
            c = jnp.zeros_like(a)
            if kk == "kernel" and k in ("hidden_1", "hidden_2"):
                g, c = nb * l2 * a, jnp.full_like(a, nb * l2)
            elif kk == "kernel" and k == "R":
                aa = jnp.maximum(jnp.abs(a), 1e-3)
                g, c = 0.5 * nb * l1 * jnp.sign(a), 0.5 * nb * l1 / aa
            grad[k][kk], curv[k][kk] = g, c
    return ravel_pytree(grad)[0], ravel_pytree(curv)[0]


def gauss_newton_steps(params, z, y, W, z_tilde, Lam_x, ivar, *, n_bands: int, l2: float, l1: float,
                       n_steps: int = 10, n_curvature: int = 16384, batch_size: int = 2048, seed: int = 0,
                       damping: float = 1e-3, log_det: bool = False, normalizer=None, plx=None, galactic=None):
    """``n_steps`` Levenberg–Marquardt steps of Eq. GN1 on the training stars.

    Parameters
    ----------
    params : network parameters; z : (n, 4) standardized θ and E of the n training stars
    y : (n, B) ŷ; W : (n, B, B) photometric whitening factors
    z_tilde : (n, 4) the prior centre (x̃, E₀); Lam_x : (n, 3, 3) θ precision (standardized); ivar : (n,) 1/σ²_E₀
    n_bands, l2, l1 : the loss's band count and regularization
    n_curvature : stars in the subsample that forms S
    log_det : with each star's ln det H_i in F (Eq. GN2)
    plx : None or (n, 3), with ``log_det``: :func:`~photoinfer.train.parallax.weight_terms` of the stars, their
        parallax's weight in ln det H_i at their current μ (Eq. P3); or (n, 8),
        :func:`~photoinfer.train.parallax.integral_terms`: the exact μ integral (Eq. P4) with the distance prior
        ``galactic`` (None: none)
    normalizer : None or :class:`~photoinfer.train.parallax.Normalizer`: with its weight · Σ 2 ln Z_i in F
        (Eq. P2; a subsample of the training stars)

    Returns
    -------
    params, z : the updated network and (n, 4) latents; history : list of dict per step (F before and
    after, accepted, λ; for an accepted step also ``predicted``, the decrease of F the Gauss–Newton quadratic
    predicts for it: (F_before − F_after)/predicted near 1 where the quadratic describes F)
    """
    n = len(z)
    w0, unravel = ravel_pytree(params)
    P = w0.size
    nb = float(n * n_bands)
    bs = min(batch_size, n)
    n_batches = -(-n // bs)
    pad = n_batches * bs - n
    args = [jnp.asarray(np.concatenate([np.asarray(a), np.repeat(np.asarray(a)[:1], pad, 0)]))
            for a in (z, y, W, z_tilde, Lam_x, ivar, np.zeros((n, 3), np.float32) if plx is None else plx)]
    _, _, W_all, _, L_all, iv_all, _ = args
    valid = jnp.asarray(np.r_[np.ones(n), np.zeros(pad)], jnp.float32)
    if normalizer is not None:  # Σ 2 ln Z_i over its stars, × their weight, in chunks (Eq. P2)
        from .parallax import log_normalizer

        def chunk_2lnz(wv, *a):
            return 2.0 * jnp.sum(log_normalizer(unravel(wv), normalizer.draws, *a, normalizer.galactic))
        z_fn, z_grad = jax.jit(chunk_2lnz), jax.jit(jax.grad(chunk_2lnz))
        z_stars = normalizer.stars()
        chunks = [[a[i:i + bs] for a in z_stars] for i in range(0, len(z_stars[0]), bs)]

    def two_ln_z(wv):
        """weight · Σ 2 ln Z_i (0 without a normalizer)."""
        return 0.0 if normalizer is None else normalizer.weight * sum(float(z_fn(wv, *c)) for c in chunks)

    def two_ln_z_grad(wv):
        return normalizer.weight * sum(z_grad(wv, *c) for c in chunks)
    rng = np.random.default_rng([seed, 11])

    def batched(fn, *arrays):
        return [fn(*(a[i * bs:(i + 1) * bs] for a in arrays)) for i in range(n_batches)]

    @jax.jit
    def objective_batch(wv, zb, yb, Wb, ztb, Lb, ib, pb, vb):
        p = unravel(wv)
        c, q = jax.vmap(lambda *a: joint_objective_terms(p, *a))(zb, yb, Wb, ztb, Lb, ib)
        if log_det:
            q = q + jax.vmap(lambda *a: log_det_h(p, *a, galactic=galactic))(zb, Wb, Lb, ib, pb, yb, ztb)
        return jnp.sum(vb * (c + q))

    def objective(wv, zall):
        data = sum(float(v) for v in batched(lambda *a: objective_batch(wv, *a), zall, *args[1:], valid)) + two_ln_z(wv)
        p = unravel(wv)
        return data + nb * float(network.regularization(p, l2, l1))

    @jax.jit
    def gradient_batch(wv, zb, yb, Wb, ztb, Lb, ib, pb, vb):
        p = unravel(wv)
        r, Jz, Ainv_b, Ainv, b = jax.vmap(lambda *a: _star_parts(p, *a))(zb, yb, Wb, ztb, Lb, ib)
        gD = 0.0
        if log_det:  # Eq. GN2: b_i − ½∇_z D_i, and −½∇_w Σ D_i
            gz = jax.vmap(jax.grad(lambda zz, *a: log_det_h(p, zz, *a, galactic=galactic)))(zb, Wb, Lb, ib, pb, yb, ztb)
            Ainv_b = Ainv_b - 0.5 * jnp.einsum("nij,nj->ni", Ainv, gz)
            b = b - 0.5 * gz
            gD = -0.5 * jax.grad(lambda ww: jnp.sum(vb * jax.vmap(lambda *a: log_det_h(unravel(ww), *a, galactic=galactic))(
                zb, Wb, Lb, ib, pb, yb, ztb)))(wv)
        u = (r - jnp.einsum("nbk,nk->nb", Jz, Ainv_b)) * vb[:, None]
        # Σ J_wᵀ u with J_w = W ∂f/∂w: the VJP of w ↦ Σ_i W_i f(w, z_i) with cotangents u_i
        fw = lambda ww: jax.vmap(lambda zz, Wz: Wz @ network.model_y(unravel(ww), zz[:3], zz[3]))(zb, Wb)  # noqa: E731
        # (the per-star parts serve every λ's Δz; Σ bᵀA⁻¹b is the latents' own share of the predicted decrease)
        return jax.vjp(fw, wv)[1](u)[0] + gD, (Jz, Ainv_b, Ainv), jnp.sum(vb * jnp.einsum("ni,ni->n", Ainv_b, b))

    @jax.jit
    def dz_batch(wv, dw, zb, Wb, parts):
        Jz, Ainv_b, Ainv = parts
        fw = lambda ww: jax.vmap(lambda zz, Wz: Wz @ network.model_y(unravel(ww), zz[:3], zz[3]))(zb, Wb)  # noqa: E731
        Jw_dw = jax.jvp(fw, (wv,), (dw,))[1]  # (b, B)
        CT_dw = jnp.einsum("nbk,nb->nk", Jz, Jw_dw)
        return Ainv_b - jnp.einsum("nik,nk->ni", Ainv, CT_dw)

    w = w0
    zc = args[0]
    F = objective(w, zc)
    lam = damping
    history = []
    for _ in range(n_steps):
        grads, parts, z_share = zip(*batched(lambda *a: gradient_batch(w, *a), zc, *args[1:], valid))
        g = sum(grads)
        z_share = sum(float(v) for v in z_share)
        if normalizer is not None:  # −½∇_w of z_weight · Σ 2 ln Z_i (Eq. P2)
            g = g - 0.5 * two_ln_z_grad(w)
        rg, rc = _reg_terms(unravel(w), l2, l1, nb)
        g = g - rg
        sub = rng.choice(n, min(n_curvature, n), replace=False)
        sb = min(bs, len(sub))
        S = sum(np.asarray(curvature(unravel(w), *(a[sub[i:i + sb]] for a in (zc, W_all, L_all, iv_all))), np.float64)
                for i in range(0, len(sub) - sb + 1, sb))
        S = S * (n / (len(sub) // sb * sb)) + np.diag(np.asarray(rc, np.float64))
        g64 = np.asarray(g, np.float64)
        accepted = False
        for _ in range(8):
            # (float64: S spans many decades — whitened parallaxes of nearby stars against faint ones)
            dw = jnp.asarray(np.linalg.solve(S + lam * np.diag(np.diag(S)) + 1e-9 * np.trace(S) / P * np.eye(P), g64),
                             jnp.float32)
            dz = jnp.concatenate([dz_batch(w, dw, zc[i * bs:(i + 1) * bs], args[2][i * bs:(i + 1) * bs], parts[i])
                                  for i in range(n_batches)])
            w_new, z_new = w + dw, zc + dz
            F_new = objective(w_new, z_new)
            if np.isfinite(F_new) and F_new < F:
                # the decrease of F the Gauss–Newton model predicts for the step (Eq. GN1's quadratic, reduced over z)
                dw64 = np.asarray(dw, np.float64)
                predicted = z_share + 2.0 * g64 @ dw64 - dw64 @ S @ dw64
                history.append({"F_before": F, "F_after": F_new, "predicted": predicted, "lambda": lam, "accepted": True})
                w, zc, F, lam, accepted = w_new, z_new, F_new, lam / 3, True
                break
            lam *= 10
        if not accepted:
            history.append({"F_before": F, "F_after": F, "lambda": lam, "accepted": False})
            break
    return unravel(w), np.asarray(zc)[:n], history
