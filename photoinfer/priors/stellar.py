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

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

__all__ = ["StellarPrior", "SmoothStellarPrior", "fit_weighted_gmm", "chessboard_distance"]


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


# ----------------------------------------------------------------------------------------- smooth prior
_LN_2PI = float(np.log(2.0 * np.pi))
_GMM_CACHE: dict = {}


def _quad_features(z):
    """(z, upper-triangle products of z) so that a quadratic form is one matrix product, (..., d + d(d+1)/2)."""
    d = z.shape[-1]
    iu = np.triu_indices(d)
    return z, z[..., iu[0]] * z[..., iu[1]]


def _gmm_coefficients(weights, means, covs):
    """Per component: c_k, b_k (d,), a_k (d(d+1)/2,) with ln π_k N(z | m_k, Σ_k) = c_k + b_k·z + a_k·(z zᵀ)_triu."""
    d = means.shape[1]
    prec = np.linalg.inv(covs)
    prec = 0.5 * (prec + np.swapaxes(prec, 1, 2))
    iu = np.triu_indices(d)
    mult = np.where(iu[0] == iu[1], -0.5, -1.0)
    a = prec[:, iu[0], iu[1]] * mult                                   # (K, d(d+1)/2)
    b = np.einsum("kij,kj->ki", prec, means)                          # (K, d)
    _, logdet = np.linalg.slogdet(covs)
    c = np.log(weights) - 0.5 * np.einsum("ki,ki->k", b, means) - 0.5 * logdet - 0.5 * d * _LN_2PI
    return c, b, a


def _gmm_log_components(z, weights, means, covs):
    """ln(π_k N(z | m_k, Σ_k)) per component, numpy, z (n, d) → (n, K)."""
    c, b, a = _gmm_coefficients(weights, means, covs)
    zl, zq = _quad_features(z)
    return c + zl @ b.T + zq @ a.T


def fit_weighted_gmm(z: np.ndarray, w: np.ndarray, n_components: int = 32, floor=None, max_iter: int = 300,
                     tol: float = 1e-5):
    """Weighted EM for a Gaussian mixture (numpy, deterministic), Eq. (S4).

    Initialization: the first mean is the heaviest point, each next one the point maximizing
    w_i · d²(z_i, nearest mean) (a deterministic k-means++); covariances 0.1·I, equal weights.
    EM stops when the weighted mean log-likelihood changes by less than ``tol``.

    Parameters
    ----------
    z : ndarray, shape (n, d)
        Points (standardized coordinates).
    w : ndarray, shape (n,)
        Non-negative weights (normalized here).
    n_components : int
    floor : ndarray, shape (d, d), optional
        Added to every covariance at each M step (e.g. a grid cell's variance, step²/12).
    max_iter : int
    tol : float

    Returns
    -------
    weights (K,), means (K, d), covs (K, d, d)
    """
    z = np.asarray(z, np.float64)
    w = np.asarray(w, np.float64)
    w = w / w.sum()
    n, dim = z.shape
    floor = np.zeros((dim, dim)) if floor is None else np.asarray(floor, np.float64)
    idx = [int(np.argmax(w))]
    d2 = np.sum((z - z[idx[0]]) ** 2, 1)
    for _ in range(1, n_components):
        i = int(np.argmax(w * d2))
        idx.append(i)
        d2 = np.minimum(d2, np.sum((z - z[i]) ** 2, 1))
    means = z[idx].copy()
    covs = np.repeat(0.1 * np.eye(dim)[None], n_components, 0)
    weights = np.full(n_components, 1.0 / n_components)
    prev = -np.inf
    _, zz = _quad_features(z)
    iu = np.triu_indices(dim)
    for _ in range(max_iter):
        lp = _gmm_log_components(z, weights, means, covs)
        mx = lp.max(1, keepdims=True)
        lse = mx[:, 0] + np.log(np.exp(lp - mx).sum(1))
        ll = float(w @ lse)
        resp = np.exp(lp - lse[:, None]) * w[:, None]
        nk = np.maximum(resp.sum(0), 1e-300)
        weights = nk / nk.sum()
        means = (resp.T @ z) / nk[:, None]
        second = (resp.T @ zz) / nk[:, None]                           # E[z_i z_j], upper triangle
        covs = np.zeros((n_components, dim, dim))
        covs[:, iu[0], iu[1]] = second
        covs[:, iu[1], iu[0]] = second
        covs = covs - means[:, :, None] * means[:, None, :] + floor + 1e-6 * np.eye(dim)
        if abs(ll - prev) < tol:
            break
        prev = ll
    return weights, means, covs


@dataclass(frozen=True, eq=False)
class SmoothStellarPrior:
    """A smooth ln p(Teff, logg | [M/H]): Gaussian mixture of the training density with a soft validity wall.

    With z = (θ − centre)/scale (standardized (Teff, logg, [M/H])) and the mixture
    q(z) = Σ_k π_k N(z | m_k, Σ_k) fitted to the peak-normalized density map ρ on its nodes by
    weighted EM (:func:`fit_weighted_gmm`; nodes with ρ ≥ ``min_rho``, weights ρ, the cell variance
    step²/12 added to every covariance)::

        q(z) ≈ ρ(θ) / ∫ρ                                                                       (S4)
        ln W(θ) = −slope · width · softplus(Δ / width),  Δ = ln τ + ln q_peak − ln q(z)         (S5)
        ln p(T, g | F) = ln q(z) − ln q_F(z_F) + ln W(θ) − ln(scale_T scale_g)                  (S6)

    q_F is the mixture's [M/H] marginal (a 1-D mixture with the same weights, means m_k,F and
    variances Σ_k,FF: analytic), so without the wall (S6) integrates to exactly 1 over (Teff, logg)
    at every [M/H].  The wall (S5) confines the prior to the region of validity — where the
    mixture is below τ (default 1e-2) of its peak q_peak (its maximum over the density grid's
    nodes) — smoothly: Δ is how many nats q lies below the threshold; the wall is ≈ 0 well inside
    (−slope·width·e^(−|Δ|/width): −0.002 at 3 nats above the threshold for the defaults
    slope = 2, width = 0.5), −0.69 at the threshold, and ≈ −slope·Δ outside, i.e. the prior falls
    like q^(1+slope) there.  Its curvature is bounded (slope/(4 width) in ln q), unlike a
    quadratic or hard wall, which is what HMC needs.  It is *not* renormalized away: at fixed [M/H]
    (S6) integrates to the fraction of the mixture's mass inside the region, so [M/H] values where
    the model is invalid (e.g. [M/H] < −1.3 for the released model, whose training density there
    stays below 1e-2 of its peak) are suppressed in the joint prior, as the region of validity asks.

    Attributes
    ----------
    weights : ndarray, shape (K,)
    means : ndarray, shape (K, 3)
    covs : ndarray, shape (K, 3, 3)
        The mixture in standardized θ.
    centre, scale : ndarray, shape (3,)
        θ = centre + scale · z [K, dex, dex].
    log_peak : float
        ln q_peak.
    threshold, width, slope : float
        τ, the wall's width [nats] and slope, Eq. (S5).
    origin, step : ndarray, shape (3,)
        The density grid's first node and spacing (for gridded uses: :attr:`log_p`, :attr:`valid`).
    shape : tuple
        The density grid's shape (nT, nG, nF).
    """

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    log_peak: float
    threshold: float
    width: float
    slope: float
    origin: np.ndarray
    step: np.ndarray
    shape: tuple

    @classmethod
    def from_validity(cls, grid, map_index: int = 0, threshold: float = 1e-2, width: float = 0.5,
                      slope: float = 2.0, n_components: int = 32, min_rho: float = 1e-4) -> "SmoothStellarPrior":
        """Fit (S4) to density map ``map_index`` of a :class:`~photoinfer.model.stellar_model.ValidityGrid`.

        Deterministic; fits are cached per (map contents, settings) in the process.

        Raises
        ------
        ValueError
            When no node of the map reaches the threshold.
        """
        rho = np.asarray(grid.density[map_index], np.float64)
        rho = rho / rho.max()
        if not (rho >= threshold).any():
            raise ValueError(f"no node of density map {map_index} reaches the threshold {threshold}")
        axes = [np.asarray(a, np.float64) for a in (grid.teff, grid.logg, grid.feh)]
        origin = np.array([a[0] for a in axes])
        step = np.array([a[1] - a[0] for a in axes])
        import hashlib
        key = (hashlib.sha1(np.ascontiguousarray(rho, np.float32).tobytes()).hexdigest(), tuple(origin), tuple(step),
               int(n_components), float(min_rho))
        if key not in _GMM_CACHE:
            nodes = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
            r = rho.ravel()
            sel = r >= min_rho
            w = r[sel] / r[sel].sum()
            centre = w @ nodes[sel]
            scale = np.sqrt(w @ (nodes[sel] - centre) ** 2)
            z = (nodes[sel] - centre) / scale
            weights, means, covs = fit_weighted_gmm(z, w, n_components, floor=np.diag((step / scale) ** 2 / 12.0))
            lq = _gmm_log_components((nodes - centre) / scale, weights, means, covs)
            mx = lq.max(1)
            log_peak = float(np.max(mx + np.log(np.exp(lq - mx[:, None]).sum(1))))
            _GMM_CACHE[key] = (weights, means, covs, centre, scale, log_peak)
        weights, means, covs, centre, scale, log_peak = _GMM_CACHE[key]
        return cls(weights, means, covs, centre, scale, log_peak, float(threshold), float(width), float(slope), origin,
                   step, tuple(rho.shape))

    @classmethod
    def from_model(cls, model, **kwargs) -> "SmoothStellarPrior":
        """Fit to a :class:`~photoinfer.model.StellarModel`'s ``validity`` grid (see :meth:`from_validity`)."""
        if model.validity is None:
            raise ValueError("the model has no validity grid; load it with its density file beside it")
        return cls.from_validity(model.validity, **kwargs)

    # -- pieces, all jit/vmap/grad-friendly
    def _z(self, theta):
        theta = jnp.asarray(theta, jnp.float32)
        return (theta - jnp.asarray(self.centre, jnp.float32)) / jnp.asarray(self.scale, jnp.float32)

    def log_joint(self, theta):
        """ln q(z) of (S4) [per unit standardized volume], shape (...)."""
        c, b, a = _gmm_coefficients(self.weights, self.means, self.covs)
        z = self._z(theta)
        zl, zq = _quad_features(z)
        lp = jnp.asarray(c, jnp.float32) + zl @ jnp.asarray(b.T, jnp.float32) + zq @ jnp.asarray(a.T, jnp.float32)
        return jax.scipy.special.logsumexp(lp, axis=-1)

    def log_marginal_feh(self, feh):
        """ln q_F of (S6) [per unit standardized [M/H]], shape (...)."""
        zf = (jnp.asarray(feh, jnp.float32) - float(self.centre[2])) / float(self.scale[2])
        var = self.covs[:, 2, 2]
        c = jnp.asarray(np.log(self.weights) - 0.5 * np.log(2 * np.pi * var), jnp.float32)
        return jax.scipy.special.logsumexp(c - 0.5 * (zf[..., None] - jnp.asarray(self.means[:, 2], jnp.float32)) ** 2
                                           / jnp.asarray(var, jnp.float32), axis=-1)

    def _wall(self, lq):
        below = np.log(self.threshold) + self.log_peak - lq
        return -self.slope * self.width * jax.nn.softplus(below / self.width)

    def log_wall(self, theta):
        """ln W(θ), Eq. (S5): ≈ 0 inside the region of validity, ≈ −slope · (nats below the threshold) outside."""
        return self._wall(self.log_joint(theta))

    def __call__(self, theta):
        """ln p(Teff, logg | [M/H]) at θ, Eq. (S6).

        Parameters
        ----------
        theta : array, shape (..., 3)
            (Teff [K], logg [dex], [M/H] [dex]).

        Returns
        -------
        array, shape (...)
            [ln (K⁻¹ dex⁻¹)]; finite and smooth everywhere.
        """
        theta = jnp.asarray(theta, jnp.float32)
        lq = self.log_joint(theta)
        return lq - self.log_marginal_feh(theta[..., 2]) + self._wall(lq) - float(np.log(self.scale[0] * self.scale[1]))

    log_prob = __call__

    def in_valid_region(self, theta):
        """Whether θ lies in the region of validity: q(z) ≥ τ q_peak, shape (...) bool."""
        return self.log_joint(theta) >= np.log(self.threshold) + self.log_peak

    def _nodes(self):
        axes = [self.origin[i] + self.step[i] * np.arange(self.shape[i]) for i in range(3)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), -1).astype(np.float32)

    @property
    def valid(self) -> np.ndarray:
        """The region of validity on the density grid's nodes, shape (nT, nG, nF) bool."""
        return np.asarray(self.in_valid_region(self._nodes()))

    @property
    def log_p(self) -> np.ndarray:
        """(S6) on the density grid's nodes, shape (nT, nG, nF) float32."""
        return np.asarray(self(self._nodes()), np.float32)
