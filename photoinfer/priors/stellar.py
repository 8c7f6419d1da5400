"""(Teff, logg | [M/H]) prior from a model's training-sample density, confined to its region of validity.

Built from a :class:`~photoinfer.model.stellar_model.ValidityGrid` (METHOD §7): map ``k`` (default
0, the parallax/absolute-magnitude sample in the released grid), peak-normalized, ρ(T, g, F) on a
regular (Teff, logg, [M/H]) grid. With threshold τ (default 1e-2 of the peak)::

    valid = ρ ≥ τ                                                                           (S1)
    G(T, g, F) = ln ρ                                  on valid nodes
               = ln τ − wall − slope · d_cells         elsewhere                             (S2)
    ln p(T, g | F_k) = Ĝ(T, g, F_k) − ln Z_k,  Z_k = ∬ exp Ĝ(T, g, F_k) dT dg                (S3)

Ĝ is the multilinear interpolant of G (the *log* density is interpolated, so p > 0 everywhere and
ln p is continuous and piecewise linear: gradients are finite and HMC sees a steep but finite
wall); ``d_cells`` is the chessboard distance [cells] to the nearest valid node, so that outside
the region the prior slopes back towards it instead of being flat. Beyond the grid's edges
ln p keeps falling by ``slope`` per cell. Defaults: wall = 20 (outside is at least e⁻²⁰ below
the threshold density), slope = 2 per cell.

Normalization (S3) is computed at construction for each [M/H] node (in closed form along Teff
within each cell, Gauss–Legendre along logg); it is exact (to that quadrature) on [M/H] nodes, and between nodes
ln Z is interpolated linearly with the rest, so the (Teff, logg)-integral there is 1 only to the
accuracy of the log-linear interpolation (a few per cent where the valid region changes fast with
[M/H]). [M/H] slices without any valid node take the Z of the nearest slice that has one, so
they stay at the outside level rather than being renormalized up to a proper density.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

__all__ = ["StellarPrior", "chessboard_distance"]


def chessboard_distance(mask: np.ndarray) -> np.ndarray:
    """Chessboard (L∞) distance [cells] of every node to the nearest True node of ``mask`` (N-d).

    Nodes are 0 inside the mask; the mask must have at least one True node.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("the mask has no True node")
    dist = np.where(mask, 0, -1).astype(np.int64)
    cur = mask.copy()
    k = 0
    while not cur.all():
        k += 1
        dil = cur.copy()
        for ax in range(cur.ndim):
            grown = dil.copy()
            sl_a = [slice(None)] * cur.ndim
            sl_b = [slice(None)] * cur.ndim
            sl_a[ax], sl_b[ax] = slice(1, None), slice(None, -1)
            grown[tuple(sl_a)] |= dil[tuple(sl_b)]
            grown[tuple(sl_b)] |= dil[tuple(sl_a)]
            dil = grown
        dist[dil & ~cur] = k
        cur = dil
    return dist.astype(np.float64)


def _slice_integral(G2: np.ndarray, dT: float, dg: float, n_gl: int = 24) -> float:
    """∬ exp(bilinear interpolant of G2) over the grid's extent, shape (nT, nG) nodes.

    In each cell the integral over Teff is done in closed form (the exponent is linear in it:
    ∫₀¹ e^(α+βx) dx = e^α expm1(β)/β) and the one over logg by ``n_gl``-point Gauss–Legendre.
    """
    y, w = np.polynomial.legendre.leggauss(n_gl)
    y, w = 0.5 * (y + 1.0), 0.5 * w                                   # on [0, 1]
    g00, g10 = G2[:-1, :-1, None], G2[1:, :-1, None]
    g01, g11 = G2[:-1, 1:, None], G2[1:, 1:, None]
    alpha = g00 + (g01 - g00) * y                                     # at Teff node i
    beta = (g10 + (g11 - g10) * y) - alpha                            # change across the cell
    small = np.abs(beta) < 1e-8
    e1 = np.where(small, 1.0 + 0.5 * beta, np.expm1(beta) / np.where(small, 1.0, beta))
    m = alpha.max()
    return float(np.exp(m) * (np.exp(alpha - m) * e1 * w).sum() * dT * dg)


@dataclass(frozen=True, eq=False)
class StellarPrior:
    """ln p(Teff, logg | [M/H]) on a regular grid, Eqs. (S1)-(S3).

    Attributes
    ----------
    log_p : ndarray, shape (nT, nG, nF)
        ln p(T, g | F) at the nodes [per K per dex].
    origin, step : ndarray, shape (3,)
        First node and spacing of the (Teff [K], logg [dex], [M/H] [dex]) axes.
    valid : ndarray of bool, shape (nT, nG, nF)
        The region of validity (S1).
    threshold, wall, slope : float
        As in (S1)-(S2).
    """

    log_p: np.ndarray
    origin: np.ndarray
    step: np.ndarray
    valid: np.ndarray
    threshold: float
    wall: float
    slope: float

    @classmethod
    def from_validity(cls, grid, map_index: int = 0, threshold: float = 1e-2, wall: float = 20.0,
                      slope: float = 2.0) -> "StellarPrior":
        """Build from a :class:`~photoinfer.model.stellar_model.ValidityGrid`.

        Parameters
        ----------
        grid : ValidityGrid
        map_index : int
            Which density map (0: the parallax/absolute-magnitude sample of the released grid).
        threshold : float
            Validity threshold relative to the map's peak (METHOD §7).
        wall, slope : float
            Outside level and slope, Eq. (S2) [nats, nats per cell].

        Raises
        ------
        ValueError
            When no node of the map reaches the threshold.
        """
        rho = np.asarray(grid.density[map_index], np.float64)
        rho = rho / rho.max()
        valid = rho >= threshold
        if not valid.any():
            raise ValueError(f"no node of density map {map_index} reaches the threshold {threshold}")
        axes = [np.asarray(a, np.float64) for a in (grid.teff, grid.logg, grid.feh)]
        origin = np.array([a[0] for a in axes])
        step = np.array([a[1] - a[0] for a in axes])
        dist = chessboard_distance(valid)
        G = np.where(valid, np.log(np.where(valid, rho, 1.0)), np.log(threshold) - wall - slope * dist)
        nF = G.shape[2]
        has = valid.any(axis=(0, 1))
        lnZ = np.full(nF, np.nan)
        for k in np.flatnonzero(has):
            lnZ[k] = np.log(_slice_integral(G[:, :, k], step[0], step[1]))
        good = np.flatnonzero(has)
        for k in np.flatnonzero(~has):
            lnZ[k] = lnZ[good[np.argmin(np.abs(good - k))]]
        log_p = G - lnZ[None, None, :]
        return cls(log_p.astype(np.float32), origin, step, valid, float(threshold), float(wall), float(slope))

    @classmethod
    def from_model(cls, model, **kwargs) -> "StellarPrior":
        """Build from a :class:`~photoinfer.model.StellarModel`'s ``validity`` grid (see :meth:`from_validity`)."""
        if model.validity is None:
            raise ValueError("the model has no validity grid; load it with its density file beside it")
        return cls.from_validity(model.validity, **kwargs)

    def __call__(self, theta):
        """ln p(Teff, logg | [M/H]) at θ, Eq. (S3).

        Parameters
        ----------
        theta : array, shape (..., 3)
            (Teff [K], logg [dex], [M/H] [dex]).

        Returns
        -------
        array, shape (...)
            [ln (K⁻¹ dex⁻¹)]; finite everywhere, jit/vmap/grad-friendly.
        """
        theta = jnp.asarray(theta, jnp.float32)
        n = self.log_p.shape
        coords, excess = [], 0.0
        for i in range(3):
            c = (theta[..., i] - float(self.origin[i])) / float(self.step[i])
            cc = jnp.clip(c, 0.0, n[i] - 1.0)
            excess = excess + jnp.abs(c - cc)
            coords.append(cc)
        val = map_coordinates(jnp.asarray(self.log_p), coords, order=1, mode="nearest")
        return val - self.slope * excess

    log_prob = __call__

    def in_valid_region(self, theta):
        """Whether θ lies in the region of validity (S1): the multilinearly interpolated indicator ≥ 0.5.

        Parameters
        ----------
        theta : array, shape (..., 3)

        Returns
        -------
        array of bool, shape (...)
        """
        theta = jnp.asarray(theta, jnp.float32)
        coords = [(theta[..., i] - float(self.origin[i])) / float(self.step[i]) for i in range(3)]
        v = map_coordinates(jnp.asarray(self.valid, jnp.float32), coords, order=1, mode="constant", cval=0.0)
        return v >= 0.5
