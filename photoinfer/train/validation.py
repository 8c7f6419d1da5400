"""Validation numerics of a trained model (paper §5–6, METHOD §7): z-scores, χ²/dof, δR/R,
colour–magnitude points and the region-of-validity density.  Figures: :mod:`photoinfer.plots`."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import likelihood as lik
from ..batching import map_batched
from ..conventions import BandSet
from ..model import StellarModel, network
from ..model.stellar_model import ValidityGrid

__all__ = ["GRID_TEFF", "GRID_LOGG", "GRID_FEH", "BANDWIDTH", "validity_density", "validity_grid", "residuals",
           "binned_quantiles", "chi2_per_dof", "extinction_variation", "cmd_points"]

#: The released density grid's axes (METHOD §7): 50 nodes each.
GRID_TEFF = np.linspace(2500.0, 9000.0, 50)
GRID_LOGG = np.linspace(-2.0, 7.0, 50)
GRID_FEH = np.linspace(-2.5, 1.0, 50)
#: KDE bandwidth in (Teff [K], logg, [M/H]) (METHOD §7).
BANDWIDTH = (50.0, 0.05, 0.05)


def validity_density(theta, weights, axes=(GRID_TEFF, GRID_LOGG, GRID_FEH), bandwidth=BANDWIDTH,
                     chunk: int = 20000) -> np.ndarray:
    """Gaussian KDE of stars evaluated at the nodes of a regular grid, each map peak-normalized.

    ρ_k(node) = Σ_i w_ik Π_d exp(−(node_d − θ_id)²/(2 h_d²)), then ρ_k /= max ρ_k (METHOD §7).
    Evaluated at the nodes directly (the node spacing, e.g. 132 K, is coarser than the bandwidth),
    summing each star over the nodes within 5 h of it.

    Parameters
    ----------
    theta : (N, 3) [K, dex, dex]
    weights : (N, K) bool or float, which stars enter each of the K maps
    axes : three uniformly spaced 1-D arrays
    bandwidth : (3,) Gaussian σ per axis

    Returns
    -------
    (K, nT, nG, nF) float32
    """
    theta = np.asarray(theta, float)
    weights = np.asarray(weights, float).reshape(len(theta), -1)
    ok = np.isfinite(theta).all(axis=1)
    theta, weights = theta[ok], weights[ok]
    shape = tuple(len(a) for a in axes)
    K = weights.shape[1]
    out = np.zeros((K, int(np.prod(shape))))
    offs, steps = [], []
    for a, h in zip(axes, bandwidth):
        step = a[1] - a[0]
        w = int(np.ceil(5 * h / step))
        offs.append(np.arange(-w, w + 2))
        steps.append(step)
    for s in range(0, len(theta), chunk):
        th, wt = theta[s:s + chunk], weights[s:s + chunk]
        idx_list, g_list = [], []
        for d, (a, h) in enumerate(zip(axes, bandwidth)):
            base = np.floor((th[:, d] - a[0]) / steps[d]).astype(int)
            nodes = base[:, None] + offs[d][None, :]
            inside = (nodes >= 0) & (nodes < len(a))
            g = np.exp(-0.5 * ((a[0] + nodes * steps[d] - th[:, d:d + 1]) / h) ** 2) * inside
            idx_list.append(np.clip(nodes, 0, len(a) - 1))
            g_list.append(g)
        flat = ((idx_list[0][:, :, None, None] * shape[1] + idx_list[1][:, None, :, None]) * shape[2]
                + idx_list[2][:, None, None, :]).reshape(len(th), -1)
        g = (g_list[0][:, :, None, None] * g_list[1][:, None, :, None] * g_list[2][:, None, None, :]).reshape(len(th), -1)
        for k in range(K):
            if np.any(wt[:, k]):
                out[k] += np.bincount(flat.ravel(), (g * wt[:, k:k + 1]).ravel(), minlength=out.shape[1])
    peak = out.max(axis=1, keepdims=True)
    out = out / np.where(peak > 0, peak, 1.0)
    return out.reshape((K,) + shape).astype(np.float32)


def validity_grid(theta, y_obs, bands: BandSet, axes=(GRID_TEFF, GRID_LOGG, GRID_FEH),
                  bandwidth=BANDWIDTH) -> ValidityGrid:
    """The region of validity of a model trained on stars ``theta`` (METHOD §7).

    Map 0: stars whose absolute reference magnitude was observed (usable parallax, y₁); map b:
    stars with colour b observed (band b and the reference band), b = 1..B−1 — the layout of the
    released grid (13 maps: ``parallax``, then BP ... W2).

    Parameters
    ----------
    theta : (N, 3); y_obs : (N, B) bool, observed components of ŷ
    """
    dens = validity_density(theta, y_obs, axes, bandwidth)
    labels = ("parallax",) + tuple(bands.names[1:])
    return ValidityGrid(dens, *(np.asarray(a) for a in axes), labels)


# ---------------------------------------------------------------------- residuals and z-scores
def _star_residual(params, med, std, s, E, sigma_E):
    C = lik.star_covariance(params, med, std, s, E, sigma_E)
    r = s.y_hat - network.predict_y(params, med, std, s.theta, E)
    W = lik.whitening_matrix(C, s.y_obs)
    z = jnp.where(s.y_obs, r / jnp.sqrt(jnp.diagonal(C)), jnp.nan)
    return z, lik.chi2(W, r), jnp.sum(s.y_obs)


@jax.jit
def _residual_batch(params, med, std, s, E, sigma_E):
    return jax.vmap(lambda si, e, se: _star_residual(params, med, std, si, e, se))(s, E, sigma_E)


def residuals(model: StellarModel, data: lik.StarData, E, sigma_E, batch_size: int = 8192):
    """Per-star z-scores of ŷ, χ² and n_obs under ``model`` at reddening (E, σ_E) (METHOD §7).

    z_b = (ŷ_b − ŷ_model,b)/√C_y,bb with the full C_y of METHOD §3; NaN where unobserved.

    Returns
    -------
    z : (N, B); chi2 : (N,); n_obs : (N,) int
    """
    med, std = jnp.asarray(model.theta_med, jnp.float32), jnp.asarray(model.theta_std, jnp.float32)
    z, c2, n_obs = map_batched(lambda a: _residual_batch(model.params, med, std, *a),
                               (data, np.asarray(E, np.float32), np.asarray(sigma_E, np.float32)), batch_size)
    return z, c2.astype(np.float64), n_obs


def binned_quantiles(x, z, edges, quantiles=(0.16, 0.5, 0.84), min_count: int = 10):
    """Quantiles of z (N, B) in bins of x (N,): returns centres (nbin,), q (len(quantiles), nbin, B), counts (nbin, B).

    Bins with fewer than ``min_count`` finite values are NaN.
    """
    x = np.asarray(x, float)
    z = np.asarray(z, float).reshape(len(x), -1)
    edges = np.asarray(edges, float)
    nb = len(edges) - 1
    q = np.full((len(quantiles), nb, z.shape[1]), np.nan)
    counts = np.zeros((nb, z.shape[1]), int)
    which = np.digitize(x, edges) - 1
    for i in range(nb):
        zi = z[which == i]
        for b in range(z.shape[1]):
            v = zi[:, b][np.isfinite(zi[:, b])]
            counts[i, b] = len(v)
            if len(v) >= min_count:
                q[:, i, b] = np.quantile(v, quantiles)
    return 0.5 * (edges[1:] + edges[:-1]), q, counts


def chi2_per_dof(chi2, n_obs) -> dict:
    """χ² per degree of freedom over stars: ``pooled`` Σχ²/Σ(n_obs − 1), ``mean`` and ``median`` of
    the per-star χ²/(n_obs − 1) (one dof per star taken by its fitted E), and ``n``."""
    chi2, n_obs = np.asarray(chi2, float), np.asarray(n_obs, float)
    ok = np.isfinite(chi2) & (n_obs > 1)
    red = chi2[ok] / (n_obs[ok] - 1)
    if not ok.any():
        return {"n": 0, "pooled": float("nan"), "mean": float("nan"), "median": float("nan")}
    return {"n": int(ok.sum()), "pooled": float(chi2[ok].sum() / (n_obs[ok] - 1).sum()), "mean": float(red.mean()),
            "median": float(np.median(red))}


def extinction_variation(model: StellarModel, theta) -> np.ndarray:
    """δR/R = R(θ)/median over stars of R(θ) − 1, shape (N, B) (paper Fig. 10)."""
    R = np.asarray(model.extinction(np.asarray(theta, np.float32)))
    return R / np.median(R, axis=0, keepdims=True) - 1.0


def cmd_points(model: StellarModel, data: lik.StarData, E):
    """Colour–magnitude points: observed (M_G = G − μ̂ − E R_G, BP − RP dereddened) and model (A·M(θ̂), zero
    extinction), for stars with y₁, BP and RP observed.

    Returns
    -------
    dict with ``observed`` and ``model``, each (n, 2): (BP − RP, M_G); and ``index`` (n,) of the stars.
    """
    y, obs = np.asarray(data.y_hat), np.asarray(data.y_obs)
    k = np.flatnonzero(obs[:, 0] & obs[:, 1] & obs[:, 2])
    theta = np.asarray(data.theta)[k]
    am = np.asarray(model.predict_y(theta, 0.0))
    ar = np.asarray(network.to_colour_basis(model.extinction(theta)))
    Ek = np.asarray(E)[k][:, None]
    y_dered = y[k] - Ek * ar
    return {"observed": np.stack([y_dered[:, 1] - y_dered[:, 2], y_dered[:, 0]], 1),
            "model": np.stack([am[:, 1] - am[:, 2], am[:, 0]], 1), "index": k}
