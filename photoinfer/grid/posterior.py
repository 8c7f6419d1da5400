"""The full grid posterior: parallax, Galactic prior and E prior applied exactly, by importance sampling in μ.

At a grid point θ_g the photometric likelihood is a 2-D Gaussian in x = (μ, E) (engine, Eq. G2).
Conditional on μ it is Gaussian in E with mean c(μ) = Ê + (C_μE/C_μμ)(μ − μ̂) and variance
s² = C_EE − C_μE²/C_μμ, and neither the parallax nor the distance prior involves E.  So E is
integrated analytically against its prior (flat on [0, E_max], or a Gaussian on E ≥ 0)::

    ∫ e^{−χ²/2} p(E) dE = e^{−χ²_free/2 − (μ−μ̂)²/(2C_μμ)} √(2π s²) Z_E(μ)                    (P1)

(Z_E: the prior-weighted Gaussian mass of E, :func:`~photoinfer.grid.engine.log_prior_E_conditional`),
and only the 1-D integral over μ remains::

    w_g = p(θ_g) ∫ (P1) · N(ϖ̂ | ϖ(μ), σ_ϖ²) · p(μ, [M/H]_g | l, b) dμ                          (P2)

(P2) and the sum over grid points are estimated together by importance sampling: ``keep`` grid
points per star are drawn by systematic sampling from the Laplace weights
(:func:`~photoinfer.grid.engine.approximate_log_weight`, probability q_g), and S stratified μ draws
per drawn point from a Gaussian proposal q(μ): the photometric μ-marginal conditioned on the parallax linearized at the current
mean (two Gauss–Newton steps), widened by ``inflate`` (default 1.5), moved to the E = 0 edge when
the mean has E < 0.  Every draw carries its exact weight (P1)·N(ϖ̂|ϖ(μ))·p(μ, [M/H])·p(θ)/(q_g q(μ)):
nothing is linearized in the weights, so the estimate is unbiased, and the parallax likelihood
stays exact at any S/N, negative parallaxes included.  Why importance sampling rather than a
(μ, E) sub-grid: E needs no grid at all (P1), and a fixed μ sub-grid would have to resolve both the
photometric width (down to 0.01 mag) and the parallax width at once, while a proposal centred by
Gauss–Newton puts every draw where the integrand is.

Resampling (systematic) the weighted (point, μ-draw) pairs, with E drawn from its conditional
truncated Gaussian and θ spread uniformly over the point's grid cell, gives posterior draws.  The
effective sample size is Kish's (Σw)²/Σw² over all weighted draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp, ndtr, ndtri

from ..fitresult import PARAMETERS, SUMMARY_COLUMNS, FitResult, distance_from_mu
from ..sightline import ImageGrid
from .engine import (GridArrays, GridResult, StarArrays, ThetaGrid, approximate_log_weight, gauss_newton_parallax,
                     grid_arrays, initial_points, log_prior_E_conditional, log_prior_position, log_truncation,
                     lookup_position_table_continuous,
                     make_theta_grid, parallax_of_mu, position_table, solve_mu_E_direct, solve_mu_E_grid, star_arrays,
                     _pad_rows)

__all__ = ["GridSettings", "GridFit", "grid_posterior", "grid_fit", "mu_E_images"]

_LN_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class GridSettings:
    """Settings of the grid posterior.

    keep : grid points drawn per star from the Laplace weights (systematic sampling: a point of
        proposal mass p gets ⌊keep·p⌋ or ⌈keep·p⌉ copies), each with ``n_mu`` μ draws
    continuous : each drawn copy is moved to a uniform random θ within its point's cell and weighed
        there exactly (M(θ), R(θ), p(θ) evaluated at that θ): the posterior of continuous θ, free of
        the grid's discretization (default).  False: θ at the points (a posterior on the lattice),
        spread uniformly over the cell only when drawn
    n_mu : importance draws in μ per drawn point (stratified)
    inflate : proposal width / Gauss–Newton posterior width in μ
    n_draws : resampled posterior draws per star
    sigma_model : model floor added in quadrature to every magnitude error [mag]
    min_ess : stars with a Kish effective sample size below this get ``Flag.NOT_CONVERGED``
    star_chunk : stars evaluated together (memory: ~30 float32 arrays of star_chunk × grid points)
    position_free : use the sky-averaged prior (ignore l, b)
    """

    keep: int = 1024
    n_mu: int = 4
    continuous: bool = True
    inflate: float = 1.5
    n_draws: int = 1000
    sigma_model: float = 0.02
    min_ess: float = 50.0
    star_chunk: int = 32
    position_free: bool = False


class _Chunk(NamedTuple):
    draws: jnp.ndarray        # (n, D, 5)
    draw_logw: jnp.ndarray    # (n, D) ln weight of the drawn pair
    ess: jnp.ndarray          # (n,)
    log_evidence: jnp.ndarray  # (n,)
    points: GridResult        # (n, T) the drawn points: mass of each entry, posterior mean (μ, E) per point
    image: jnp.ndarray        # (n, nμ, nE) or (n, 0, 0)


def _uniform(keys, shape):
    """Per-star uniforms: (n,) + shape from (n, 2) keys (results do not depend on the chunking)."""
    return jax.vmap(lambda k: jax.random.uniform(k, shape))(keys)


def _truncated_normal(u, mean, var, lo, hi):
    """Inverse-CDF draw from N(mean, var) truncated to [lo, hi], stable in both tails."""
    sd = jnp.sqrt(var)
    a, b = (lo - mean) / sd, (hi - mean) / sd
    # sample the side with the larger tail mass in its own tail coordinates
    up = ndtri(jnp.clip(ndtr(a) + u * (ndtr(b) - ndtr(a)), 1e-30, 1 - 1e-7))
    down = -ndtri(jnp.clip(ndtr(-a) - u * (ndtr(-a) - ndtr(-b)), 1e-30, 1 - 1e-7))
    z = jnp.where(a > 0, down, up)
    return jnp.clip(mean + sd * z, lo, hi)


_GOLDEN = 0.6180339887498949


def _in_cell(ga: GridArrays, stellar, spacing, tk, u):
    """θ moved by u·spacing (u ∈ [−½, ½)³) within its cell, with M(θ), R(θ) and ln p(θ) there."""
    from ..model import network
    th = tk + u * spacing
    net = ga.network
    x = network.standardize(th, net["theta_med"], net["theta_std"])
    M = network.absolute_magnitudes(net["params"], x)
    R = network.extinction_vector(net["params"], x)
    lp = jnp.zeros(th.shape[:-1], jnp.float32) if stellar is None else stellar(th)
    return th, M, R, lp


@partial(jax.jit, static_argnames=("prior", "n_points", "n_mu", "n_draws", "bins", "inflate", "stellar"))
def _posterior_chunk(ga: GridArrays, spacing, stars: StarArrays, table, keys, prior, n_points: int, n_mu: int,
                     n_draws: int, inflate: float, bins, stellar=None):
    n = stars.mag.shape[0]
    T, S = n_points, n_mu
    ks = jax.vmap(lambda k: jax.random.split(k, 6))(keys)                          # (n, 6, 2)
    k0, k1, k2, k3, k4, k5 = (ks[:, i] for i in range(6))
    # 1. Laplace weights of every grid point (the proposal over points)
    sol_all = solve_mu_E_grid(ga, stars.mag, stars.weight)                          # (n, G)
    lw_all, _ = approximate_log_weight(sol_all, ga.ln_prior[None, :], ga.row[None, :], ga.theta[None, :, 2], stars,
                                       prior, table)
    lw_all = jnp.where(jnp.isfinite(lw_all), lw_all, -jnp.inf)
    lse = logsumexp(lw_all, axis=1, keepdims=True)
    cdf_pts = jnp.cumsum(jnp.exp(lw_all - lse), axis=1)
    # 2. T points per star by systematic sampling (copies of a point ∝ its proposal mass; sorted indices)
    u_pts = (jnp.arange(T)[None, :] + _uniform(k0, (1,))) / T
    idx = jnp.minimum(jax.vmap(jnp.searchsorted)(cdf_pts, u_pts * cdf_pts[:, -1:]), lw_all.shape[1] - 1)
    ln_pick = jnp.take_along_axis(lw_all, idx, 1) - lse                              # ln q(point)
    copies = (jax.vmap(lambda a: jnp.searchsorted(a, a, side="right"))(idx)
              - jax.vmap(lambda a: jnp.searchsorted(a, a, side="left"))(idx))
    n_points = jnp.sum(jnp.concatenate([jnp.ones((n, 1), bool), idx[:, 1:] != idx[:, :-1]], 1), axis=1)
    Mk, Rk, lk, tk, rk = ga.M[idx], ga.R[idx], ga.ln_prior[idx], ga.theta[idx], ga.row[idx]
    continuous = ga.network is not None
    if continuous:    # each copy at its own uniform θ in the cell: proposal density q(point)/V there
        tk, Mk, Rk, lk = _in_cell(ga, stellar, spacing, tk, _uniform(k4, (T, 3)) - 0.5)
    # 3. exact (μ, E) Gaussian at each drawn point; μ proposal from the parallax-updated Gaussian
    sol = solve_mu_E_direct(Mk, Rk, stars.mag, stars.weight)                       # (n, T)
    ex = lambda a: a[:, None]  # noqa: E731
    mu_p, E_p, vmu_p, cme_p, vE_p, _ = gauss_newton_parallax(sol.mu_free, sol.var_mu, sol.cov_muE, sol.var_E,
                                                              sol.E_free, ex(stars.parallax), ex(stars.parallax_err))
    centre = jnp.where(E_p < 0, mu_p - cme_p / vE_p * E_p, mu_p)
    scale = inflate * jnp.sqrt(vmu_p)
    # stratified μ draws, a different shift per drawn point (Weyl sequence from one uniform per star)
    shift = jnp.mod(_uniform(k1, (1,)) + _GOLDEN * jnp.arange(T)[None, :], 1.0)       # (n, T)
    z = ndtri(jnp.clip((jnp.arange(S)[None, None, :] + shift[..., None]) / S, 1e-7, 1 - 1e-7))   # (n, T, S)
    mu = centre[..., None] + scale[..., None] * z
    ln_q = -0.5 * z * z - jnp.log(scale)[..., None] - 0.5 * _LN_2PI + ln_pick[..., None]
    # (P1): photometry with E integrated against its prior
    vmu, cme, vE = sol.var_mu[..., None], sol.cov_muE[..., None], sol.var_E[..., None]
    s2 = jnp.maximum(vE - cme * cme / vmu, 1e-12)
    c = sol.E_free[..., None] + cme / vmu * (mu - sol.mu_free[..., None])
    mean, var, lo, hi, ln_norm = log_prior_E_conditional(prior, stars.E0[:, None, None], stars.sigma_E0[:, None, None],
                                                         c, s2)
    ln_phot = (-0.5 * sol.chi2_free[..., None] - 0.5 * (mu - sol.mu_free[..., None]) ** 2 / vmu
               + 0.5 * jnp.log(2 * np.pi * s2) + ln_norm + log_truncation(mean, var, lo, hi))
    # (P2): parallax (exact) and the position prior
    plx, plx_err = stars.parallax[:, None, None], stars.parallax_err[:, None, None]
    ln_plx = jnp.where(jnp.isfinite(plx_err), -0.5 * ((plx - parallax_of_mu(mu)) / plx_err) ** 2, 0.0)
    if prior is None:
        ln_pos = 0.0
    elif continuous and table is not None:
        ln_pos = lookup_position_table_continuous(table, ga.feh_axis[0], spacing[2], tk[..., 2:3], mu)
    else:
        ln_pos = log_prior_position(prior, table, rk[..., None], tk[..., 2:3], mu, stars.l[:, None, None],
                                    stars.b[:, None, None])
    lw = ln_phot + ln_plx + ln_pos + lk[..., None] - ln_q
    lw = jnp.where(jnp.isfinite(lw), lw, -jnp.inf)
    flat = lw.reshape(n, T * S)
    lz = logsumexp(flat, axis=1)                                                     # ln Σ w (∝ evidence · T·S)
    wn = jnp.exp(flat - lz[:, None])
    ess = 1.0 / jnp.sum(wn * wn, axis=1)
    # per-entry summaries (for initial_points)
    wp = jnp.exp(lw - logsumexp(lw, axis=2, keepdims=True))
    mu_mean = jnp.sum(jnp.where(jnp.isfinite(lw), wp * mu, 0.0), 2)
    E_mean = jnp.sum(jnp.where(jnp.isfinite(lw), wp * jnp.clip(mean, lo, hi), 0.0), 2)
    # posterior mass of each entry: its point's ∫ f dμ estimated by the mean of f/q(μ) over its own
    # draws, shared equally by the point's copies (the copies' sum averages their estimates)
    entry_lw = logsumexp(lw + ln_pick[..., None], axis=2) - jnp.log(float(S)) - jnp.log(copies.astype(jnp.float32))
    entry_lw = entry_lw - logsumexp(entry_lw, axis=1, keepdims=True)
    # systematic resampling of the (point, draw) pairs
    cdf = jnp.cumsum(wn, axis=1)
    pos = (jnp.arange(n_draws)[None, :] + _uniform(k2, (1,))) / n_draws
    pick = jnp.minimum(jax.vmap(jnp.searchsorted)(cdf, pos * cdf[:, -1:]), T * S - 1)   # (n, D)
    take = lambda a: jnp.take_along_axis(jnp.broadcast_to(a, (n, T, S)).reshape(n, T * S), pick, 1)  # noqa: E731
    mu_d = take(mu)
    E_d = _truncated_normal(_uniform(k3, pick.shape[1:]), take(mean), take(var), take(jnp.broadcast_to(lo, mu.shape)),
                            take(jnp.broadcast_to(hi, mu.shape)))
    p = pick // S
    th = jnp.take_along_axis(tk, p[..., None], 1)
    if not continuous:
        th = th + (_uniform(k4, th.shape[1:]) - 0.5) * spacing
    draws = jnp.concatenate([th, mu_d[..., None], E_d[..., None]], -1)
    if bins is None:
        image = jnp.zeros((n, 0, 0), jnp.float32)
    else:
        E_all = _truncated_normal(_uniform(k5, mu.shape[1:]), mean, var, jnp.broadcast_to(lo, mu.shape),
                                  jnp.broadcast_to(hi, mu.shape)).reshape(n, T * S)
        image = _histogram(mu.reshape(n, T * S), E_all, wn, bins)
    points = GridResult(idx, entry_lw, tk, mu_mean, E_mean, sol.var_mu, sol.cov_muE, sol.var_E, sol.chi2,
                        lz - jnp.log(float(T * S)), n_points)
    return _Chunk(draws, jnp.take_along_axis(flat, pick, 1), ess, lz - jnp.log(float(T * S)), points, image)


def _histogram(mu, E, w, bins: ImageGrid):
    """(n, nμ, nE) weighted histogram, normalized per star to sum 1 (0 when no weight falls inside)."""
    i = jnp.floor((mu - bins.mu_min) / (bins.mu_max - bins.mu_min) * bins.n_mu).astype(jnp.int32)
    j = jnp.floor((E - bins.E_min) / (bins.E_max - bins.E_min) * bins.n_E).astype(jnp.int32)
    j = jnp.where(E == bins.E_max, bins.n_E - 1, j)
    inside = (i >= 0) & (i < bins.n_mu) & (j >= 0) & (j < bins.n_E)
    flat = jnp.where(inside, i * bins.n_E + j, 0)
    w = jnp.where(inside, w, 0.0)
    img = jax.vmap(lambda f, ww: jnp.zeros(bins.n_mu * bins.n_E, jnp.float32).at[f].add(ww))(flat, w)
    tot = jnp.sum(img, axis=1, keepdims=True)
    img = jnp.where(tot > 0, img / jnp.where(tot > 0, tot, 1.0), 0.0)
    return img.reshape(-1, bins.n_mu, bins.n_E)


@dataclass
class GridFit:
    """What :func:`grid_posterior` returns.

    fit : FitResult (method "grid"), one row per input star
    images : (N, nμ, nE) float32 (μ, E) posterior images normalized per star, or None
    initial : InitialPoints for NUTS chains, or None
    ess : (N,) Kish effective number of weighted grid samples (NaN for stars not fit)
    log_evidence : (N,) ln p(data) up to a per-star constant (NaN for stars not fit)
    n_points : (N,) distinct grid points drawn (0 for stars not fit)
    points : GridResult with the importance-sampling mass of each drawn point (``return_points=True``), or None
    """

    fit: FitResult
    images: np.ndarray | None
    initial: object
    ess: np.ndarray
    log_evidence: np.ndarray
    n_points: np.ndarray
    points: GridResult | None = None


def grid_posterior(grid: ThetaGrid, stars: StarArrays, prior=None, settings: GridSettings = GridSettings(),
                   key=None, images: ImageGrid | None = None, n_chains: int = 0, source_id=None, flags=None,
                   table=None, progress=None, return_points: bool = False, arrays: GridArrays | None = None) -> GridFit:
    """Grid posterior of N stars, Eqs. (P1)–(P2), as resampled draws (and images, NUTS seeds).

    Parameters
    ----------
    grid : ThetaGrid
    stars : StarArrays (see :func:`~photoinfer.grid.engine.star_arrays`)
    prior : GalacticPrior or None
        None: flat in μ, flat E on [0, 7], no θ prior beyond ``grid.ln_prior``.
    settings : GridSettings
    key : jax PRNG key (default PRNGKey(0)); star i uses fold_in(key, i), so chunking does not change results
    images : ImageGrid or None
        Also return per-star (μ, E) images on these bins.
    n_chains : int
        > 0: also return :class:`~photoinfer.grid.engine.InitialPoints` for that many NUTS chains.
    source_id : (N,) int64, optional
    flags : (N,) int64, optional
        Input flags; stars with ``INFERENCE_UNUSABLE`` bits are not fit (NaN draws) but kept.
    table : PositionTable, optional
        :func:`~photoinfer.grid.engine.position_table` of ``prior`` on this grid, to reuse.
    progress : callable(done, total), optional
    return_points : bool
        Also return the drawn points with their importance-sampling masses (~40 B × keep per star).
    arrays : GridArrays, optional
        :func:`~photoinfer.grid.engine.grid_arrays` of ``grid``, to reuse.

    Returns
    -------
    GridFit
    """
    from ..catalog import INFERENCE_UNUSABLE, Flag
    s = settings
    n = len(stars.mag)
    key = jax.random.PRNGKey(0) if key is None else key
    source_id = np.arange(n, dtype=np.int64) if source_id is None else np.asarray(source_id, np.int64)
    flags = np.zeros(n, np.int64) if flags is None else np.asarray(flags, np.int64).copy()
    n_obs = np.asarray(stars.weight > 0).sum(1)
    flags[n_obs < 2] |= int(Flag.TOO_FEW_BANDS)
    fit_idx = np.flatnonzero((flags & int(INFERENCE_UNUSABLE)) == 0)
    tab = None
    if prior is not None and s.position_free:
        tab = position_table(prior, grid.feh_axis) if table is None else table
    ga = grid_arrays(grid) if arrays is None else arrays
    if not s.continuous or grid.network is None:
        ga = ga._replace(network=None)
    spacing = jnp.asarray(grid.spacing, jnp.float32)
    D = s.n_draws
    draws = np.full((n, D, 5), np.nan, np.float32)
    draw_lw = np.full((n, D), np.nan, np.float32)
    ess = np.full(n, np.nan)
    lnz = np.full(n, np.nan)
    n_points = np.zeros(n, np.int64)
    imgs = None if images is None else np.zeros((n, images.n_mu, images.n_E), np.float32)
    inits, points = [], []
    for c0 in range(0, len(fit_idx), s.star_chunk):
        rows = fit_idx[c0:c0 + s.star_chunk]
        part = StarArrays(*[jnp.asarray(_pad_rows(np.asarray(a)[rows], s.star_chunk)) for a in stars])
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(_pad_rows(rows, s.star_chunk)))
        out = _posterior_chunk(ga, spacing, part, tab, keys, prior, int(s.keep), int(s.n_mu), D, float(s.inflate),
                               images, grid.stellar)
        k = len(rows)
        draws[rows] = np.asarray(out.draws)[:k]
        draw_lw[rows] = np.asarray(out.draw_logw)[:k]
        ess[rows] = np.asarray(out.ess)[:k]
        lnz[rows] = np.asarray(out.log_evidence)[:k]
        n_points[rows] = np.asarray(out.points.n_points)[:k]
        if imgs is not None:
            imgs[rows] = np.asarray(out.image)[:k]
        if return_points:
            points.append((rows, jax.tree_util.tree_map(lambda a: np.asarray(a)[:k], out.points)))
        if n_chains > 0:
            ip = initial_points(out.points, n_chains, spacing=grid.spacing)
            inits.append((rows, jax.tree_util.tree_map(lambda a: a[:k], ip)))
        if progress is not None:
            progress(min(c0 + s.star_chunk, len(fit_idx)), len(fit_idx))
    bad = np.zeros(n, bool)
    bad[fit_idx] = ~np.all(np.isfinite(draws[fit_idx]), axis=(1, 2)) | ~np.isfinite(ess[fit_idx])
    flags[bad] |= int(Flag.FIT_FAILED)
    draws[bad] = np.nan
    flags[np.isfinite(ess) & (ess < s.min_ess)] |= int(Flag.NOT_CONVERGED)
    initial = None
    if n_chains > 0:
        from .engine import InitialPoints
        C = n_chains
        initial = InitialPoints(np.full((n, C, 5), np.nan, np.float32), np.full((n, C, 5, 5), np.nan, np.float32),
                                np.zeros((n, C), np.int32), np.zeros((n, C), np.float32), np.zeros(n, np.int32))
        for rows, part in inits:
            for full, p in zip(initial, part):
                full[rows] = p
    fit = _to_fitresult(draws, draw_lw, ess, flags, source_id, grid, s)
    pts = None
    if return_points and points:
        pts = GridResult(*[np.full((n,) + a.shape[1:], np.nan if a.dtype.kind == "f" else -1, a.dtype)
                           for a in points[0][1]])
        for rows, p in points:
            for full, a in zip(pts, p):
                full[rows] = a
    return GridFit(fit, imgs, initial, ess, lnz, n_points, pts)


def _to_fitresult(draws, draw_lw, ess, flags, source_id, grid, s: GridSettings) -> FitResult:
    """Resampled draws → FitResult (one chain; ess in ess_bulk_min / ess_tail_min; rhat NaN)."""
    n = len(source_id)
    names = list(PARAMETERS)
    samples = {p: draws[None, :, :, i].transpose(0, 2, 1).copy() for i, p in enumerate(names)}   # (1, D, N)
    summary = {"source_id": source_id, "flags": flags, "method": np.full(n, "grid", dtype=object)}
    ok = np.all(np.isfinite(draws), axis=(1, 2))          # a star's draws are all finite or all NaN
    for i, p in enumerate([*names, "distance"]):
        x = distance_from_mu(draws[ok, :, 3]) if p == "distance" else draws[ok, :, i]
        q = np.full((3, n), np.nan)
        q[:, ok] = np.percentile(x, [16, 50, 84], axis=1)
        for j, pc in enumerate(("p16", "p50", "p84")):
            summary[f"{p}_{pc}"] = q[j]
    summary["rhat_max"] = np.full(n, np.nan)
    summary["ess_bulk_min"] = ess.copy()
    summary["ess_tail_min"] = ess.copy()
    summary["n_divergent"] = np.zeros(n, np.int64)
    summary["frac_outside_validity"] = np.where(np.isfinite(ess), 0.0, np.nan)
    summary = {c: summary[c] for c in SUMMARY_COLUMNS}
    stats = {"log_weight": draw_lw[None].transpose(0, 2, 1).copy()}
    attrs = {"grid_points": len(grid), "grid_spacing": list(map(float, grid.spacing)), **s.__dict__}
    return FitResult(source_id=source_id, samples=samples, sample_stats=stats, summary=summary, flags=flags,
                     method="grid", attrs=attrs)


def grid_fit(model, catalog, prior=None, spacing="coarse", settings: GridSettings = GridSettings(), seed: int = 0,
             images: ImageGrid | None = None, n_chains: int = 0, grid: ThetaGrid | None = None,
             progress=None) -> GridFit:
    """Grid posterior of every star of a :class:`~photoinfer.catalog.Catalog` (convenience wrapper).

    Builds the θ grid (``spacing``) unless given, packs the catalog (magnitudes, errors, parallax,
    l, b, E0, σ_E0) and calls :func:`grid_posterior`.
    """
    grid = make_theta_grid(model, spacing) if grid is None else grid
    stars = star_arrays(catalog.mag, catalog.mag_err, catalog.parallax, catalog.parallax_err, catalog.l, catalog.b,
                        catalog.E0, catalog.sigma_E0, sigma_model=settings.sigma_model)
    if not settings.position_free and not (np.all(np.isfinite(catalog.l)) and np.all(np.isfinite(catalog.b))):
        raise ValueError(f"{catalog.name}: some stars have no (l, b); use the position-free prior "
                         f"(e.g. row {int(np.flatnonzero(~np.isfinite(catalog.l + catalog.b))[0])})")
    return grid_posterior(grid, stars, prior, settings, jax.random.PRNGKey(seed), images, n_chains,
                          catalog.source_id, catalog.flags, progress=progress)


def mu_E_images(grid: ThetaGrid, stars: StarArrays, prior=None, bins: ImageGrid = ImageGrid(),
                settings: GridSettings = GridSettings(), key=None) -> np.ndarray:
    """Per-star (μ, E) posterior images from the weighted grid, shape (N, nμ, nE) float32.

    Each image is the posterior mass in each (μ, E) bin (bin edges ``linspace(lo, hi, n + 1)``),
    normalized to sum 1 per star (0 everywhere for a star that is not fit or whose posterior lies
    wholly outside the bins).  Built from every weighted (point, μ-draw) pair with one exact draw
    of E from its conditional each (keep × n_mu weighted samples per star).
    """
    return grid_posterior(grid, stars, prior, settings, key, images=bins).images
