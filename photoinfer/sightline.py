"""Per-star (μ, E) posterior images on a fixed grid, their quantized storage, and sightline stacks.

A line-of-sight dust fit (Bayestar, Green et al. 2019) needs, for every star of a pixel, its
posterior density p(μ, E) on a common grid.  Default grid (Bayestar's): μ ∈ [4, 19] mag in 120
bins, E ∈ [0, 7] mag in 700 bins (:class:`ImageGrid`).

From MCMC draws (:func:`images_from_draws`): a 2-D histogram of the (μ, E) draws of all chains,
smoothed by a Gaussian of ``smooth = (σ_μ, σ_E)`` bins (default (1, 2) bins = 0.125 mag in μ and
0.02 mag in E at the default grid; truncated at 4σ; the edges reflect), then normalized to a
density: ``sum(p) · Δμ · ΔE = 1`` over the grid.  Draws outside the grid are dropped from the
histogram; their fraction is returned (``frac_outside``) so a user can flag such stars.

Storage (:func:`quantize`): each star's image divided by its maximum and rounded to ``uint8``
(0–255) with the per-star ``scale`` = maximum density, so ``p ≈ q · scale / 255``; a star whose
posterior lies entirely off the grid has an all-zero image and ``scale`` 0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["ImageGrid", "DEFAULT_GRID", "DEFAULT_SMOOTH", "images_from_draws", "smooth_images", "quantize",
           "dequantize", "stack_images", "median_profile", "locate_step"]

#: Default Gaussian smoothing of NUTS histograms, in bins (σ_μ, σ_E).
DEFAULT_SMOOTH = (1.0, 2.0)


@dataclass(frozen=True)
class ImageGrid:
    """A regular (μ, E) grid: ``n_mu`` bins over [mu_min, mu_max] [mag], ``n_E`` over [E_min, E_max] [mag]."""

    mu_min: float = 4.0
    mu_max: float = 19.0
    n_mu: int = 120
    E_min: float = 0.0
    E_max: float = 7.0
    n_E: int = 700

    def __post_init__(self):
        if not (self.mu_max > self.mu_min and self.E_max > self.E_min and self.n_mu >= 1 and self.n_E >= 1):
            raise ValueError(f"invalid image grid {self}")

    @property
    def mu_edges(self) -> np.ndarray:
        """(n_mu + 1,) bin edges [mag]."""
        return np.linspace(self.mu_min, self.mu_max, self.n_mu + 1)

    @property
    def E_edges(self) -> np.ndarray:
        """(n_E + 1,) bin edges [mag]."""
        return np.linspace(self.E_min, self.E_max, self.n_E + 1)

    @property
    def mu_centers(self) -> np.ndarray:
        e = self.mu_edges
        return 0.5 * (e[1:] + e[:-1])

    @property
    def E_centers(self) -> np.ndarray:
        e = self.E_edges
        return 0.5 * (e[1:] + e[:-1])

    @property
    def d_mu(self) -> float:
        return (self.mu_max - self.mu_min) / self.n_mu

    @property
    def d_E(self) -> float:
        return (self.E_max - self.E_min) / self.n_E

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def parse(cls, text: str) -> "ImageGrid":
        """From ``"mu_min,mu_max,n_mu,E_min,E_max,n_E"`` (the CLI's ``--image-grid``)."""
        try:
            a, b, c, d, e, f = text.split(",")
            return cls(float(a), float(b), int(c), float(d), float(e), int(f))
        except ValueError:
            raise ValueError(f"--image-grid expects mu_min,mu_max,n_mu,E_min,E_max,n_E (e.g. 4,19,120,0,7,700), "
                             f"got {text!r}") from None


DEFAULT_GRID = ImageGrid()


def smooth_images(images: np.ndarray, smooth=DEFAULT_SMOOTH) -> np.ndarray:
    """Gaussian smoothing along the μ and E axes of ``images`` (..., n_mu, n_E); σ in bins (0 = none)."""
    from scipy.ndimage import gaussian_filter1d
    out = np.asarray(images, dtype=np.float32)
    for axis, s in ((-2, smooth[0]), (-1, smooth[1])):
        if s > 0:
            out = gaussian_filter1d(out, float(s), axis=axis, mode="reflect", truncate=4.0)
    return out


def images_from_draws(mu: np.ndarray, E: np.ndarray, grid: ImageGrid = DEFAULT_GRID,
                      smooth=DEFAULT_SMOOTH, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-star (μ, E) posterior density images from posterior draws.

    Parameters
    ----------
    mu, E : (S, N) draws [mag] (all chains flattened into S); NaN draws are ignored
    grid : ImageGrid
    smooth : (σ_μ, σ_E) Gaussian smoothing [bins]
    chunk : stars histogrammed at once (bounds the temporary memory: chunk · n_mu · n_E · 8 bytes)

    Returns
    -------
    images : (N, n_mu, n_E) float32 density [mag⁻²], each integrating to 1 over the grid
        (all zeros when no draw falls on the grid)
    frac_outside : (N,) fraction of finite draws outside the grid (1 when there are none)
    """
    mu = np.asarray(mu, dtype=np.float64)
    E = np.asarray(E, dtype=np.float64)
    if mu.ndim == 1:
        mu, E = mu[:, None], E[:, None]
    n = mu.shape[1]
    if n > chunk:
        parts = [images_from_draws(mu[:, k:k + chunk], E[:, k:k + chunk], grid, smooth, chunk)
                 for k in range(0, n, chunk)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    i = np.floor((mu - grid.mu_min) / grid.d_mu)
    j = np.floor((E - grid.E_min) / grid.d_E)
    finite = np.isfinite(i) & np.isfinite(j)
    inside = finite & (i >= 0) & (i < grid.n_mu) & (j >= 0) & (j < grid.n_E)
    star = np.broadcast_to(np.arange(n), mu.shape)
    flat = (star[inside] * grid.n_mu + i[inside].astype(np.int64)) * grid.n_E + j[inside].astype(np.int64)
    counts = np.bincount(flat, minlength=n * grid.n_mu * grid.n_E).astype(np.float32)
    images = smooth_images(counts.reshape(n, grid.n_mu, grid.n_E), smooth)
    total = images.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        images *= np.where(total > 0, 1.0 / (total * grid.d_mu * grid.d_E), 0.0).astype(np.float32)[:, None, None]
    n_finite = finite.sum(axis=0)
    frac_outside = np.where(n_finite > 0, 1.0 - inside.sum(axis=0) / np.maximum(n_finite, 1), 1.0)
    return images, frac_outside


def quantize(images: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per-star normalized integers: ``q = round(p / max(p) · (2**bits − 1))``.

    Returns
    -------
    q : (N, n_mu, n_E) uint8 (bits=8) or uint16 (bits=16)
    scale : (N,) float32, max(p) per star (0 for an empty image), so p ≈ q · scale / (2**bits − 1)
    """
    if bits not in (8, 16):
        raise ValueError(f"quantize: bits must be 8 or 16, got {bits}")
    images = np.asarray(images, dtype=np.float32)
    top = (1 << bits) - 1
    scale = images.reshape(len(images), -1).max(axis=1) if images.size else np.zeros(len(images), np.float32)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 0.0).astype(np.float32)
    inv = np.where(scale > 0, top / np.where(scale > 0, scale, 1.0), 0.0)
    q = np.rint(np.clip(images * inv[:, None, None], 0, top))
    return q.astype(np.uint8 if bits == 8 else np.uint16), scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize`: (N, n_mu, n_E) float32 densities [mag⁻²]."""
    top = float(np.iinfo(q.dtype).max)
    return q.astype(np.float32) * (np.asarray(scale, np.float32) / top)[:, None, None]


def stack_images(images: np.ndarray, grid: ImageGrid = DEFAULT_GRID) -> np.ndarray:
    """Sum of the per-star densities each normalized to unit probability: (n_mu, n_E) [stars per bin].

    Stars with an empty image (posterior off the grid) add nothing.
    """
    images = np.asarray(images, dtype=np.float64)
    mass = images.sum(axis=(1, 2))
    w = np.where(mass > 0, 1.0 / np.where(mass > 0, mass, 1.0), 0.0)
    return np.tensordot(w, images, axes=(0, 0))


def median_profile(stack: np.ndarray, grid: ImageGrid = DEFAULT_GRID, min_stars: float = 0.5) -> np.ndarray:
    """Median E in each μ column of a stacked image: the quick-look E(μ) profile.

    Parameters
    ----------
    stack : (n_mu, n_E), from :func:`stack_images`
    min_stars : columns holding less than this many stars' probability give NaN

    Returns
    -------
    (n_mu,) median E [mag] of the stacked probability in each μ bin (linear inside the E bin)
    """
    stack = np.asarray(stack, dtype=np.float64)
    mass = stack.sum(axis=1)
    cdf = np.cumsum(stack, axis=1)
    out = np.full(grid.n_mu, np.nan)
    edges = grid.E_edges
    for k in np.flatnonzero(mass >= min_stars):
        half = 0.5 * mass[k]
        j = int(np.searchsorted(cdf[k], half))
        below = cdf[k, j - 1] if j > 0 else 0.0
        frac = (half - below) / stack[k, j] if stack[k, j] > 0 else 0.5
        out[k] = edges[j] + frac * grid.d_E
    return out


def locate_step(profile: np.ndarray, stack: np.ndarray, grid: ImageGrid = DEFAULT_GRID) -> tuple[float, float, float]:
    """Least-squares single step E(μ) = E_near (μ < μ_s), E_far (μ >= μ_s) through a median profile.

    Each finite column of ``profile`` is weighted by the stars' probability in it (``stack``
    summed over E); μ_s runs over the bin edges.  A quick look at a dust screen, not a dust map.

    Returns
    -------
    (mu_s [mag], E_near [mag], E_far [mag])
    """
    w = np.asarray(stack, np.float64).sum(axis=1)
    ok = np.isfinite(profile) & (w > 0)
    x, y, w = grid.mu_centers[ok], np.asarray(profile)[ok], w[ok]
    best = (np.inf, np.nan, np.nan, np.nan)
    for k in range(1, len(x)):
        lo, hi = slice(0, k), slice(k, None)
        a, b = np.average(y[lo], weights=w[lo]), np.average(y[hi], weights=w[hi])
        cost = np.sum(w[lo] * (y[lo] - a) ** 2) + np.sum(w[hi] * (y[hi] - b) ** 2)
        if cost < best[0]:
            edge = grid.mu_edges[np.searchsorted(grid.mu_centers, x[k])]
            best = (cost, float(0.5 * (x[k - 1] + x[k])) if x[k] - x[k - 1] > 1.5 * grid.d_mu else float(edge),
                    float(a), float(b))
    return best[1], best[2], best[3]
