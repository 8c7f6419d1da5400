"""The grid guide: an independence proposal, built from a star's grid posterior, mixed into NUTS.

NUTS moves a chain locally: it crosses the low-density valleys between a star's dwarf and giant
solutions, or between the lobes of its Teff–[M/H]–E ridge, rarely or never, so chains that start
in different places disagree (r̂ > 1.01) and chains that start in one place miss the rest.  The
grid posterior (:mod:`photoinfer.grid.posterior`) already holds independent draws of the whole
posterior, every mode at its mass.  K of them, mapped to the sampler's coordinates u = (x, δ, ε)
(:func:`~photoinfer.infer.model.to_sampler`), are the centres c_k of a mixture of multivariate
Student-t kernels (ν = 5), each with the covariance Σ_k of its ``n_neighbours`` nearest centres
(nearest in the metric of the centres' own covariance), so that each kernel follows the local width
and orientation of its part of the posterior::

    q(u) = (1/K) Σ_k t_ν(u | c_k, h² Σ_k + ε Σ)                                           (G1)

(Σ the centres' covariance, ε = ``floor``, h = ``scale``).  After every NUTS transition a lane draws
u' ~ q, independently of where it is, and moves there with the independence Metropolis–Hastings
probability::

    α = min(1, p(u' | data) q(u) / (p(u | data) q(u')))                                     (G2)

NUTS and this move each leave p(u | data) invariant, so their composition does; q only sets how
often a lane jumps.  Where q resembles p the chains mix across modes and lobes in a few transitions,
and r̂ then measures the chains' agreement, not the distance between the places they started.  Where
q is poor (a mode the grid missed, a region it spreads too thin over) the move is rarely accepted and
NUTS does the work alone, as without the guide.  The t kernels' heavy tails keep p/q bounded where
the grid's draws are sparse.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln, logsumexp

from .. import linalg as la

__all__ = ["Mixture", "build_mixture", "log_q", "draw_q", "imh_step"]

NU = 5.0


class Mixture(NamedTuple):
    """The proposal (G1) of one lane: K Student-t kernels of dimension d."""

    centres: jnp.ndarray   # (K, d)
    chol: jnp.ndarray      # (K, d, d) lower Cholesky factors of the kernel scale matrices
    log_norm: jnp.ndarray  # (K,) ln of each kernel's normalization, including the 1/K weight


def build_mixture(centres, n_neighbours: int = 32, scale: float = 0.8, floor: float = 0.02) -> Mixture:
    """The mixture (G1) from K centres (K, d) in the sampler's coordinates.

    Parameters
    ----------
    centres : (K, d) float
        Posterior draws (the grid's), mapped to u.
    n_neighbours : int
        Centres (itself included) whose covariance is a kernel's scale matrix.
    scale : float
        h: the kernel scale relative to the neighbours' covariance.
    floor : float
        ε: the fraction of the centres' covariance added to every kernel (duplicated draws, flat directions).

    Returns
    -------
    Mixture
    """
    K, d = centres.shape
    n_neighbours = min(int(n_neighbours), K)
    mean = centres.mean(axis=0)
    dev = centres - mean
    sigma = dev.T @ dev / max(K - 1, 1) + 1e-6 * jnp.eye(d)
    white = la.solve_lower(la.cholesky(sigma), dev.T).T   # (K, d)
    d2 = jnp.sum((white[:, None, :] - white[None, :, :]) ** 2, axis=-1)
    _, idx = jax.lax.top_k(-d2, n_neighbours)                                                 # (K, n)
    nb = centres[idx]                                                                          # (K, n, d)
    nc = nb - nb.mean(axis=1, keepdims=True)
    local = jnp.einsum("kni,knj->kij", nc, nc) / max(n_neighbours - 1, 1)
    cov = scale ** 2 * local + floor * sigma
    chol = la.cholesky(cov)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    log_norm = (gammaln((NU + d) / 2) - gammaln(NU / 2) - 0.5 * d * jnp.log(NU * jnp.pi) - 0.5 * log_det
                - jnp.log(K))
    return Mixture(centres, chol, log_norm)


def log_q(u, mix: Mixture):
    """ln q(u) of (G1) at one point u (d,)."""
    d = u.shape[-1]
    r = la.solve_lower(mix.chol, u - mix.centres)
    m2 = jnp.sum(r ** 2, axis=-1)
    return logsumexp(mix.log_norm - 0.5 * (NU + d) * jnp.log1p(m2 / NU))


def draw_q(key, mix: Mixture):
    """One draw u (d,) from (G1): a kernel uniformly, then a multivariate t from it."""
    kk, kz, kg = jax.random.split(key, 3)
    K, d = mix.centres.shape
    k = jax.random.randint(kk, (), 0, K)
    z = jax.random.normal(kz, (d,))
    w = jax.random.gamma(kg, NU / 2) * 2.0 / NU          # χ²_ν / ν
    return mix.centres[k] + mix.chol[k] @ z / jnp.sqrt(w)


def imh_step(key, state, logdensity_fn, mix: Mixture):
    """The independence Metropolis–Hastings move (G2) of one lane.

    Parameters
    ----------
    key : PRNG key
    state : blackjax HMCState (position u, logdensity, logdensity_grad)
    logdensity_fn : callable u -> ln p(u | data) + const
    mix : Mixture

    Returns
    -------
    state : HMCState after the move; accepted : bool
    """
    kd, ka = jax.random.split(key)
    u_new = draw_q(kd, mix)
    lp_new, grad_new = jax.value_and_grad(logdensity_fn)(u_new)
    log_ratio = lp_new - state.logdensity + log_q(state.position, mix) - log_q(u_new, mix)
    accept = jnp.isfinite(lp_new) & (jnp.log(jax.random.uniform(ka)) < log_ratio)
    new = type(state)(u_new, lp_new, grad_new)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, state), accept
