"""Initial points and inverse mass matrices for the per-star chains, finding separate modes.

1. **Candidates** — a coarse θ grid over the stellar prior's support (its nodes where the validity
   wall costs < 5 nats, every ``stride``-th along each axis); M(θ) and R(θ) precomputed once.
2. **Linear (μ, E)** at each candidate and star — weighted least squares of
   m̂ − M(θ) = μ + E R(θ) over the observed bands (weights 1/(σ_m² + σ_model²)), with the parallax
   as a pseudo-observation μ̂ = 10 − 5 log10 ϖ̂ when ϖ̂/σ_ϖ > 3; E clipped into [0, E_max].
3. **Scoring** — the exact log posterior (:func:`~photoinfer.infer.model.log_density`) at every
   candidate.
4. **Modes** — each candidate's mass is its posterior density times the Laplace volume of
   (μ, E), p(θ, μ̂, Ê | data) · 2π det(Σ_μE)^½ (equal θ cells); the modes are the basins of
   steepest ascent of this mass on the candidate lattice (each candidate points to its heaviest
   neighbour among the 26, pointers followed to a local maximum), so modes separated in any of
   Teff, logg, [M/H] (dwarf vs giant, metal-poor/high-E vs metal-rich/low-E) are found; a mode's
   mass is the sum over its basin.  When the heaviest mode holds ≥ ``dominant_mass`` (99 %) of
   the mass, every chain starts in it; otherwise the ``n_chains // 2`` heaviest modes (those
   above ``min_mass``) get chains in turn (chain c → mode c mod n_modes, so every mode has ≥ 2
   chains).  The modes' weights in the posterior are estimated after sampling from the chains
   themselves (:mod:`photoinfer.infer.modes`).
5. **Start and metric** — within its mode, a chain starts at a candidate drawn with weight
   p(candidate | data) (plus a uniform offset within the grid cell), so chains start spread over
   the mode; its initial inverse mass matrix is the p-weighted covariance of the mode's candidates,
   plus the linear (μ, E) covariance and the cell variance (a grid estimate of the posterior
   covariance).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .. import linalg as la
from .model import SIGMA_MODEL, ModelArrays, StarInputs, _predicted_magnitudes, log_density

__all__ = ["candidate_grid", "candidate_neighbours", "initial_points"]


def candidate_grid(prior, arrays: ModelArrays, stride: int = 1, wall: float = 5.0) -> np.ndarray:
    """Standardized θ candidates x (P, 3) on the nodes of the stellar prior's support (every ``stride``-th
    node), and the grid spacing (3,) in standardized units.

    The support is where the prior's validity wall costs less than ``wall`` nats (``log_wall``; the
    same region as :func:`photoinfer.grid.make_theta_grid`), not only the region of validity: the
    soft wall gives the prior ~18 % of its mass outside that region (e.g. metal-poor giants), and
    a star whose posterior lies there needs candidates there to start its chains in that mode.
    A prior without ``log_wall`` (the gridded ``StellarPrior``): its valid nodes."""
    sp = prior.prior.stellar
    if sp is None:  # no validity grid: a plain box around θ_med
        g = np.linspace(-2.5, 2.5, 21)
        x = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
        return x, np.full(3, g[1] - g[0], np.float32)
    if hasattr(sp, "log_wall") and hasattr(sp, "_nodes"):
        valid = np.asarray(sp.log_wall(sp._nodes())) >= -wall
    else:
        valid = np.asarray(sp.valid)
    valid = valid[::stride, ::stride, ::stride]
    idx = np.argwhere(valid) * stride
    theta = np.asarray(sp.origin) + idx * np.asarray(sp.step)
    x = (theta - np.asarray(arrays.theta_med)) / np.asarray(arrays.theta_std)
    return x.astype(np.float32), (stride * np.asarray(sp.step) / np.asarray(arrays.theta_std)).astype(np.float32)


def candidate_neighbours(x: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """(P, 27) indices of each candidate's lattice neighbours (itself first; missing neighbours → itself)."""
    ijk = np.rint((x - x.min(axis=0)) / cell).astype(np.int64)
    index = {tuple(v): i for i, v in enumerate(ijk)}
    offsets = [(0, 0, 0)] + [o for o in np.ndindex(3, 3, 3) if o != (1, 1, 1)]
    out = np.empty((len(x), 27), np.int32)
    for j, o in enumerate(offsets):
        d = np.asarray(o) - (0 if j == 0 else 1)
        out[:, j] = [index.get(tuple(v), i) for i, v in enumerate(ijk + d)]
    return out


def _linear_mu_E(s: StarInputs, M, R, E_max, sigma_model):
    """Weighted least-squares (μ, E) for one star at P candidates: M, R (P, B) → μ, E (P,), covariance (P, 2, 2)."""
    w = s.obs / (s.mag_err ** 2 + sigma_model ** 2)                   # (B,)
    d = s.mag - M                                                      # (P, B)
    good_plx = s.has_plx & (s.parallax > 3 * s.parallax_err)
    mu_plx = 10.0 - 5.0 * jnp.log10(jnp.where(good_plx, s.parallax, 1.0))
    w_plx = jnp.where(good_plx, 1.0 / (2.1715 * s.parallax_err / jnp.where(good_plx, s.parallax, 1.0)) ** 2, 0.0)
    a11 = jnp.sum(w) + w_plx
    a12 = jnp.sum(w * R, axis=-1)
    a22 = jnp.sum(w * R * R, axis=-1) + 1e-6
    b1 = jnp.sum(w * d, axis=-1) + w_plx * mu_plx
    b2 = jnp.sum(w * R * d, axis=-1)
    det = a11 * a22 - a12 ** 2
    E = jnp.clip((a11 * b2 - a12 * b1) / det, 1e-3, E_max * (1 - 1e-3))
    mu = (b1 - a12 * E) / a11                                          # μ re-solved at the clipped E
    a12b = jnp.broadcast_to(a12, E.shape)
    cov = jnp.stack([jnp.stack([a22, -a12b], -1), jnp.stack([-a12b, jnp.broadcast_to(a11, E.shape)], -1)], -2)
    return mu, E, cov / det[..., None, None]


def _star_starts(key, s, x_cand, nbr, cell, M, R, arrays, prior, n_chains, sigma_model, dominant_mass, min_mass):
    """One star's chain starts (C, 5), inverse mass matrices (C, 5, 5), the heaviest mode's mass fraction ()
    and each chain's mode (C,) int."""
    mu, E, cov_muE = _linear_mu_E(s, M, R, prior.E_max, sigma_model)
    e = E / prior.E_max
    z = jnp.concatenate([x_cand, mu[:, None], jnp.log(e / (1 - e))[:, None]], axis=-1)       # (P, 5)
    lp = jax.vmap(lambda zz: log_density(zz, s, arrays, prior, sigma_model))(z)
    lp = jnp.where(jnp.isfinite(lp), lp, -jnp.inf)
    # mass of each candidate's cell: density in (θ, μ, E) (drop the logit Jacobian dE/dζ = E(1 − e))
    # times the (μ, E) Laplace volume
    lmass = lp - jnp.log(E * (1 - e)) + 0.5 * la.logdet_spd(cov_muE)
    lmass = jnp.where(jnp.isfinite(lmass), lmass, -jnp.inf)
    # basins of steepest ascent on the lattice (pointer jumping to the local maxima)
    ptr = nbr[jnp.arange(nbr.shape[0]), jnp.argmax(lmass[nbr], axis=-1)]
    for _ in range(int(np.ceil(np.log2(max(nbr.shape[0], 2)))) + 1):
        ptr = ptr[ptr]
    w = jnp.exp(lmass - jnp.max(lmass))
    basin = jax.ops.segment_sum(w, ptr, num_segments=nbr.shape[0])                          # (P,) by root
    total = jnp.sum(basin)
    n_modes = max(n_chains // 2, 1)
    top_mass, top = jax.lax.top_k(basin, n_modes)
    dominant = top_mass[0] / total
    n_found = jnp.where(dominant >= dominant_mass, 1, jnp.maximum(jnp.sum(top_mass >= min_mass * total), 1))
    chain_mode = jnp.arange(n_chains) % n_found
    # (μ, E) conditional covariance in (μ, logit E) at each candidate
    jac = 1.0 / (E * (1 - e))
    cz = cov_muE * jnp.stack([jnp.stack([jnp.ones_like(jac), jac], -1), jnp.stack([jac, jac * jac], -1)], -2)
    keys = jax.random.split(key, n_chains)

    def one_chain(k, mode):
        wm = jnp.where(ptr == top[mode], lp, -jnp.inf)
        wm = jnp.exp(wm - jnp.max(wm))
        wm = wm / jnp.sum(wm)
        mean = wm @ z
        dz = z - mean
        cov = (dz * wm[:, None]).T @ dz
        cov = cov.at[3:, 3:].add(jnp.einsum("p,pij->ij", wm, cz))
        cov = cov + jnp.diag(jnp.concatenate([cell ** 2 / 12.0, jnp.array([1e-4, 1e-4])]))
        k1, k2 = jax.random.split(k)
        i = jax.random.choice(k1, z.shape[0], p=wm)
        jitter = jnp.concatenate([(jax.random.uniform(k2, (3,)) - 0.5) * cell, jnp.zeros(2)])
        return z[i] + jitter, cov

    z0, inv_mass = jax.vmap(one_chain)(keys, chain_mode)
    return z0, inv_mass, dominant, chain_mode


@partial(jax.jit, static_argnames=("prior", "n_chains", "sigma_model"))
def initial_points(keys, stars: StarInputs, x_cand, nbr, cell, arrays: ModelArrays, prior, n_chains: int = 4,
                   sigma_model: float = SIGMA_MODEL, dominant_mass: float = 0.99, min_mass: float = 1e-3):
    """Initial positions and inverse mass matrices for N stars × n_chains chains, and their modes.

    Parameters
    ----------
    keys : (N, 2) PRNG keys, one per star (so a star's start does not depend on its batch)
    stars : StarInputs with leading axis N
    x_cand : (P, 3) standardized θ candidates, cell : (3,) their grid spacing (:func:`candidate_grid`)
    nbr : (P, 27) lattice neighbours (:func:`candidate_neighbours`)
    arrays : ModelArrays; prior : InferencePrior (static)
    n_chains : int
    dominant_mass : float
        When the heaviest mode holds at least this fraction of the candidates' posterior mass,
        every chain starts in it (the other modes are negligible); otherwise chains are dealt to
        the ``n_chains // 2`` heaviest modes in turn.
    min_mass : float
        Modes lighter than this fraction of the mass get no chain.

    Returns
    -------
    z0 : (N, n_chains, 5); inv_mass : (N, n_chains, 5, 5)
    dominant : (N,) posterior mass fraction of the heaviest mode (< ``dominant_mass``: chains in several modes)
    chain_mode : (N, n_chains) int, the mode each chain starts in (0 = heaviest)
    """
    M = _predicted_magnitudes(arrays, x_cand, jnp.zeros(x_cand.shape[0]), jnp.zeros(x_cand.shape[0]))
    R = _predicted_magnitudes(arrays, x_cand, jnp.zeros(x_cand.shape[0]), jnp.ones(x_cand.shape[0])) - M
    cell = jnp.asarray(cell, jnp.float32)
    nbr = jnp.asarray(nbr)
    return jax.vmap(lambda k, s: _star_starts(k, s, x_cand, nbr, cell, M, R, arrays, prior, n_chains, sigma_model,
                                              dominant_mass, min_mass))(keys, stars)
