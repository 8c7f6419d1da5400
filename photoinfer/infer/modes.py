"""Stars whose chains end in separate modes: diagnostics within modes, modes weighted by their masses.

A star's chains may start in several modes (:func:`photoinfer.infer.init.initial_points`) or find
them on their own (e.g. a metal-poor, high-E and a metal-rich, low-E solution).  After sampling:

1. **Modes from the chains** — in the unconstrained coordinates z = (x, μ, logit E/E_max), chains
   a and b belong to one mode when the Mahalanobis distance of their means under the mean of their
   covariances is below ``separation`` (4): chains that overlap are one mode (connected components).
   Chains that disagree but overlap therefore stay together, and fail r̂ as they should.
2. One mode: the pooled chains are the posterior; r̂ and ESS over all chains as usual.
3. Several modes (the star is flagged ``MULTIMODAL``): mode k's mass Z_k is estimated by importance
   sampling in the sampler's coordinates u = (x, δ, logit E/E_max) (constant Jacobian, the same for
   every mode of a star), Z_k = mean_j p(u_j | data)/q_k(u_j) with u_j ~ q_k, a multivariate
   Student-t (ν = 5) with the mean and covariance of the mode's draws; w_k = Z_k / Σ Z.  r̂_k and bulk/tail ESS_k are
   computed within each mode (a mode with one chain: its split halves), the star's r̂ is max_k r̂_k
   and its ESS that of the weighted mixture, 1 / Σ_k (w_k² / ESS_k).  The output draws are a
   systematic resample of the pooled draws with weights w_k / (draws in mode k), randomly permuted
   over (chain, draw): equal-weight draws of the mixture (their chain order is not the sampler's;
   the summary's r̂/ESS are the within-mode values).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .. import linalg as la
from .model import SIGMA_MODEL, log_density_sampler, to_sampler, unconstrain

__all__ = ["chain_modes", "combine_modes", "mode_log_mass"]

_NU = 5.0


def chain_modes(z: np.ndarray, separation: float = 4.0) -> np.ndarray:
    """Mode label (C,) of each chain of one star from its draws z (C, S, d): connected components of
    "Mahalanobis distance between chain means < separation" (labels 0, 1, ... in order of first chain)."""
    C = z.shape[0]
    m = z.mean(axis=1)
    cov = np.stack([np.cov(z[c].T) for c in range(C)]) + 1e-9 * np.eye(z.shape[-1])
    label = np.arange(C)
    for a in range(C):
        for b in range(a + 1, C):
            d = m[a] - m[b]
            if d @ np.linalg.solve(0.5 * (cov[a] + cov[b]), d) < separation ** 2:
                label[label == label[b]] = label[a]
    _, out = np.unique(label, return_inverse=True)
    order = {v: i for i, v in enumerate(dict.fromkeys(out))}
    return np.array([order[v] for v in out])


@partial(jax.jit, static_argnames=("prior", "sigma_model", "n_draws"))
def mode_log_mass(key, mean, cov, stars, arrays, prior, sigma_model: float = SIGMA_MODEL, n_draws: int = 512):
    """ln Z of M modes by importance sampling with a Student-t (ν = 5) proposal, in the sampler's
    coordinates u = (x, δ, logit E/E_max) (:func:`~photoinfer.infer.model.log_density_sampler`; the
    curved μ ridge is straight there, so a t proposal fits a mode).

    Parameters
    ----------
    key : PRNG key; mean : (M, 5), cov : (M, 5, 5) in u; stars : StarInputs with leading axis M

    Returns
    -------
    (M,) ln Z (up to the same constant for every mode of a star)
    """
    d = mean.shape[-1]

    def one(k, mu, S, s):
        L = la.cholesky(S)
        k1, k2 = jax.random.split(k)
        g = jax.random.normal(k1, (n_draws, d))
        u = jax.random.chisquare(k2, _NU, (n_draws,)) / _NU
        y = g / jnp.sqrt(u)[:, None]
        z = mu + y @ L.T
        logq = (jax.scipy.special.gammaln((_NU + d) / 2) - jax.scipy.special.gammaln(_NU / 2)
                - 0.5 * d * jnp.log(_NU * jnp.pi) - jnp.sum(jnp.log(jnp.diag(L)))
                - 0.5 * (_NU + d) * jnp.log1p(jnp.sum(g * g, -1) / u / _NU))
        lp = jax.vmap(lambda zz: log_density_sampler(zz, s, arrays, prior, sigma_model))(z)
        r = jnp.where(jnp.isfinite(lp), lp - logq, -jnp.inf)
        return jax.scipy.special.logsumexp(r) - jnp.log(n_draws)

    keys = jax.random.split(key, mean.shape[0])
    return jax.vmap(one)(keys, mean, cov, stars)


@partial(jax.jit, static_argnames=("prior", "sigma_model"))
def _to_u(z, stars, arrays, prior, sigma_model: float = SIGMA_MODEL):
    """z (M, K, 5) → u (M, K, 5) for M stars (:func:`~photoinfer.infer.model.to_sampler`)."""
    return jax.vmap(lambda zz, s: jax.vmap(lambda v: to_sampler(v, s, arrays, prior, sigma_model))(zz))(z, stars)


def _systematic(rng, w: np.ndarray, n: int) -> np.ndarray:
    """n indices drawn by systematic resampling with weights w (sum 1)."""
    c = np.cumsum(w)
    c[-1] = 1.0
    return np.searchsorted(c, (rng.random() + np.arange(n)) / n)


def _split(samples: dict) -> dict:
    """One chain (1, S, n) → its two halves (2, S/2, n) (for a split r̂ of a single chain)."""
    return {p: v[:, : 2 * (v.shape[1] // 2)].reshape(2, v.shape[1] // 2, -1) for p, v in samples.items()}


def combine_modes(samples: dict, stars, arrays, prior, sigma_model: float = SIGMA_MODEL, seed: int = 0,
                  separation: float = 4.0, n_draws: int = 512):
    """Within-mode diagnostics and mass-weighted draws (see the module doc).

    Parameters
    ----------
    samples : dict name -> (chain, draw, N), constrained draws of teff, logg, feh, mu, E (NaN: not fit)
    stars : StarInputs with leading axis N (numpy); arrays : ModelArrays; prior : InferencePrior
    seed : int
    separation : float
        Chains whose means lie closer than this (Mahalanobis) are one mode.
    n_draws : int
        Importance draws per mode.

    Returns
    -------
    samples : dict, the draws with multimodal stars resampled (a new dict; others unchanged)
    diag : dict rhat_max, ess_bulk_min, ess_tail_min (N,) (within modes for multimodal stars)
    n_modes : (N,) int, modes found by the chains (0 for stars not fit)
    chain_weight : (N, chain), the mass of each chain's mode (1 where the star has one mode)
    """
    from ..posterior import diagnostics
    names = ("teff", "logg", "feh", "mu", "E")
    C, S, N = samples["teff"].shape
    phys = np.stack([np.asarray(samples[p], np.float64) for p in names], -1)            # (C, S, N, 5)
    fit = np.isfinite(phys).all(axis=(0, 1, 3))
    z = np.full(phys.shape, np.nan)
    if fit.any():
        z[:, :, fit] = np.asarray(unconstrain(*[jnp.asarray(phys[:, :, fit, i], jnp.float32) for i in range(5)],
                                              arrays, prior), np.float64)
    labels = np.zeros((N, C), np.int64)
    for i in np.flatnonzero(fit):
        labels[i] = chain_modes(z[:, :, i], separation)
    n_modes = np.where(fit, labels.max(axis=1) + 1, 0)
    diag = diagnostics(samples)
    out = {k: np.array(v, copy=True) for k, v in samples.items()}
    multi = np.flatnonzero(n_modes > 1)
    chain_weight = np.ones((N, C))
    if not len(multi):
        return out, diag, n_modes, chain_weight
    # importance-sampled mass of every (star, mode), in u
    sub = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)[multi]), stars)
    u = np.asarray(_to_u(jnp.asarray(np.moveaxis(z[:, :, multi], 2, 0).reshape(len(multi), C * S, 5), jnp.float32),
                         sub, arrays, prior, sigma_model), np.float64).reshape(len(multi), C, S, 5)
    pairs = [(j, i, k) for j, i in enumerate(multi) for k in range(n_modes[i])]
    mean = np.stack([u[j, labels[i] == k].reshape(-1, 5).mean(0) for j, i, k in pairs])
    cov = np.stack([np.cov(u[j, labels[i] == k].reshape(-1, 5).T) + 1e-6 * np.eye(5) for j, i, k in pairs])
    pairs = [(i, k) for _, i, k in pairs]
    rows = np.array([i for i, _ in pairs])
    lz = np.asarray(mode_log_mass(jax.random.PRNGKey(seed), jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32),
                                  jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)[rows]), stars),
                                  arrays, prior, sigma_model, n_draws), np.float64)
    rng = np.random.default_rng(seed)
    for i in multi:
        sel = rows == i
        w = np.exp(lz[sel] - np.max(lz[sel]))
        w = w / w.sum()
        chain_weight[i] = w[labels[i]]
        rh, eb, et = [], [], []
        for k in range(n_modes[i]):
            chains = np.flatnonzero(labels[i] == k)
            sub = {p: v[chains][:, :, i:i + 1] for p, v in samples.items()}
            dk = diagnostics(_split(sub) if len(chains) == 1 else sub)
            ek = diagnostics(sub)
            rh.append(dk["rhat_max"][0])
            eb.append(ek["ess_bulk_min"][0])
            et.append(ek["ess_tail_min"][0])
        diag["rhat_max"][i] = np.max(rh)
        diag["ess_bulk_min"][i] = 1.0 / np.sum(w ** 2 / np.asarray(eb))
        diag["ess_tail_min"][i] = 1.0 / np.sum(w ** 2 / np.asarray(et))
        counts = np.bincount(labels[i], minlength=n_modes[i])
        dw = np.repeat(w[labels[i]] / counts[labels[i]], S)                                # (C·S,) chain-major
        pick = rng.permutation(_systematic(rng, dw / dw.sum(), C * S))
        for p in out:
            out[p][:, :, i] = samples[p][:, :, i].reshape(-1)[pick].reshape(C, S)
    return out, diag, n_modes, chain_weight
