"""Initial points and inverse mass matrices for the per-star chains, finding separate modes.

1. **Candidates** — a coarse θ grid over the region of validity (the stellar prior's valid nodes,
   every ``stride``-th along each axis); M(θ) and R(θ) precomputed once.
2. **Linear (μ, E)** at each candidate and star — weighted least squares of
   m̂ − M(θ) = μ + E R(θ) over the observed bands (weights 1/(σ_m² + σ_model²)), with the parallax
   as a pseudo-observation μ̂ = 10 − 5 log10 ϖ̂ when ϖ̂/σ_ϖ > 3; E clipped into [0, E_max].
3. **Scoring** — the exact log posterior (:func:`~photoinfer.infer.model.log_density`) at every
   candidate.
4. **Modes** — the best candidate, then greedily the best candidates farther than ``separation``
   in standardized (Teff, logg) from every mode already chosen (dwarf vs giant; [M/H] is left to
   the sampler), kept when within ``delta_lnp`` of the best; each candidate belongs to its nearest
   mode centre, and a mode's mass is the sum of its candidates' posterior weights.  When the
   best point's mode holds ≥ ``dominant_mass`` (99 %) of the mass, every chain starts in it;
   otherwise chains are dealt to the modes in turn (chain c → mode c mod n_modes) and the star is
   flagged ``MULTIMODAL`` (r̂ across chains in different modes measures the modes' separation,
   not convergence).
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

from .model import SIGMA_MODEL, ModelArrays, StarInputs, _predicted_magnitudes, log_density

__all__ = ["candidate_grid", "initial_points"]


def candidate_grid(prior, arrays: ModelArrays, stride: int = 1) -> np.ndarray:
    """Standardized θ candidates x (P, 3) on the valid nodes of the stellar prior (every ``stride``-th node),
    and the grid spacing (3,) in standardized units."""
    sp = prior.prior.stellar
    if sp is None:  # no validity grid: a plain box around θ_med
        g = np.linspace(-2.5, 2.5, 21)
        x = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
        return x, np.full(3, g[1] - g[0], np.float32)
    valid = np.asarray(sp.valid)[::stride, ::stride, ::stride]
    idx = np.argwhere(valid) * stride
    theta = np.asarray(sp.origin) + idx * np.asarray(sp.step)
    x = (theta - np.asarray(arrays.theta_med)) / np.asarray(arrays.theta_std)
    return x.astype(np.float32), (stride * np.asarray(sp.step) / np.asarray(arrays.theta_std)).astype(np.float32)


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


def _mode_centres(x, lp, n_modes, separation, delta_lnp):
    """Indices (n_modes,) of mode centres among the candidates, -1 where no further mode exists."""
    best = jnp.argmax(lp)
    modes = [best]
    for _ in range(n_modes - 1):
        dist = jnp.min(jnp.stack([jnp.linalg.norm((x - x[m])[:, :2], axis=-1) for m in modes]), axis=0)
        ok = (dist > separation) & (lp > lp[best] - delta_lnp)
        for m in modes:
            ok = ok & (m >= 0)
        cand = jnp.argmax(jnp.where(ok, lp, -jnp.inf))
        modes.append(jnp.where(ok.any(), cand, -1))
    return jnp.stack(modes)


def _star_starts(key, s, x_cand, cell, M, R, arrays, prior, n_chains, separation, delta_lnp, sigma_model,
                 dominant_mass):
    """Start positions (C, 5), inverse mass matrices (C, 5, 5) of one star's chains, the dominant mode's mass ()."""
    mu, E, cov_muE = _linear_mu_E(s, M, R, prior.E_max, sigma_model)
    e = E / prior.E_max
    z = jnp.concatenate([x_cand, mu[:, None], jnp.log(e / (1 - e))[:, None]], axis=-1)       # (P, 5)
    lp = jax.vmap(lambda zz: log_density(zz, s, arrays, prior, sigma_model))(z)
    lp = jnp.where(jnp.isfinite(lp), lp, -jnp.inf)
    centres = _mode_centres(x_cand, lp, n_chains, separation, delta_lnp)                   # (C,)
    found = centres >= 0
    # every candidate belongs to its nearest mode centre (in standardized Teff, logg)
    d = jnp.stack([jnp.where(c >= 0, jnp.linalg.norm((x_cand - x_cand[jnp.maximum(c, 0)])[:, :2], axis=-1),
                             jnp.inf) for c in centres], axis=-1)                            # (P, C)
    member = jnp.argmin(d, axis=-1)
    # (μ, E) conditional covariance in (μ, logit E) at each candidate
    jac = 1.0 / (E * (1 - e))
    cz = cov_muE * jnp.stack([jnp.stack([jnp.ones_like(jac), jac], -1), jnp.stack([jac, jac * jac], -1)], -2)
    # posterior mass of each mode (candidates are cells of equal volume)
    lmass = jnp.stack([jnp.where(found[m], jax.scipy.special.logsumexp(jnp.where(member == m, lp, -jnp.inf)), -jnp.inf)
                       for m in range(n_chains)])
    dominant = jnp.exp(lmass[0] - jax.scipy.special.logsumexp(lmass))                        # the best point's mode
    order = jnp.argsort(~found)                                                             # found modes first
    n_found = jnp.where(dominant >= dominant_mass, 1, jnp.sum(found))
    chain_mode = order[jnp.arange(n_chains) % n_found]
    keys = jax.random.split(key, n_chains)

    def one_chain(k, mode):
        w = jnp.where(member == mode, lp, -jnp.inf)
        w = jnp.exp(w - jnp.max(w))
        w = w / jnp.sum(w)
        mean = w @ z
        dz = z - mean
        cov = (dz * w[:, None]).T @ dz
        cov = cov.at[3:, 3:].add(jnp.einsum("p,pij->ij", w, cz))
        cov = cov + jnp.diag(jnp.concatenate([cell ** 2 / 12.0, jnp.array([1e-4, 1e-4])]))
        k1, k2 = jax.random.split(k)
        i = jax.random.choice(k1, z.shape[0], p=w)
        jitter = jnp.concatenate([(jax.random.uniform(k2, (3,)) - 0.5) * cell, jnp.zeros(2)])
        return z[i] + jitter, cov

    z0, inv_mass = jax.vmap(one_chain)(keys, chain_mode)
    return z0, inv_mass, dominant


@partial(jax.jit, static_argnames=("prior", "n_chains", "sigma_model", "separation", "delta_lnp"))
def initial_points(keys, stars: StarInputs, x_cand, cell, arrays: ModelArrays, prior, n_chains: int = 4,
                   sigma_model: float = SIGMA_MODEL, separation: float = 1.5, delta_lnp: float = 8.0,
                   dominant_mass: float = 0.99):
    """Initial positions and inverse mass matrices for N stars × n_chains chains.

    Parameters
    ----------
    keys : (N, 2) PRNG keys, one per star (so a star's start does not depend on its batch)
    stars : StarInputs with leading axis N
    x_cand : (P, 3) standardized θ candidates, cell : (3,) their grid spacing (:func:`candidate_grid`)
    arrays : ModelArrays; prior : InferencePrior (static)
    n_chains : int
    separation : float
        Minimum distance between modes in standardized θ.
    delta_lnp : float
        A separate mode seeds chains only when its ln p is within this of the best.
    dominant_mass : float
        When the best point's mode holds at least this fraction of the candidates' posterior mass,
        every chain starts in it (the other modes are negligible); otherwise chains are dealt to the
        modes in turn.

    Returns
    -------
    z0 : (N, n_chains, 5); inv_mass : (N, n_chains, 5, 5)
    dominant : (N,) posterior mass fraction of the dominant mode (< ``dominant_mass``: multimodal star)
    """
    M = _predicted_magnitudes(arrays, x_cand, jnp.zeros(x_cand.shape[0]), jnp.zeros(x_cand.shape[0]))
    R = _predicted_magnitudes(arrays, x_cand, jnp.zeros(x_cand.shape[0]), jnp.ones(x_cand.shape[0])) - M
    cell = jnp.asarray(cell, jnp.float32)
    return jax.vmap(lambda k, s: _star_starts(k, s, x_cand, cell, M, R, arrays, prior, n_chains, separation,
                                              delta_lnp, sigma_model, dominant_mass))(keys, stars)
