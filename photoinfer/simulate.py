"""Mock catalogs with known truth, for tests and benchmarks (docs/simulate.md).

Each star is drawn independently, in this order (one seeded numpy Generator; deterministic for a seed):

1. θ = (Teff, logg, [M/H]): by default from the model's training density (the first map of
   ``model.validity``, METHOD §7): a grid node is chosen with probability ∝ density among the nodes
   with density ≥ 1e-2 of the peak, then θ is spread uniformly over that node's cell; draws that
   fall outside the region of validity (:meth:`StellarPrior.in_valid_region`) are redrawn.  This is
   the "training-density" stellar prior.  Alternatively (``theta_source``) real θ are resampled with
   Gaussian jitter of the density grid's KDE bandwidth (50 K, 0.05, 0.05), outside-validity draws
   redrawn.  [M/H] is *not* tied to the star's position (see docs/simulate.md).
2. (l, b): uniform on the sphere, or uniform within HEALPix pixels (:class:`HealpixRegion`) or a
   cone (:class:`Cone`).
3. μ: from the Galactic prior along the sightline, p(μ | l, b) ∝ n(R, Z)·d³ (METHOD §8,
   :func:`photoinfer.priors.log_prior_mu`), by inverse CDF on a fine μ grid over ``mu_range``.
4. E ≥ 0: a smooth exponential dust disk integrated along the sightline times a log-normal
   per-HEALPix-pixel "cloudiness" factor (:class:`DustModel`), or a dust screen
   (``dust_screen=(mu_screen, E_screen[, foreground])``).  The reddening prior (E₀, σ_E₀) comes with an
   error of one of two kinds (``reddening_prior_error``, see :func:`reddening_prior`):
   ``"berkson"`` (default with the dust model): the dust model is the *map*, and the true E scatters
   around it, E ~ N(E_map, σ²) truncated to E ≥ 0, with E₀, σ_E₀ the mean and standard deviation of
   that truncated normal — so N(E₀, σ_E₀²) is the star's reddening given the map, as a prior should
   be; ``"classical"`` (default with a dust screen, whose E is the truth by construction): E is the
   dust value and E₀ = E + σ·N(0, 1), σ_E₀ = σ.
5. Photometry m = M(θ) + μ + E·R(θ) (``model.predict_magnitudes``), errors, limits, coverage masks and
   noise from :mod:`photoinfer.mock_errors`.
6. Parallax ϖ = 10^(2 − μ/5) mas + σ_ϖ(G)·N(0, 1) (negative values kept).
7. θ measurement θ̂ = θ + N(0, C_θ) (unless photometry-only).

Truth lands in ``Catalog.extra``: ``true_teff, true_logg, true_feh, true_mu, true_E, true_parallax``
and ``true_mag_<band key>``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .catalog import Catalog
from .mock_errors import DEFAULT_ERROR_MODEL, ErrorModel, parallax_error, photometric_error

__all__ = ["simulate_catalog", "HealpixRegion", "Cone", "DustModel", "sample_sky", "sample_theta_validity",
           "sample_theta_from_array", "sample_mu", "mu_grid_cdf", "dust_reddening", "screen_reddening",
           "observe_photometry", "reddening_prior", "REDDENING_PRIOR_ERRORS", "write_catalog", "THETA_JITTER", "MU_RANGE"]

log = logging.getLogger(__name__)

#: Jitter added to resampled θ: the KDE bandwidth of the validity grid (METHOD §7) [K, dex, dex].
THETA_JITTER = (50.0, 0.05, 0.05)
#: Kinds of reddening-prior error (:func:`reddening_prior`).
REDDENING_PRIOR_ERRORS = ("berkson", "classical")
#: Default distance-modulus range [mag] (Bayestar's (μ, E) grid, METHOD §8).
MU_RANGE = (4.0, 19.0)


def _rng(key_or_seed) -> np.random.Generator:
    """A numpy Generator from an int seed, a Generator, or a JAX PRNG key."""
    if isinstance(key_or_seed, np.random.Generator):
        return key_or_seed
    if isinstance(key_or_seed, (int, np.integer)):
        return np.random.default_rng(int(key_or_seed))
    import jax
    data = key_or_seed
    if hasattr(key_or_seed, "dtype") and jax.dtypes.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key):
        data = jax.random.key_data(key_or_seed)
    return np.random.default_rng(np.asarray(data, np.uint32).ravel())


# ---------------------------------------------------------------------- sky
@dataclass(frozen=True)
class HealpixRegion:
    """HEALPix pixels (``nside``, ``pixels``; NESTED ordering unless ``nest=False``, Galactic frame)."""

    nside: int
    pixels: tuple
    nest: bool = True


@dataclass(frozen=True)
class Cone:
    """A circle on the sky: centre (``l``, ``b``) and ``radius`` [deg], Galactic frame."""

    l: float
    b: float
    radius: float


def sample_sky(rng: np.random.Generator, n: int, sky=None) -> tuple[np.ndarray, np.ndarray]:
    """(l, b) [deg], each (n,), uniform per unit solid angle over ``sky``.

    Parameters
    ----------
    sky : None, HealpixRegion or Cone
        None: the whole sphere.  HealpixRegion: a pixel is picked uniformly (pixels have equal area),
        then a uniformly random sub-pixel at nside 8192 (≈ 0.4′), whose centre is returned.
    """
    if sky is None:
        l = rng.uniform(0.0, 360.0, n)
        b = np.rad2deg(np.arcsin(rng.uniform(-1.0, 1.0, n)))
        return l, b
    if isinstance(sky, Cone):
        if not 0 < sky.radius <= 180:
            raise ValueError(f"cone radius {sky.radius} deg must be in (0, 180]")
        cos_t = rng.uniform(np.cos(np.deg2rad(sky.radius)), 1.0, n)
        phi = rng.uniform(0.0, 2 * np.pi, n)
        sin_t = np.sqrt(1.0 - cos_t ** 2)
        v = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=-1)  # around the z axis
        lc, bc = np.deg2rad(sky.l), np.deg2rad(sky.b)
        # rotate z → (l, b): first about y by (90° − b), then about z by l
        ty = np.pi / 2 - bc
        ry = np.array([[np.cos(ty), 0, np.sin(ty)], [0, 1, 0], [-np.sin(ty), 0, np.cos(ty)]])
        rz = np.array([[np.cos(lc), -np.sin(lc), 0], [np.sin(lc), np.cos(lc), 0], [0, 0, 1]])
        w = v @ (rz @ ry).T
        return np.mod(np.rad2deg(np.arctan2(w[:, 1], w[:, 0])), 360.0), np.rad2deg(np.arcsin(np.clip(w[:, 2], -1, 1)))
    if isinstance(sky, HealpixRegion):
        import healpy as hp
        pix = np.atleast_1d(np.asarray(sky.pixels, np.int64))
        npix = hp.nside2npix(sky.nside)
        if len(pix) == 0 or pix.min() < 0 or pix.max() >= npix:
            raise ValueError(f"HEALPix pixels must be in [0, {npix}) for nside {sky.nside}; got {pix[:5].tolist()}...")
        if not sky.nest:
            pix = hp.ring2nest(sky.nside, pix)
        fine = max(8192, sky.nside)
        k = 4 ** int(round(np.log2(fine // sky.nside)))
        sub = pix[rng.integers(0, len(pix), n)] * k + rng.integers(0, k, n)
        l, b = hp.pix2ang(fine, sub, nest=True, lonlat=True)
        return np.asarray(l, np.float64), np.asarray(b, np.float64)
    raise ValueError(f"sky must be None, a HealpixRegion or a Cone, not {type(sky).__name__}")


# ---------------------------------------------------------------------- θ
def _valid_region(model, threshold):
    from .priors.stellar import StellarPrior
    return StellarPrior.from_model(model, threshold=threshold)


def sample_theta_validity(rng: np.random.Generator, model, n: int, threshold: float = 1e-2,
                          map_index: int = 0) -> np.ndarray:
    """θ (n, 3) from the model's training density (first map), within the region of validity.

    Nodes with density ≥ ``threshold`` (of the peak) are picked ∝ density; θ is uniform over the
    picked node's cell (± half a grid step); draws outside :meth:`StellarPrior.in_valid_region`
    are redrawn.
    """
    if model.validity is None:
        raise ValueError("the model has no validity (training density) grid: pass theta_source (an (N, 3) array "
                         "of θ to resample) instead")
    grid = model.validity
    rho = np.asarray(grid.density[map_index], np.float64)
    rho = rho / rho.max()
    w = np.where(rho >= threshold, rho, 0.0).ravel()
    p = w / w.sum()
    axes = [np.asarray(a, np.float64) for a in (grid.teff, grid.logg, grid.feh)]
    step = np.array([a[1] - a[0] for a in axes])
    region = _valid_region(model, threshold)
    out = np.empty((0, 3))
    while len(out) < n:
        m = int(1.2 * (n - len(out))) + 16
        idx = np.unravel_index(rng.choice(p.size, size=m, p=p), rho.shape)
        theta = np.stack([axes[i][idx[i]] for i in range(3)], axis=-1) + (rng.uniform(-0.5, 0.5, (m, 3)) * step)
        out = np.concatenate([out, theta[np.asarray(region.in_valid_region(theta))]])
    return out[:n]


def sample_theta_from_array(rng: np.random.Generator, theta_source, n: int, jitter=THETA_JITTER,
                            model=None, threshold: float = 1e-2) -> np.ndarray:
    """θ (n, 3): rows of ``theta_source`` (M, 3) resampled with replacement + N(0, jitter²).

    Rows with a non-finite value are ignored.  With ``model`` (and its validity grid), draws outside
    the region of validity are redrawn.
    """
    src = np.asarray(theta_source, np.float64)
    if src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"theta_source must have shape (M, 3) (Teff, logg, [M/H]); got {src.shape}")
    src = src[np.isfinite(src).all(axis=1)]
    if len(src) == 0:
        raise ValueError("theta_source has no finite row")
    region = _valid_region(model, threshold) if model is not None and model.validity is not None else None
    out = np.empty((0, 3))
    for _ in range(100):
        m = int(1.2 * (n - len(out))) + 16
        theta = src[rng.integers(0, len(src), m)] + rng.normal(size=(m, 3)) * np.asarray(jitter)
        if region is not None:
            theta = theta[np.asarray(region.in_valid_region(theta))]
        out = np.concatenate([out, theta])
        if len(out) >= n:
            return out[:n]
    raise ValueError("theta_source: fewer than 1 % of the jittered draws lie in the model's region of validity")


# ---------------------------------------------------------------------- distance
def mu_grid_cdf(l, b, params, mu_range=MU_RANGE, n_grid: int = 1501):
    """CDF of p(μ | l, b) ∝ exp(log_prior_mu) on a μ grid (trapezoid rule).

    Returns
    -------
    mu : (n_grid,) [mag]
    cdf : (N, n_grid), 0 at ``mu_range[0]``, 1 at ``mu_range[1]``
    """
    from .priors.galactic import log_prior_mu
    mu = np.linspace(*mu_range, n_grid)
    lp = np.asarray(log_prior_mu(mu[None, :], np.asarray(l)[:, None], np.asarray(b)[:, None], params), np.float64)
    pdf = np.exp(lp - lp.max(axis=1, keepdims=True))
    c = np.concatenate([np.zeros((len(pdf), 1)), np.cumsum(0.5 * (pdf[:, 1:] + pdf[:, :-1]), axis=1)], axis=1)
    return mu, c / c[:, -1:]


def sample_mu(rng: np.random.Generator, l, b, params, mu_range=MU_RANGE, n_grid: int = 1501,
              chunk: int = 4096) -> np.ndarray:
    """μ (N,) [mag] from the Galactic prior along each sightline, by inverse CDF (linear in each grid cell)."""
    l, b = np.asarray(l, np.float64), np.asarray(b, np.float64)
    u = rng.uniform(size=len(l))
    out = np.empty(len(l))
    for s in range(0, len(l), chunk):
        mu, cdf = mu_grid_cdf(l[s:s + chunk], b[s:s + chunk], params, mu_range, n_grid)
        uu = u[s:s + chunk]
        k = np.clip((cdf < uu[:, None]).sum(axis=1) - 1, 0, n_grid - 2)
        rows = np.arange(len(uu))
        c0, c1 = cdf[rows, k], cdf[rows, k + 1]
        frac = np.where(c1 > c0, (uu - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.5)
        out[s:s + chunk] = mu[k] + frac * (mu[1] - mu[0])
    return out


# ---------------------------------------------------------------------- dust
@dataclass(frozen=True)
class DustModel:
    """A smooth exponential dust disk with log-normal per-sightline clouds.

    E(d; l, b) = c(l, b) · κ ∫₀^d exp(−|Z(s)|/h − (R(s) − R⊙)/L) ds, capped at ``E_max``, with
    (R, Z) of Eq. (G1) of :mod:`photoinfer.priors.galactic` and c(l, b) ~ lognormal (mean 1,
    ln-scatter ``cloud_sigma``) drawn once per HEALPix pixel at ``cloud_nside`` (stars in the same
    pixel share the same dust column).  Defaults: κ = 0.3 mag/kpc in the midplane at the Sun,
    h = 100 pc, L = 3 kpc, so E(∞) ≈ 0.03 at the Galactic poles.

    Attributes
    ----------
    kappa : float  [E per pc]
    h, L : float  [pc]
    cloud_sigma : float
    cloud_nside : int
    E_max : float
    """

    kappa: float = 3e-4
    h: float = 100.0
    L: float = 3000.0
    cloud_sigma: float = 0.5
    cloud_nside: int = 32
    E_max: float = 7.0


def dust_reddening(rng: np.random.Generator, mu, l, b, dust: DustModel = DustModel(), R_sun: float = 8000.0,
                   Z_sun: float = 25.0, n_quad: int = 200) -> np.ndarray:
    """E (N,) ≥ 0 of :class:`DustModel` at distance modulus ``mu`` towards (l, b) [deg].

    The integral uses ``n_quad`` log-spaced points in s/d from 1e-5 to 1 (trapezoid rule).
    """
    import healpy as hp
    mu, l, b = (np.asarray(a, np.float64) for a in (mu, l, b))
    d = 10.0 ** (mu / 5.0 + 1.0)
    u = np.concatenate([[0.0], np.logspace(-5, 0, n_quad - 1)])
    E = np.empty(len(mu))
    lr, br = np.deg2rad(l), np.deg2rad(b)
    for s0 in range(0, len(mu), 8192):
        sl = slice(s0, s0 + 8192)
        s = d[sl, None] * u[None, :]
        x = R_sun - s * np.cos(br[sl, None]) * np.cos(lr[sl, None])
        y = s * np.cos(br[sl, None]) * np.sin(lr[sl, None])
        R = np.hypot(x, y)
        Z = Z_sun + s * np.sin(br[sl, None])
        rho = np.exp(-np.abs(Z) / dust.h - (R - R_sun) / dust.L)
        E[sl] = dust.kappa * np.sum(0.5 * (rho[:, 1:] + rho[:, :-1]) * np.diff(s, axis=1), axis=1)
    npix = hp.nside2npix(dust.cloud_nside)
    clouds = np.exp(dust.cloud_sigma * rng.normal(size=npix) - 0.5 * dust.cloud_sigma ** 2)
    E *= clouds[hp.ang2pix(dust.cloud_nside, l, b, nest=True, lonlat=True)]
    return np.clip(E, 0.0, dust.E_max)


def screen_reddening(mu, mu_screen: float, E_screen: float, foreground: float = 0.02) -> np.ndarray:
    """E (N,) of a dust screen: E_screen·[μ > μ_screen] + a foreground rising linearly in distance
    to ``foreground`` at the screen and flat beyond."""
    mu = np.asarray(mu, np.float64)
    if E_screen < 0 or foreground < 0:
        raise ValueError(f"dust screen: E_screen ({E_screen}) and foreground ({foreground}) must be >= 0")
    ratio = np.minimum(10.0 ** ((mu - mu_screen) / 5.0), 1.0)
    return foreground * ratio + E_screen * (mu > mu_screen)


# ---------------------------------------------------------------------- observation
def observe_photometry(rng: np.random.Generator, true_mag: np.ndarray, em: ErrorModel):
    """Noisy magnitudes and errors (N, B), NaN where unobserved.

    A band is observed when the real-star mask resampled in the star's reference-magnitude bin says
    so, its noise-free magnitude is brighter than ``em.mag_limit`` and σ(m) ≤ ``em.max_mag_err`` (0.2 mag), σ(m)
    capped at ``em.mag_err_cap`` (none by default).  Noise is
    N(0, σ²) with σ = the reported error (Eq. E1 at the noise-free magnitude).
    """
    n, B = true_mag.shape
    sigma = np.minimum(photometric_error(em, true_mag), em.mag_err_cap)
    bins = np.digitize(np.nan_to_num(true_mag[:, 0], nan=99.0), em.mask_edges)
    code = np.zeros(n, np.int64)
    for k in range(len(em.mask_codes)):
        sel = np.flatnonzero(bins == k)
        counts = np.asarray(em.mask_counts[k], np.float64)
        if len(sel):
            code[sel] = np.asarray(em.mask_codes[k])[rng.choice(len(counts), size=len(sel), p=counts / counts.sum())]
    covered = ((code[:, None] >> np.arange(B)[None, :]) & 1).astype(bool)
    observed = covered & (true_mag <= em.mag_limit) & (sigma <= em.max_mag_err) & np.isfinite(true_mag)
    noise = rng.normal(size=(n, B))
    mag = np.where(observed, true_mag + sigma * noise, np.nan)
    return mag, np.where(observed, sigma, np.nan)


def _reddening_prior_error(rng, em: ErrorModel, n):
    if em.reference is not None:
        return em.reference["sigma_E0"][rng.integers(0, len(em.reference["sigma_E0"]), n)]
    k = rng.choice(len(em.ebv_weight), size=n, p=em.ebv_weight)
    return np.maximum(np.exp(em.ebv_lnmean[k] + em.ebv_lnsd[k] * rng.normal(size=n)), 0.02)


def reddening_prior(rng: np.random.Generator, E_dust, sigma, kind: str = "berkson"):
    """True reddening E and the reddening prior (E₀, σ_E₀) of each star, all (N,).

    Parameters
    ----------
    E_dust : (N,) the dust model's reddening (≥ 0)
    sigma : (N,) > 0, the prior's error scale (from the error model)
    kind : {"berkson", "classical"}
        ``"berkson"``: E_dust is the map value; E ~ N(E_dust, σ²) truncated to E ≥ 0 (inverse CDF, one
        draw per star) and (E₀, σ_E₀) are the mean and standard deviation of that truncated normal,
        E₀ = E_dust + σ φ(α)/(1 − Φ(α)), σ_E₀² = σ²[1 + αλ − λ²] with α = −E_dust/σ and
        λ = φ(α)/(1 − Φ(α)).  So E₀ is exactly E[E | map] and σ_E₀² exactly Var[E | map]; only the
        shape differs from N(E₀, σ_E₀²), and only where E_dust ≲ 2σ.  Where E_dust ≫ σ, E₀ = E_dust
        and σ_E₀ = σ.
        ``"classical"``: E = E_dust, E₀ = E + σ·N(0, 1) (may be < 0), σ_E₀ = σ: the truth is
        fixed and the map is noisy, so N(E₀, σ_E₀²) is *not* the distribution of E given E₀.

    Returns
    -------
    E, E0, sigma_E0 : (N,)
    """
    from scipy.special import log_ndtr, ndtr, ndtri
    E_dust = np.asarray(E_dust, np.float64)
    sigma = np.asarray(sigma, np.float64)
    z = rng.normal(size=E_dust.shape)
    if kind == "classical":
        return E_dust, E_dust + sigma * z, sigma
    if kind != "berkson":
        raise ValueError(f"reddening_prior_error must be one of {REDDENING_PRIOR_ERRORS}, not {kind!r}")
    alpha = -E_dust / sigma
    # E = E_dust + σ Φ⁻¹(Φ(α) + u (1 − Φ(α))), u = Φ(z) ~ U(0, 1); the upper tail via Φ(−·) for accuracy
    p_lo = ndtr(alpha)
    u = ndtr(z)
    E = E_dust + sigma * ndtri(np.clip(p_lo + u * (1.0 - p_lo), 1e-300, 1.0 - 1e-16))
    E = np.where(alpha < -8.0, E_dust + sigma * z, np.maximum(E, 0.0))  # truncation negligible beyond 8σ
    lam = np.exp(-0.5 * alpha ** 2 - 0.5 * np.log(2 * np.pi) - log_ndtr(-alpha))  # φ(α)/(1 − Φ(α))
    E0 = E_dust + sigma * lam
    sigma_E0 = sigma * np.sqrt(np.maximum(1.0 + alpha * lam - lam ** 2, 0.0))
    return E, E0, sigma_E0


def _theta_errors(rng, em: ErrorModel, n):
    """(C_θ (n, 3, 3), survey names (n,))."""
    if em.reference is not None:
        i = rng.integers(0, len(em.reference["theta_cov"]), n)
        return em.reference["theta_cov"][i], em.reference["atm_source"][i]
    k = rng.choice(len(em.theta_weight), size=n, p=em.theta_weight)
    z = rng.normal(size=(n, 3))
    chol = np.linalg.cholesky(em.theta_lncov)
    sig = np.exp(em.theta_lnmean[k] + np.einsum("nij,nj->ni", chol[k], z))
    sig = np.clip(sig, em.theta_err_min, em.theta_err_max)
    cov = np.zeros((n, 3, 3))
    cov[:, np.arange(3), np.arange(3)] = sig ** 2
    return cov, np.asarray(em.theta_surveys, dtype=object)[k]


# ---------------------------------------------------------------------- the catalog
def simulate_catalog(model, n: int, key_or_seed=0, *, photometry_only: bool = False,
                     error_model: ErrorModel | None = None, prior="bayestar", sky=None, theta_source=None,
                     dust: DustModel | None = None, dust_screen=None, mu_range=MU_RANGE,
                     reddening_prior_error: str | None = None, name: str | None = None) -> Catalog:
    """Draw a mock catalog of ``n`` stars with known truth (see the module docstring).

    Parameters
    ----------
    model : StellarModel
        Gives M(θ), R(θ), the bands, and (by default) the θ distribution (its validity grid).
    n : int
        Number of stars.
    key_or_seed : int, numpy Generator or JAX PRNG key
        Randomness; the catalog is a deterministic function of it.
    photometry_only : bool
        No θ measurement: θ and C_θ are NaN (flag ``NO_THETA``).
    error_model : ErrorModel, optional
        Default :data:`photoinfer.mock_errors.DEFAULT_ERROR_MODEL` (fitted on the real 8k sample);
        ``DEFAULT_ERROR_MODEL.with_reference(real_catalog)`` resamples σ_E₀ and C_θ from real stars.
    prior : str or GalacticParams
        Galactic model for μ ("bayestar" or "brutus", see :func:`photoinfer.priors.galactic_params`).
    sky : None, HealpixRegion or Cone
        Sky region (default: the whole sphere).
    theta_source : array (M, 3), optional
        θ to resample (with jitter :data:`THETA_JITTER`) instead of the model's training density.
    dust : DustModel, optional
        Smooth dust model parameters (default :class:`DustModel`()).
    dust_screen : (mu_screen, E_screen) or (mu_screen, E_screen, foreground), optional
        Replace the dust model by a screen (see :func:`screen_reddening`).
    mu_range : (float, float)
        Range of μ [mag].
    reddening_prior_error : {"berkson", "classical"}, optional
        How the reddening prior relates to the true E (:func:`reddening_prior`).  Default
        ``"berkson"`` with the dust model (the prior is the distribution of E given the map, as
        training and inference assume) and ``"classical"`` with a dust screen (the screen is the
        true sightline).

    Returns
    -------
    Catalog
        ``n`` stars; magnitudes in the model's system (unWISE AB) with the 0.02 floor included
        (like the released sample: do not run the floor / Vega→AB preparation on it);
        ``r_source`` = "sim"; truth columns in ``extra``.
    """
    from .priors.galactic import galactic_params
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = _rng(key_or_seed)
    params = galactic_params(prior)
    em = (error_model or DEFAULT_ERROR_MODEL).for_bands(model.bands.keys)
    offset = int(rng.integers(0, 2 ** 30)) << 32

    if theta_source is None:
        theta = sample_theta_validity(rng, model, n)
    else:
        theta = sample_theta_from_array(rng, theta_source, n, model=model)
    l, b = sample_sky(rng, n, sky)
    mu = sample_mu(rng, l, b, params, mu_range)
    if reddening_prior_error is None:
        reddening_prior_error = "classical" if dust_screen is not None else "berkson"
    if reddening_prior_error not in REDDENING_PRIOR_ERRORS:
        raise ValueError(f"reddening_prior_error must be one of {REDDENING_PRIOR_ERRORS}, not {reddening_prior_error!r}")
    if dust_screen is not None:
        E_dust = screen_reddening(mu, *dust_screen)
    else:
        E_dust = dust_reddening(rng, mu, l, b, dust or DustModel(), params.R_sun, params.Z_sun)
    berkson = reddening_prior_error == "berkson"
    if berkson:  # the truth scatters around the map: drawn before the photometry
        E, E0, sigma_E0 = reddening_prior(rng, E_dust, _reddening_prior_error(rng, em, n), "berkson")
    else:
        E = E_dust

    true_mag = np.concatenate([np.asarray(model.predict_magnitudes(theta[s:s + 65536], mu[s:s + 65536],
                                                                   E[s:s + 65536]), np.float64)
                               for s in range(0, n, 65536)])
    mag, mag_err = observe_photometry(rng, true_mag, em)

    true_plx = 10.0 ** (2.0 - mu / 5.0)
    plx_err = parallax_error(em, true_mag[:, 0])
    has_plx = np.isfinite(mag[:, 0])  # astrometry needs a detection in the reference (Gaia G) band
    parallax = np.where(has_plx, true_plx + plx_err * rng.normal(size=n), np.nan)
    plx_err = np.where(has_plx, plx_err, np.nan)
    if not berkson:  # (drawn here: the classical mock's random stream is unchanged from before the Berkson option)
        _, E0, sigma_E0 = reddening_prior(rng, E, _reddening_prior_error(rng, em, n), "classical")

    cov, survey = _theta_errors(rng, em, n)
    z = rng.normal(size=(n, 3))
    theta_obs = theta + np.einsum("nij,nj->ni", np.linalg.cholesky(cov), z)
    if photometry_only:
        theta_obs = cov = None
        survey = None

    extra = {"true_teff": theta[:, 0], "true_logg": theta[:, 1], "true_feh": theta[:, 2], "true_mu": mu,
             "true_E": E, "true_parallax": true_plx}
    for j, key in enumerate(model.bands.keys):
        extra[f"true_mag_{key}"] = true_mag[:, j]
    return Catalog.from_arrays(mag, mag_err, bands=model.bands, source_id=offset + np.arange(n, dtype=np.int64),
                               parallax=parallax, parallax_err=plx_err, l=l, b=b, theta=theta_obs, theta_cov=cov,
                               E0=E0, sigma_E0=sigma_E0, r_source=np.full(n, "sim"), atm_source=survey, extra=extra,
                               name=name or "mock")


def write_catalog(cat: Catalog, path):
    """Write a (mock) catalog as Parquet / FITS / CSV by extension (:func:`photoinfer.io.catalogs.write_catalog`)."""
    from .io.catalogs import write_catalog as _write
    return _write(cat, path)
