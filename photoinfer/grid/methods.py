"""One entry point for the three fitting methods: ``grid``, ``nuts`` and ``grid+nuts``.

- ``grid``: :func:`photoinfer.grid.posterior.grid_posterior` (fast; θ resolved to the grid spacing).
- ``nuts``: :func:`photoinfer.infer.fit.fit_catalog` for every star, started and guided by the grid
  (:func:`grid_start`); ``guide=False``: NUTS with its own initialization, no grid.
- ``grid+nuts``: the grid for every star; NUTS only for the stars whose grid effective sample size is
  below ``min_grid_ess`` (or whose grid fit failed), or for all with ``exact=True``.

Grid-started NUTS chains start in every mode the grid finds (:func:`~photoinfer.grid.engine.initial_points`),
with the mode's local covariance as the initial inverse mass matrix, and alternate NUTS transitions with
independence Metropolis–Hastings moves proposed from the star's grid draws (:mod:`photoinfer.infer.guide`).

Both methods use the same prior object (:func:`photoinfer.infer.prior.build_prior`), so the grid
and NUTS posteriors are of the same model.  The result is one :class:`~photoinfer.fitresult.FitResult`
whose summary has a ``method`` per star.
"""
from __future__ import annotations

import logging

import numpy as np

from ..fitresult import FitResult
from ..infer.fit import REFINE_ROUNDS

__all__ = ["METHODS", "fit_with_method", "grid_start", "guide_from_grid", "nuts_init_from_grid"]

log = logging.getLogger(__name__)

#: Methods :func:`fit_with_method` knows.
METHODS = ("grid", "nuts", "grid+nuts")

_GRID_CACHE: dict = {}
_PRIOR_CACHE: dict = {}


def nuts_init_from_grid(initial, arrays, E_max: float, max_logit_var: float = 4.0):
    """NUTS starting points and inverse mass matrices from the grid's :class:`InitialPoints`.

    Parameters
    ----------
    initial : InitialPoints, position (N, C, 5) physical (Teff, logg, [M/H], μ, E), cov (N, C, 5, 5)
    arrays : ModelArrays (θ standardization of the sampler)
    E_max : float, the upper bound of E (the sampler's logit transform)
    max_logit_var : float, cap on the initial variance of logit(E/E_max) (E at the 0 edge)

    Returns
    -------
    z0 (N, C, 5), inv_mass (N, C, 5, 5): in the sampler's unconstrained coordinates
    (x = (θ − θ_med)/θ_std, μ, logit(E/E_max)); the covariance is mapped by the Jacobian of that map.
    """
    pos = np.asarray(initial.position, np.float64)
    med, std = np.asarray(arrays.theta_med, np.float64), np.asarray(arrays.theta_std, np.float64)
    e = np.clip(pos[..., 4] / E_max, 1e-3, 1 - 1e-3)
    z0 = np.concatenate([(pos[..., :3] - med) / std, pos[..., 3:4], np.log(e / (1 - e))[..., None]], -1)
    jac = np.concatenate([np.broadcast_to(1.0 / std, pos[..., :3].shape), np.ones(pos.shape[:-1] + (1,)),
                          (1.0 / (E_max * e * (1 - e)))[..., None]], -1)
    cov = np.asarray(initial.cov, np.float64) * jac[..., :, None] * jac[..., None, :]
    v = cov[..., 4, 4]
    s = np.sqrt(np.minimum(v, max_logit_var) / np.maximum(v, 1e-30))
    cov[..., 4, :] *= s[..., None]
    cov[..., :, 4] *= s[..., None]
    cov += 1e-6 * np.eye(5)
    bad = ~np.all(np.isfinite(z0), -1) | ~np.all(np.isfinite(cov), (-1, -2))
    z0[bad] = 0.0
    cov[bad] = np.eye(5)
    return z0.astype(np.float32), cov.astype(np.float32)


def guide_from_grid(samples: dict, arrays, prior, n_centres: int = 512, seed: int = 0) -> np.ndarray:
    """The grid guide's centres: ``n_centres`` of each star's grid draws, unconstrained.

    Parameters
    ----------
    samples : dict name -> (chain, draw, N) the grid's equal-weight draws of teff, logg, feh, mu, E
    arrays : ModelArrays (θ standardization of the sampler)
    prior : InferencePrior (E_max of the sampler's logit transform)
    n_centres : int, draws kept per star (picked at random without replacement)
    seed : int

    Returns
    -------
    (N, n_centres, 5) float32 in the sampler's unconstrained coordinates
    (:func:`~photoinfer.infer.model.unconstrain`); NaN for stars without grid draws (their guide's
    moves are then never accepted).
    """
    from ..fitresult import PARAMETERS
    from ..infer.model import unconstrain
    d = np.stack([np.asarray(samples[p], np.float32) for p in PARAMETERS], -1)      # (C, S, N, 5)
    d = np.moveaxis(d.reshape(-1, d.shape[2], 5), 1, 0)                             # (N, D, 5)
    rng = np.random.default_rng(seed)
    pick = np.argsort(rng.random(d.shape[:2]), axis=1)[:, :min(n_centres, d.shape[1])]
    d = np.take_along_axis(d, pick[..., None], axis=1)
    return np.asarray(unconstrain(*np.moveaxis(d, -1, 0), arrays, prior), np.float32)


def grid_start(model, catalog, prior, *, num_chains: int = 4, num_samples: int = 500, n_centres: int = 512,
               seed: int = 0, grid: str = "coarse", grid_settings=None, use_parallax: bool = True,
               use_position: bool = True, images=None):
    """Run the grid and turn it into NUTS starting points, metrics and the guide.

    Parameters
    ----------
    model : StellarModel; catalog : Catalog
    prior : InferencePrior (the one NUTS samples)
    num_chains, num_samples : the NUTS chains to seed (the grid draws num_chains × num_samples per star)
    n_centres : grid draws per star that the guide is built on
    seed, grid, grid_settings, use_parallax, use_position, images : as :func:`fit_with_method`

    Returns
    -------
    init : (z0 (N, C, 5), inv_mass (N, C, 5, 5)) for :func:`~photoinfer.infer.fit.fit_catalog`
    guide : (N, n_centres, 5) centres for :func:`~photoinfer.infer.fit.fit_catalog`
    gf : GridFit
    """
    from dataclasses import replace

    from ..infer.model import model_arrays
    from .posterior import GridSettings
    settings = replace(grid_settings if grid_settings is not None else GridSettings(),
                       n_draws=int(num_chains) * int(num_samples))
    gf = _grid_fit(model, catalog, prior.prior, spacing=grid, settings=settings, seed=seed, images=images,
                   n_chains=int(num_chains), use_parallax=use_parallax, use_position=use_position)
    arrays = model_arrays(model)
    init = nuts_init_from_grid(gf.initial, arrays, prior.E_max)
    return init, guide_from_grid(gf.fit.samples, arrays, prior, n_centres, seed), gf


def _prior(model, name, dust, E_max):
    """The InferencePrior, built once per (model, name, dust, E_max): building it tabulates the sky
    prior (seconds), and the same object keeps the jitted samplers' compilations (a static argument)."""
    from ..infer.prior import build_prior
    key = (id(model), name, dust, E_max)
    if key not in _PRIOR_CACHE:
        _PRIOR_CACHE.clear()
        _PRIOR_CACHE[key] = (model, build_prior(model, name=name, dust=dust, E_max=E_max))
    return _PRIOR_CACHE[key][1]


def _grid(model, spacing, stellar):
    """The θ grid (with the prior's own (Teff, logg | [M/H]) term) and its device arrays, cached."""
    from .engine import grid_arrays, make_theta_grid
    key = (id(model), spacing if isinstance(spacing, str) else tuple(spacing), id(stellar))
    if key not in _GRID_CACHE:
        g = make_theta_grid(model, spacing, stellar_prior=stellar)
        _GRID_CACHE.clear()
        _GRID_CACHE[key] = (model, stellar, g, grid_arrays(g))
    return _GRID_CACHE[key][2:]


def _grid_fit(model, catalog, gal_prior, *, spacing, settings, seed, images, n_chains, use_parallax, use_position):
    import jax

    from .engine import star_arrays
    from .posterior import grid_posterior
    grid, arrays = _grid(model, spacing, gal_prior.stellar)
    has_lb = np.isfinite(catalog.l) & np.isfinite(catalog.b)
    position_free = (not use_position) or not has_lb.all()
    if use_position and has_lb.any() and not has_lb.all():
        log.warning("%s: %d of %d stars have no (l, b): the grid uses the position-free prior for all",
                    catalog.name, int((~has_lb).sum()), len(catalog))
    stars = star_arrays(catalog.mag, catalog.mag_err, catalog.parallax if use_parallax else None,
                        catalog.parallax_err if use_parallax else None, catalog.l, catalog.b, catalog.E0,
                        catalog.sigma_E0, sigma_model=settings.sigma_model)
    from dataclasses import replace
    settings = replace(settings, position_free=position_free)
    return grid_posterior(grid, stars, gal_prior, settings, jax.random.PRNGKey(seed), images, n_chains,
                          catalog.source_id, catalog.flags, arrays=arrays)


def _as_chains(result: FitResult, C: int, S: int) -> FitResult:
    """Grid draws (1, C·S, N) viewed as (C, S, N) so that they stack with NUTS draws."""
    re = lambda a: np.asarray(a).reshape(C, S, a.shape[-1])  # noqa: E731
    return FitResult(result.source_id, {k: re(v) for k, v in result.samples.items()},
                     {k: re(v) for k, v in result.sample_stats.items()}, result.summary, result.flags,
                     result.method, result.attrs)


def fit_with_method(model, catalog, method: str = "nuts", *, prior: str = "bayestar", dust: str = "flat",
                    E_max: float | None = None, use_parallax: bool = True, use_position: bool = True, seed: int = 0,
                    grid: str = "coarse", grid_settings=None, min_grid_ess: float = 200.0, exact: bool = False,
                    images=None, num_warmup: int = 300, num_samples: int = 250, num_chains: int = 4,
                    batch_size: int = 25, callback=None, refine: int = REFINE_ROUNDS, guide: bool = True):
    """Fit every star of ``catalog`` with ``method`` (see the module docstring).

    Parameters
    ----------
    model : StellarModel; catalog : Catalog
    method : {"grid", "nuts", "grid+nuts"}
    prior, dust, E_max, use_parallax, use_position, seed
        As :func:`photoinfer.infer.fit.fit_catalog` (the same prior serves both methods).
    grid : θ grid preset ("fine", "coarse") or a 3-tuple of spacings
    grid_settings : GridSettings, optional (``n_draws`` is set to num_chains × num_samples for grid+nuts)
    min_grid_ess : float
        grid+nuts: NUTS runs for stars whose grid Kish ESS is below this (or whose grid fit failed).
    exact : bool
        grid+nuts: NUTS for every star (seeded by the grid).
    images : ImageGrid, optional
        Also return the grid's per-star (μ, E) images (methods grid and grid+nuts).
    num_warmup, num_samples, num_chains, batch_size, refine : NUTS settings (see
        :func:`~photoinfer.infer.fit.fit_catalog`)
    guide : bool
        NUTS chains are started and guided by the grid (:func:`grid_start`); False: method "nuts" runs
        without the grid (its own initialization), grid+nuts's chains start from the grid unguided.

    Returns
    -------
    result : FitResult (summary ``method`` per star: "grid" or "nuts"); attrs["nuts_stars"] the number
        of stars NUTS ran for
    images : (N, nμ, nE) float32 or None
    """
    from ..catalog import INFERENCE_UNUSABLE, Flag
    from ..infer.fit import fit_catalog
    from ..infer.prior import InferencePrior
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if images is not None and method == "nuts":
        raise ValueError("(mu, E) images come from the grid: use --method grid or grid+nuts")
    ip = prior if isinstance(prior, InferencePrior) else _prior(model, prior, dust, E_max)
    nuts_kw = dict(prior=ip, dust=dust, E_max=E_max, use_parallax=use_parallax, use_position=use_position,
                   seed=seed, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                   batch_size=batch_size, callback=callback, refine=refine)
    if method == "nuts" and not guide:
        res = fit_catalog(model, catalog, **nuts_kw)
        res.attrs["nuts_stars"] = int(np.sum(np.isfinite(res.summary["teff_p50"])))
        return res, None
    C, S = int(num_chains), int(num_samples)
    if method == "grid":
        from .posterior import GridSettings
        gf = _grid_fit(model, catalog, ip.prior, spacing=grid, settings=grid_settings or GridSettings(), seed=seed,
                       images=images, n_chains=0, use_parallax=use_parallax, use_position=use_position)
    else:
        (z0, inv_mass), centres, gf = grid_start(model, catalog, ip, num_chains=C, num_samples=S, seed=seed,
                                                 grid=grid, grid_settings=grid_settings, use_parallax=use_parallax,
                                                 use_position=use_position, images=images)
    res = gf.fit
    res.attrs.update(prior=ip.name, dust_prior=dust, E_max=ip.E_max, grid=str(grid), seed=int(seed), nuts_stars=0)
    if method == "grid":
        return res, gf.images
    flags = np.asarray(catalog.flags, np.int64)
    usable = (flags & int(INFERENCE_UNUSABLE)) == 0
    redo = usable & (exact | (method == "nuts") | ~(gf.ess >= min_grid_ess)
                     | ((res.flags & int(Flag.FIT_FAILED)) != 0))
    res = _as_chains(res, C, S)
    idx = np.flatnonzero(redo)
    log.info("%s: NUTS for %d of %d stars%s", method, len(idx), len(catalog),
             f" (grid ESS < {min_grid_ess:g}{', --exact' if exact else ''})" if method == "grid+nuts" else "")
    if len(idx) == 0:
        return res, gf.images
    nres = fit_catalog(model, catalog.subset(idx), **nuts_kw, init=(z0[idx], inv_mass[idx]),
                       guide=centres[idx] if guide else None)
    for k in res.samples:
        res.samples[k][..., idx] = nres.samples[k]
    stats = {}
    for k in set(res.sample_stats) | set(nres.sample_stats):
        a = res.sample_stats.get(k)
        b = np.asarray(nres.sample_stats[k]) if k in nres.sample_stats else None
        dtype = np.result_type(*(x.dtype for x in (a, b) if x is not None), np.float32)
        full = np.zeros((C, S, len(catalog)), dtype) if a is None else np.asarray(a, dtype).copy()
        if a is None and dtype.kind == "f":
            full[:] = np.nan
        if b is not None:
            full[..., idx] = b
        elif dtype.kind == "f":
            full[..., idx] = np.nan
        stats[k] = full
    res.sample_stats = stats
    for col, v in nres.summary.items():
        arr = np.asarray(res.summary[col])
        if arr.dtype.kind in "OUS":
            arr = arr.astype(object)
        else:
            arr = arr.astype(np.result_type(arr.dtype, np.asarray(v).dtype))
        arr[idx] = np.asarray(v)
        res.summary[col] = arr
    res.summary["method"] = np.where(redo, "nuts", "grid").astype(object)
    res.flags = np.asarray(res.summary["flags"], np.int64)
    res.method = method
    res.attrs.update(nuts_stars=int(len(idx)), min_grid_ess=float(min_grid_ess), exact=bool(exact),
                     sampling_time_s=nres.attrs.get("sampling_time_s"), guided=bool(guide),
                     refined_stars=nres.attrs.get("refined_stars"))
    return res, gf.images
