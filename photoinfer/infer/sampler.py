"""Per-star NUTS for many independent stars at once (blackjax kernels under ``jax.vmap``).

Every (star, chain) lane has its own step size and its own dense inverse mass matrix.  A lane
starts at its initial point z₀ with the inverse mass matrix Σ₀ from the initialization (a Laplace
approximation at its mode), so warm-up only refines them:

1. fast window (``fast_frac`` of the warm-up): dual-averaging step-size adaptation with Σ₀;
2. slow window: step size still adapted; the draws' covariance S accumulated (Welford);
   at its end Σ = (n S + k Σ₀)/(n + k) (k = ``prior_weight``: Σ₀ as k pseudo-draws) and the
   dual averaging restarts from the current step size;
3. final fast window: step size only; the sampling phase uses its dual-averaged step size.

With ``centres`` (the grid guide, :mod:`photoinfer.infer.guide`) every NUTS transition of the sampling
phase and of the two step-size windows of the warm-up is followed by an independence
Metropolis–Hastings move from a proposal built on the star's grid draws (Eq. G2 there); the slow
window, which estimates the metric, moves by NUTS alone so that the metric stays the local one.

``thin`` > 1 keeps every thin-th draw of num_samples × thin transitions (the refinement round of
:func:`photoinfer.infer.fit.fit_catalog`: longer chains in the same draw array).

The log density is numpyro's potential of :func:`photoinfer.infer.model.star_model`, negated.
With ``reparam`` (default) a lane samples u = (x, δ, logit E/E_max) instead of z = (x, μ, logit E/E_max),
μ = μ_WLS(θ, E) + σ_μ,phot δ (:func:`photoinfer.infer.model.photometric_mu`): the magnitudes fix μ
to σ_μ,phot ≈ 0.01 mag at each (θ, E), so the curved ridge μ ≈ μ_WLS(θ, E) becomes the axis δ ≈ 0.
The map is triangular with a constant diagonal (constant Jacobian); z₀ and Σ₀ are mapped to u
(Σ₀ by the map's Jacobian at z₀), the draws back to z.
One call of :func:`run_lanes` compiles once per lane count (callers pad to a fixed size).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import blackjax
import jax.numpy as jnp
from blackjax.adaptation.base import get_filter_adapt_info_fn
from blackjax.adaptation.step_size import dual_averaging_adaptation
from blackjax.mcmc import nuts as bj_nuts

from .guide import build_mixture, imh_step
from .model import SIGMA_MODEL, constrain, from_sampler, log_density, log_density_sampler, to_sampler

__all__ = ["SamplerSettings", "run_lanes"]


class SamplerSettings(NamedTuple):
    """Static settings of the per-star NUTS (hashable: jit recompiles when they change)."""

    num_warmup: int = 250
    num_samples: int = 250
    target_accept: float = 0.8
    max_num_doublings: int = 8
    fast_frac: float = 0.25
    final_frac: float = 0.15
    prior_weight: float = 20.0
    initial_step_size: float = 0.5
    sigma_model: float = SIGMA_MODEL
    adaptation: str = "window"
    reparam: str = "mu_E"
    thin: int = 1
    guide_neighbours: int = 32
    guide_scale: float = 0.8


def _windows(st: SamplerSettings):
    w1 = int(round(st.fast_frac * st.num_warmup))
    w3 = int(round(st.final_frac * st.num_warmup))
    return w1, st.num_warmup - w1 - w3, w3


def _lane(key, z0, inv_mass0, s, centres, arrays, prior, st: SamplerSettings):
    """Warm-up and sampling of one (star, chain) lane; returns constrained draws and statistics."""
    if st.reparam != "none":   # sample u = (x, δ, ε) (module doc); the metric follows the linear map at z₀
        kw = dict(s=s, arrays=arrays, prior=prior, sigma_model=st.sigma_model, shift_E=st.reparam == "mu_E")
        J = jax.jacfwd(partial(to_sampler, **kw))(z0)
        z0, inv_mass0 = to_sampler(z0, **kw), J @ inv_mass0 @ J.T
        logdensity = partial(log_density_sampler, **kw)
        to_z = jax.vmap(partial(from_sampler, **kw))
        to_u = jax.vmap(partial(to_sampler, **kw))
    else:
        logdensity = partial(log_density, s=s, arrays=arrays, prior=prior, sigma_model=st.sigma_model)
        to_z = to_u = lambda z: z  # noqa: E731
    mix = None if centres is None else build_mixture(to_u(centres), n_neighbours=st.guide_neighbours,
                                                         scale=st.guide_scale)

    def guided(state, key):
        """The guide's move after a NUTS transition (identity without a guide)."""
        if mix is None:
            return state, jnp.zeros((), bool)
        return imh_step(key, state, logdensity, mix)

    k1, k2 = jax.random.split(key)
    if st.adaptation == "window":
        warm = blackjax.window_adaptation(blackjax.nuts, logdensity, is_mass_matrix_diagonal=False,
                                          initial_inverse_mass_matrix=inv_mass0,
                                          initial_step_size=st.initial_step_size,
                                          target_acceptance_rate=st.target_accept,
                                          adaptation_info_fn=get_filter_adapt_info_fn(),
                                          max_num_doublings=st.max_num_doublings)
        (state, params), _ = warm.run(k1, z0, num_steps=st.num_warmup)
        step_size, inv_mass = params["step_size"], params["inverse_mass_matrix"]
    else:
        state, step_size, inv_mass = _short_warmup(k1, z0, inv_mass0, logdensity, st, guided)
    kernel = bj_nuts.build_kernel()

    def transition(state, key):
        k_nuts, k_guide = jax.random.split(key)
        state, info = kernel(k_nuts, state, logdensity, step_size, inv_mass, max_num_doublings=st.max_num_doublings)
        state, jumped = guided(state, k_guide)
        return state, (info.is_divergent, info.num_integration_steps, info.acceptance_rate, info.energy, jumped)

    def sample(state, key):   # ``thin`` transitions per kept draw
        if st.thin == 1:
            state, out = transition(state, key)
            div, n, acc, energy, jumped = (a[None] for a in out)
        else:
            state, (div, n, acc, energy, jumped) = jax.lax.scan(transition, state, jax.random.split(key, st.thin))
        stats = {"diverging": div.any(), "n_steps": n.sum(), "accept_prob": acc.mean(), "energy": energy[-1],
                 "lp": state.logdensity, "guide_accept": jumped.mean()}
        return state, (state.position, stats)

    _, (zs, stats) = jax.lax.scan(sample, state, jax.random.split(k2, st.num_samples))
    stats["step_size"] = jnp.full(st.num_samples, step_size)
    return constrain(to_z(zs), s, arrays, prior), stats


def _short_warmup(key, z0, inv_mass0, logdensity, st: SamplerSettings, guided):
    """fast (step size) → slow (step size + covariance, shrunk to Σ₀) → fast windows; see the module doc.
    ``guided(state, key)`` (the grid guide's move) follows every transition of the two fast windows."""
    kernel = bj_nuts.build_kernel()
    da_init, da_update, da_final = dual_averaging_adaptation(st.target_accept)
    w1, w2, w3 = _windows(st)

    def adapt(carry, key, guide=True):
        state, da, inv_mass = carry
        k_nuts, k_guide = jax.random.split(key)
        state, info = kernel(k_nuts, state, logdensity, jnp.exp(da.log_step_size), inv_mass,
                             max_num_doublings=st.max_num_doublings)
        da = da_update(da, jnp.where(jnp.isfinite(info.acceptance_rate), info.acceptance_rate, 0.0))
        if guide:
            state, _ = guided(state, k_guide)
        return (state, da, inv_mass), state.position

    k1, k2, k3 = jax.random.split(key, 3)
    state = bj_nuts.init(z0, logdensity)
    da = da_init(st.initial_step_size)
    (state, da, _), _ = jax.lax.scan(adapt, (state, da, inv_mass0), jax.random.split(k1, w1))
    (state, da, _), zs = jax.lax.scan(partial(adapt, guide=False), (state, da, inv_mass0), jax.random.split(k2, w2))
    zc = zs - zs.mean(axis=0)
    S = zc.T @ zc / max(w2 - 1, 1)
    inv_mass = (w2 * S + st.prior_weight * inv_mass0) / (w2 + st.prior_weight)
    da = da_init(da_final(da))
    (state, da, _), _ = jax.lax.scan(adapt, (state, da, inv_mass), jax.random.split(k3, w3))
    return state, da_final(da), inv_mass


@partial(jax.jit, static_argnames=("prior", "settings"))
def run_lanes(keys, z0, inv_mass0, stars, arrays, prior, settings: SamplerSettings, centres=None):
    """Run NUTS on L independent lanes (a lane = one chain of one star).

    Parameters
    ----------
    keys : (L, 2) PRNG keys
    z0 : (L, 5) initial unconstrained positions
    inv_mass0 : (L, 5, 5) initial dense inverse mass matrices
    stars : StarInputs with leading axis L (the star of each lane)
    arrays : ModelArrays
    prior : InferencePrior (static)
    settings : SamplerSettings (static)
    centres : (L, K, 5) unconstrained positions, optional
        The grid guide's centres for each lane (its star's grid draws; :mod:`photoinfer.infer.guide`).

    Returns
    -------
    draws : (L, num_samples, 5) (teff, logg, feh, mu, E)
    stats : dict of (L, num_samples) arrays: diverging, n_steps, accept_prob, energy, lp, step_size,
        guide_accept (whether the guide's move was accepted)
        (with ``thin`` > 1: diverging any, n_steps summed, accept_prob and guide_accept averaged over the
        thin transitions)
    """
    return jax.vmap(_lane, in_axes=(0, 0, 0, 0, 0, None, None, None))(keys, z0, inv_mass0, stars, centres, arrays,
                                                                        prior, settings)


