"""`fit_catalog`: posteriors of every star of a catalog with the batched per-star NUTS (no file I/O)."""
from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..batching import pad_to
from ..catalog import INFERENCE_UNUSABLE, Flag
from ..fitresult import PARAMETERS, FitResult
from .init import candidate_grid, candidate_neighbours, initial_points
from .modes import combine_modes
from .model import SIGMA_MODEL, model_arrays, star_inputs, unconstrain
from .prior import InferencePrior, build_prior
from .sampler import SamplerSettings, run_lanes

__all__ = ["fit_catalog", "refinement_init", "METHODS", "REFINE_ROUNDS"]

log = logging.getLogger(__name__)

#: Fitting methods :func:`fit_catalog` knows.
METHODS = ("nuts",)
#: Refinement rounds by default (``fit_catalog``, ``fit_with_method``, ``photoinfer fit``).
REFINE_ROUNDS = 2
_STATS = ("diverging", "n_steps", "accept_prob", "energy", "lp", "step_size", "guide_accept")


def _star_keys(seed: int, index: np.ndarray):
    """One PRNG key per star from its row number (independent of batching)."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(index, jnp.uint32))


def fit_catalog(model, catalog, *, prior: str | InferencePrior = "bayestar", method: str = "nuts",
                num_warmup: int = 400, num_samples: int = 500, num_chains: int = 4, seed: int = 0,
                batch_size: int = 25, use_parallax: bool = True, use_position: bool = True, dust: str = "flat",
                E_max: float | None = None, sigma_model: float = SIGMA_MODEL, max_num_doublings: int = 5,
                ess_threshold: float = 200.0, rhat_threshold: float = 1.01, adaptation: str = "short",
                target_accept: float = 0.85, dominant_mass: float = 0.99, reparam: str = "mu_E", callback=None,
                init=None, guide=None, refine: int = REFINE_ROUNDS, refine_adaptation: str = "window",
                refine_max_num_doublings: int | None = None) -> FitResult:
    """Sample the posterior p(θ, μ, E | m̂, ϖ̂, l, b) (METHOD §8) of every star of ``catalog``.

    Parameters
    ----------
    model : StellarModel
    catalog : Catalog
        Magnitudes/errors, parallaxes (optional), l/b (optional: position-free prior without).
        Stars with :data:`~photoinfer.catalog.INFERENCE_UNUSABLE` flags get NaN draws and keep their flags.
    prior : {"bayestar", "brutus"} or InferencePrior
    method : {"nuts"}
    num_warmup, num_samples, num_chains : int
        Per chain.
    seed : int
        Star i's chains use keys derived from (seed, i) only, so results do not depend on batching.
    batch_size : int
        Stars per vmapped batch (× num_chains lanes); the last batch is padded with copies of a real
        star and one compilation serves every batch.  Small batches waste less time on the slowest lane.
    use_parallax, use_position : bool
        False hides the parallaxes / the sky positions (position-free prior).
    dust, E_max : dust prior kind and the upper bound of E (see :func:`photoinfer.infer.prior.build_prior`).
    sigma_model : float
        Model error floor [mag].
    max_num_doublings : int
        NUTS tree depth limit of the first round (5: at most 31 leapfrog steps per draw).  Lanes run
        in lockstep under ``vmap``, so every transition of a batch costs as many steps as its longest
        lane's: with 8 doublings a 100-lane batch took 71 steps per draw where the mean lane needed 15
        (docs/inference.md "Lockstep"); depth 5 truncates 2.5 % of the lanes' trees and runs 3.6× faster.
    refine_max_num_doublings : int, optional
        Tree depth limit of the refinement rounds: default 8 (the few stars that need longer
        trajectories), 5 with a ``guide`` (whose jumps do the long moves; a refinement batch at depth 8
        costs, in lockstep, as much as a first round of ten times its stars).
    ess_threshold, rhat_threshold : float
        Stars with min bulk ESS below / max r̂ above get ``Flag.NOT_CONVERGED``.
    adaptation : {"window", "short"}
        Warm-up: blackjax's Stan-style window adaptation seeded with the initialization's inverse mass
        matrix, or the short three-window scheme of :mod:`photoinfer.infer.sampler`.
    target_accept : float
        Dual-averaging target acceptance rate.
    dominant_mass : float
        All chains start in the candidate grid's heaviest mode when it holds at least this fraction
        of the posterior mass; otherwise they are dealt to the heaviest modes (see
        :mod:`photoinfer.infer.init`).  When a star's chains end in separate modes (wherever they
        started), the star is flagged ``Flag.MULTIMODAL``, its r̂/ESS are computed within modes
        and its draws weighted by the modes' importance-sampled masses (:mod:`photoinfer.infer.modes`).
    reparam : {"mu_E", "mu", "none"}
        The sampler's coordinates (see :mod:`photoinfer.infer.sampler`): "mu" samples
        δ = (μ − μ_WLS(θ, E))/σ_μ,phot instead of μ, "mu_E" also ε = logit(E/E_max) − ζ₀(θ).
    callback : callable(n_done, n_total), optional
        Called after each batch (progress bars).
    refine : int (or bool)
        Refinement rounds (0/False: none).  Stars that miss ``rhat_threshold`` or ``ess_threshold``
        after a round are sampled again: twice the previous round's warm-up, twice its transitions per
        kept draw (thinned: the same number of draws), target acceptance at least 0.95, tree depth
        ``refine_max_num_doublings``, warm-up
        ``refine_adaptation`` (blackjax's Stan-style windows by default), chains started from the
        previous round's pooled draws with their pooled covariance as metric
        (:func:`refinement_init`); their previous draws are replaced.  ``attrs["refined_stars"]``
        counts the refits (a star refined twice counts twice).
    init : (z0 (N, num_chains, 5), inv_mass (N, num_chains, 5, 5)), optional
        Given starting points (unconstrained, :func:`~photoinfer.infer.model.unconstrain`) and initial
        inverse mass matrices per star and chain (e.g. from the grid's modes,
        :func:`photoinfer.grid.methods.nuts_init_from_grid`) instead of the built-in initialization.
    guide : (N, K, 5) float, optional
        Unconstrained positions of K posterior draws per star (the grid's,
        :func:`photoinfer.grid.methods.grid_start`): every chain of the star then alternates NUTS
        transitions with independence Metropolis–Hastings moves from a mixture built on them
        (:mod:`photoinfer.infer.guide`), in every round.  ``sample_stats["guide_accept"]`` says
        which moves were taken.

    Returns
    -------
    FitResult
        ``samples`` (chain, draw, N) of teff, logg, feh, mu, E; ``sample_stats`` diverging, n_steps,
        accept_prob, energy, lp, step_size; ``summary`` (see :func:`photoinfer.posterior.summarize`).
    """
    from ..posterior import summarize

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if len(catalog) == 0:
        raise ValueError(f"{catalog.name}: no stars")
    if not isinstance(prior, InferencePrior):
        prior = build_prior(model, name=prior, dust=dust, E_max=E_max)
    if model.validity is None:
        log.warning("model has no validity grid: no (Teff, logg | [M/H]) prior, no validity check")
    arrays = model_arrays(model)
    if refine_max_num_doublings is None:
        refine_max_num_doublings = 8 if guide is None else 5
    settings = SamplerSettings(num_warmup=int(num_warmup), num_samples=int(num_samples),
                               max_num_doublings=int(max_num_doublings), sigma_model=float(sigma_model),
                               adaptation=adaptation, target_accept=float(target_accept),
                               reparam=str(reparam))
    inputs = star_inputs(catalog, use_parallax=use_parallax, use_position=use_position)
    if prior.sightline and not inputs.has_lb.any():
        prior = prior.position_free          # no star has a position: skip that term
    n = len(catalog)
    flags = np.asarray(catalog.flags, np.int64).copy()
    run = np.flatnonzero((flags & int(INFERENCE_UNUSABLE)) == 0)
    keys = np.asarray(_star_keys(seed, np.arange(n)))
    x_cand, cell = candidate_grid(prior, arrays)
    nbr = candidate_neighbours(x_cand, cell)
    x_cand = jnp.asarray(x_cand)
    C, S = int(num_chains), int(num_samples)
    draws = np.full((n, C, S, len(PARAMETERS)), np.nan, np.float32)
    stats = {k: np.zeros((n, C, S), np.float32) for k in _STATS}
    # lanes per call: batch_size, or n rounded up to a power of two (not len(run): the flags or a
    # caller's subsets, e.g. grid+nuts refits, give at most log2(batch_size) + 2 compilations)
    size = max(1, min(int(batch_size), 1 << max(n - 1, 0).bit_length()))

    def run_batches(rows, st, init, key_salt, n_done=0, n_total=None):
        """NUTS for the stars ``rows`` with settings ``st``; fills draws/stats in place."""
        for start in range(0, len(rows), size):
            idx = rows[start:start + size]
            k = len(idx)
            star = jax.tree_util.tree_map(lambda a: pad_to(np.asarray(a)[idx], size), inputs)
            skeys = jnp.asarray(pad_to(keys[idx], size))
            if key_salt:
                skeys = jax.vmap(lambda kk: jax.random.fold_in(kk, key_salt))(skeys)
            init_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 1_000_003))(skeys)
            if init is None:
                z0, inv_mass, _, _ = initial_points(init_keys, star, x_cand, nbr, cell, arrays, prior, n_chains=C,
                                                    sigma_model=sigma_model, dominant_mass=dominant_mass)
            else:  # given starting points (e.g. every grid mode, or the refinement's pooled draws)
                z0, inv_mass = (jnp.asarray(pad_to(np.asarray(a)[idx], size)) for a in init)
            lane_keys = jax.vmap(lambda kk: jax.vmap(lambda c: jax.random.fold_in(kk, c))(jnp.arange(C)))(skeys)
            lanes = jax.tree_util.tree_map(lambda a: jnp.repeat(jnp.asarray(a), C, axis=0), star)
            centres = None if guide is None else jnp.repeat(jnp.asarray(pad_to(np.asarray(guide)[idx], size)), C,
                                                            axis=0)
            d, out = run_lanes(lane_keys.reshape(size * C, -1), z0.reshape(size * C, -1),
                               inv_mass.reshape(size * C, 5, 5), lanes, arrays, prior, st, centres)
            draws[idx] = np.asarray(d).reshape(size, C, S, -1)[:k]
            for name in _STATS:
                stats[name][idx] = np.asarray(out[name], np.float32).reshape(size, C, S)[:k]
            if callback is not None:
                callback(n_done + min(start + size, len(rows)), n_total or len(rows))

    def combine():
        samples = {p: np.moveaxis(draws[..., i], 0, -1) for i, p in enumerate(PARAMETERS)}   # (chain, draw, N)
        return samples, combine_modes(samples, inputs, arrays, prior, sigma_model=sigma_model, seed=seed)

    t0 = time.perf_counter()
    run_batches(run, settings, init, 0)
    samples, (combined, diag, n_modes, _) = combine()
    refined, per_round, st = 0, [], settings
    for r in range(1, int(refine) + 1):
        finite = np.isfinite(draws[run]).all(axis=(1, 2, 3))
        redo = run[finite & ~((diag["rhat_max"][run] <= rhat_threshold) & (diag["ess_bulk_min"][run] >= ess_threshold))]
        if not len(redo):
            break
        st = st._replace(num_warmup=2 * st.num_warmup, thin=2 * st.thin, adaptation=refine_adaptation,
                         target_accept=max(st.target_accept, 0.95),
                         max_num_doublings=max(st.max_num_doublings, int(refine_max_num_doublings)))
        log.info("refinement %d: %d of %d stars miss r̂ <= %g / ESS >= %g: %d warm-up steps, %d × %d transitions, "
                 "target acceptance %.2f, tree depth <= %d", r, len(redo), len(run), rhat_threshold, ess_threshold,
                 st.num_warmup, S, st.thin, st.target_accept, st.max_num_doublings)
        run_batches(redo, st, refinement_init(samples, redo, arrays, prior, seed + r - 1), r, len(run), len(run) + len(redo))
        samples, (combined, diag, n_modes, _) = combine()
        refined += len(redo)
        per_round.append(len(redo))
    elapsed = time.perf_counter() - t0
    sample_stats = {name: np.moveaxis(v, 0, -1) for name, v in stats.items()}
    sample_stats["diverging"] = sample_stats["diverging"].astype(bool)
    result = FitResult(source_id=np.asarray(catalog.source_id, np.int64), samples=samples, sample_stats=sample_stats,
                       summary={}, flags=flags, method=method,
                       attrs={"prior": prior.name, "dust_prior": prior.prior.dust, "E_max": prior.E_max,
                              "sigma_model": float(sigma_model), "num_warmup": int(num_warmup),
                              "num_samples": S, "num_chains": C, "seed": int(seed), "batch_size": size,
                              "use_parallax": bool(use_parallax), "use_position": bool(use_position),
                              "model": str(model.provenance.get("source", model.provenance.get("name", ""))),
                              "sampling_time_s": float(elapsed), "dominant_mass": float(dominant_mass),
                              "reparam": str(reparam), "refine_rounds": int(refine),
                              "max_num_doublings": int(max_num_doublings),
                              "refine_max_num_doublings": int(refine_max_num_doublings),
                              "refined_stars": refined, "refined_per_round": per_round, "guided": guide is not None})
    result.samples = combined
    result.flags = np.where(n_modes > 1, result.flags | int(Flag.MULTIMODAL), result.flags)
    result.summary = summarize(result, model=model, ess_threshold=ess_threshold, rhat_threshold=rhat_threshold,
                               diag=diag)
    result.flags = np.asarray(result.summary["flags"], np.int64)
    return result


def refinement_init(samples: dict, rows, arrays, prior, seed: int = 0, jitter: float = 1e-4):
    """Starting points and inverse mass matrices of the refinement round from the first round's draws.

    Each chain of star i starts at a draw picked at random from the pooled draws of all its chains
    (so the chains start spread over whatever the first round found, every mode included), with
    the pooled covariance of those draws (unconstrained coordinates) as its initial inverse mass
    matrix.

    Parameters
    ----------
    samples : dict name -> (chain, draw, N) constrained draws (before any mode weighting)
    rows : (K,) int, the stars to refine
    arrays : ModelArrays; prior : InferencePrior
    seed : int

    Returns
    -------
    z0 (N, chain, 5), inv_mass (N, chain, 5, 5) float32, filled at ``rows`` (identity elsewhere)
    """
    C, S, N = samples["teff"].shape
    phys = [jnp.asarray(samples[p][:, :, rows], jnp.float32) for p in PARAMETERS]
    z = np.asarray(unconstrain(*phys, arrays, prior), np.float64)               # (C, S, K, 5)
    z = np.moveaxis(z, 2, 0).reshape(len(rows), C * S, 5)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, C * S, size=(len(rows), C))
    z0 = np.zeros((N, C, 5), np.float32)
    inv_mass = np.broadcast_to(np.eye(5, dtype=np.float32), (N, C, 5, 5)).copy()
    z0[rows] = np.take_along_axis(z, pick[..., None], axis=1)
    zc = z - z.mean(axis=1, keepdims=True)
    cov = np.einsum("kti,ktj->kij", zc, zc) / (C * S - 1) + jitter * np.eye(5)
    inv_mass[rows] = cov[:, None]
    return z0, inv_mass
