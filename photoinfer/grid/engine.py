"""Brute-force grid posteriors: the θ grid, the closed-form (μ, E) solve, screening, NUTS seeds.

For fixed θ the photometry is linear in (μ, E) (METHOD §2)::

    m = M(θ) + μ·1 + E·R(θ)                                                            (G1)

so with weights w_b = 1/(σ_b² + σ_model²) over the observed bands and d = m̂ − M(θ), the
weighted least-squares (μ̂, Ê) solves the 2×2 normal equations::

    [Σw     Σw R ] [μ]   [Σw d  ]
    [Σw R   Σw R²] [E] = [Σw R d],     C = (normal matrix)⁻¹                             (G2)

and χ²(μ, E) = χ²_min + (x − x̂)ᵀ C⁻¹ (x − x̂) exactly (x = (μ, E)): the photometric likelihood
is a 2-D Gaussian in (μ, E) at every θ.  With E ≥ 0, when Ê < 0 the constrained optimum is
E = 0, μ = Σw d / Σw, χ² = Σw d² − (Σw d)²/Σw.                                          (G3)

The five sums of (G2) and Σw d² are (stars × bands) @ (bands × grid) matrix products: the fast
path (:func:`solve_mu_E`).  A per-point direct evaluation on residuals (:func:`solve_mu_E_direct`)
recomputes χ² without float32 cancellation on the points drawn for the exact stage.

:func:`approximate_log_weight` turns these into approximate (Laplace) posterior masses per grid
point (photometry, a Gauss–Newton (linearized) parallax term, the Galactic μ–[M/H] prior at the
updated μ, the θ prior and the E ≥ 0 truncation); :mod:`photoinfer.grid.posterior` draws grid points
from them and weighs every draw exactly (importance sampling).
:func:`initial_points` finds separated modes (e.g. dwarf and giant) of a grid posterior and
returns starting points and local covariances for NUTS chains.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr, logsumexp

__all__ = ["PRESETS", "ThetaGrid", "make_theta_grid", "StarArrays", "star_arrays", "MuESolution", "solve_mu_E",
           "solve_mu_E_direct", "parallax_of_mu", "GridResult", "GridArrays", "grid_arrays", "solve_mu_E_grid",
           "approximate_log_weight", "InitialPoints", "initial_points", "PositionTable", "position_table"]

#: Grid spacings (ΔTeff [K], Δlogg [dex], Δ[M/H] [dex]) by name.  With the released model and
#: the prior's support (wall 5): "fine" 65,796 points, "coarse" 8,216 (photoinfer's default model: 58,476 / 7,310).
PRESETS = {"fine": (50.0, 0.05, 0.1), "coarse": (100.0, 0.1, 0.2)}

_LN10 = float(np.log(10.0))
_LN_2PI = float(np.log(2.0 * np.pi))


# ----------------------------------------------------------------------------------------- the θ grid
@dataclass(frozen=True, eq=False)
class ThetaGrid:
    """θ points over a model's region of validity, with M(θ), R(θ) and ln p(θ) evaluated once.

    Attributes
    ----------
    theta : ndarray, shape (G, 3), float32
        (Teff [K], logg [dex], [M/H] [dex]) of each point, on a regular lattice.
    M : ndarray, shape (G, B), float32
        Absolute magnitudes M(θ) [mag] (the model's magnitudes at μ = 0, E = 0).
    R : ndarray, shape (G, B), float32
        Extinction vector R(θ) [mag per unit E].
    ln_prior : ndarray, shape (G,), float32
        ln p(Teff, logg | [M/H]) (the stellar prior; 0 when none).  The [M/H] prior is joint with μ
        and enters with the distance prior.
    spacing : ndarray, shape (3,)
        Lattice step (ΔTeff, Δlogg, Δ[M/H]); each point stands for a cell of this size.
    feh_axis : ndarray, shape (nF,)
        The distinct [M/H] values of the lattice (ascending).
    density : ndarray, shape (G,)
        The model's validity score (smallest density over its maps) at each point.
    bands : tuple of str
    network : dict or None
        The model's network parameters with ``theta_med`` / ``theta_std``, to evaluate M(θ), R(θ)
        anywhere in a cell (the continuous-θ posterior); None: only the points can be used.
    stellar : callable or None
        The ln p(Teff, logg | [M/H]) that gave ``ln_prior`` (evaluated anywhere in a cell).
    """

    theta: np.ndarray
    M: np.ndarray
    R: np.ndarray
    ln_prior: np.ndarray
    spacing: np.ndarray
    feh_axis: np.ndarray
    density: np.ndarray
    bands: tuple
    network: dict | None = None
    stellar: object = None

    def __len__(self) -> int:
        return len(self.theta)

    @property
    def n_bands(self) -> int:
        return self.M.shape[1]


def make_theta_grid(model, spacing="coarse", min_density: float | None = None, stellar_prior="model",
                    bounds=None, batch: int = 65536, wall: float = 5.0) -> ThetaGrid:
    """Lay a regular θ lattice over the support of the stellar prior and evaluate the model once.

    Parameters
    ----------
    model : StellarModel
        Must have a ``validity`` grid (the region of validity, METHOD §7).
    spacing : {"fine", "coarse"} or (ΔTeff [K], Δlogg [dex], Δ[M/H] [dex])
        Lattice step (:data:`PRESETS`).
    min_density : float, optional
        Also require ``model.validity.min_density(θ) >= min_density`` (the smallest density over all the
        band maps; a stricter region than the prior's).  Default: the prior's support alone, so that
        the grid and NUTS sample the same posterior; without a stellar prior, 1e-2.
    stellar_prior : "model", SmoothStellarPrior, StellarPrior or None
        ln p(Teff, logg | [M/H]) per point: "model" builds
        :meth:`photoinfer.priors.SmoothStellarPrior.from_model` (the prior
        :func:`photoinfer.priors.make_prior` uses); None: flat.
    bounds : ((Tmin, Tmax), (gmin, gmax), (Fmin, Fmax)), optional
        Lattice extent; default: the validity grid's axes.
    batch : int
        Points per model evaluation (bounds memory).
    wall : float
        With a smooth prior, keep points where its validity wall costs less than ``wall`` nats
        (``SmoothStellarPrior.log_wall``; 5 keeps every one of 2,000 prior draws' cells); with the
        gridded ``StellarPrior``, its region of validity.

    Returns
    -------
    ThetaGrid
    """
    if model.validity is None:
        raise ValueError("the model has no validity grid: the θ grid needs its region of validity")
    v = model.validity
    step = np.asarray(PRESETS[spacing] if isinstance(spacing, str) else spacing, np.float64)
    if isinstance(spacing, str) and spacing not in PRESETS:
        raise ValueError(f"unknown grid preset {spacing!r}; use one of {sorted(PRESETS)} or a 3-tuple")
    if step.shape != (3,) or not np.all(step > 0):
        raise ValueError(f"grid spacing must be 3 positive numbers (dTeff, dlogg, dfeh), got {spacing!r}")
    if bounds is None:
        bounds = [(float(a[0]), float(a[-1])) for a in (v.teff, v.logg, v.feh)]
    axes = [np.arange(lo, hi + 1e-6 * s, s) for (lo, hi), s in zip(bounds, step)]
    lattice = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float32)
    if isinstance(stellar_prior, str) and stellar_prior == "model":
        from ..priors import SmoothStellarPrior
        stellar_prior = SmoothStellarPrior.from_model(model)
    def chunks(fn, pts=lattice):
        """fn over ``pts`` in batches of ``batch`` points (bounds memory)."""
        return np.concatenate([np.asarray(fn(pts[i:i + batch])) for i in range(0, len(pts), batch)])

    if stellar_prior is None:
        keep = chunks(v.min_density) >= (1e-2 if min_density is None else min_density)
    else:
        keep = (chunks(stellar_prior.log_wall) >= -wall if hasattr(stellar_prior, "log_wall")
                else chunks(stellar_prior.in_valid_region))
        if min_density is not None:
            keep &= chunks(v.min_density) >= min_density
    if not keep.any():
        raise ValueError(f"no grid point in the region (min_density={min_density}, wall={wall})")
    theta = lattice[keep]
    dens, M, R = (chunks(fn, theta) for fn in (v.min_density, model.predict_magnitudes, model.extinction))
    lnp = (np.zeros(len(theta), np.float32) if stellar_prior is None
           else np.asarray(stellar_prior(theta), np.float32))
    return ThetaGrid(theta=theta, M=M.astype(np.float32), R=R.astype(np.float32), ln_prior=lnp, spacing=step,
                     feh_axis=np.unique(theta[:, 2]), density=dens.astype(np.float32),
                     bands=tuple(model.bands.names),
                     network={"params": model.params, "theta_med": np.asarray(model.theta_med, np.float32),
                              "theta_std": np.asarray(model.theta_std, np.float32)},
                     stellar=stellar_prior)


# ----------------------------------------------------------------------------------------- stars
class StarArrays(NamedTuple):
    """Per-star inputs of the grid method (float32, NaN-free).

    mag : (N, B) observed magnitudes [mag], 0 where unobserved
    weight : (N, B) 1/(σ_m² + σ_model²) [mag⁻²], 0 where unobserved
    parallax, parallax_err : (N,) [mas]; err = inf where there is no parallax
    l, b : (N,) [deg] (0 when unknown; used only by the position-dependent prior)
    E0, sigma_E0 : (N,) dust prior (used only by the Gaussian / map E priors; 0, 1 when unknown)
    """

    mag: jnp.ndarray
    weight: jnp.ndarray
    parallax: jnp.ndarray
    parallax_err: jnp.ndarray
    l: jnp.ndarray
    b: jnp.ndarray
    E0: jnp.ndarray
    sigma_E0: jnp.ndarray


def star_arrays(mag, mag_err, parallax=None, parallax_err=None, l=None, b=None, E0=None, sigma_E0=None,
                sigma_model: float = 0.02) -> StarArrays:
    """Pack per-star numpy inputs (NaN = missing) into :class:`StarArrays`.

    Σ_b = σ_b² + σ_model² over observed bands (METHOD §8); a missing or non-finite parallax or error
    (or error <= 0) means no parallax term.
    """
    mag = np.asarray(mag, np.float64)
    err = np.asarray(mag_err, np.float64)
    n = len(mag)
    obs = np.isfinite(mag) & np.isfinite(err) & (err > 0)
    w = np.where(obs, 1.0 / (np.where(obs, err, 1.0) ** 2 + sigma_model ** 2), 0.0)

    def col(a, fill):
        return np.full(n, fill) if a is None else np.asarray(a, np.float64)
    plx, plx_err = col(parallax, np.nan), col(parallax_err, np.nan)
    has = np.isfinite(plx) & np.isfinite(plx_err) & (plx_err > 0)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    l_, b_, e0, se0 = col(l, 0.0), col(b, 0.0), col(E0, 0.0), col(sigma_E0, 1.0)
    return StarArrays(f32(np.where(obs, mag, 0.0)), f32(w), f32(np.where(has, plx, 0.0)),
                      f32(np.where(has, plx_err, np.inf)), f32(np.nan_to_num(l_)), f32(np.nan_to_num(b_)),
                      f32(np.nan_to_num(e0)), f32(np.where(np.isfinite(se0) & (se0 > 0), se0, 1.0)))


# ----------------------------------------------------------------------------------------- (μ, E) solve
class MuESolution(NamedTuple):
    """Weighted least-squares (μ, E) per (star, grid point), Eqs. (G2)–(G3); every field (N, G).

    mu, E : the optimum with E ≥ 0 (constrained when the free Ê < 0)
    chi2 : χ² at (mu, E)
    mu_free, E_free, chi2_free : the unconstrained optimum (the centre of the Gaussian likelihood)
    var_mu, var_E, cov_muE : the 2×2 covariance C of the free solution
    """

    mu: jnp.ndarray
    E: jnp.ndarray
    chi2: jnp.ndarray
    mu_free: jnp.ndarray
    E_free: jnp.ndarray
    chi2_free: jnp.ndarray
    var_mu: jnp.ndarray
    var_E: jnp.ndarray
    cov_muE: jnp.ndarray

    @property
    def cov(self):
        """(N, G, 2, 2) covariance of (μ, E)."""
        return jnp.stack([jnp.stack([self.var_mu, self.cov_muE], -1), jnp.stack([self.cov_muE, self.var_E], -1)], -2)


def _solve_from_sums(s0, sR, sRR, sd, sRd, sdd):
    """(G2)–(G3) from the weighted sums (all broadcast together)."""
    det = s0 * sRR - sR * sR
    det = jnp.maximum(det, 1e-12 * s0 * sRR + 1e-30)
    mu_f = (sRR * sd - sR * sRd) / det
    E_f = (s0 * sRd - sR * sd) / det
    chi2_f = jnp.maximum(sdd - mu_f * sd - E_f * sRd, 0.0)
    mu_c = sd / s0
    chi2_c = jnp.maximum(sdd - sd * mu_c, 0.0)
    neg = E_f < 0
    return MuESolution(jnp.where(neg, mu_c, mu_f), jnp.where(neg, 0.0, E_f), jnp.where(neg, chi2_c, chi2_f),
                       mu_f, E_f, chi2_f, sRR / det, s0 / det, -sR / det)


@jax.jit
def solve_mu_E(M, R, mag, weight):
    """(μ, E) by weighted least squares for every star × grid point, as matrix products (fast path).

    Parameters
    ----------
    M, R : (G, B) absolute magnitudes and extinction vector of the grid [mag]
    mag : (N, B) observed magnitudes [mag] (any value where unobserved)
    weight : (N, B) 1/(σ_m² + σ_model²) [mag⁻²], 0 where unobserved (see :func:`star_arrays`)

    Returns
    -------
    MuESolution, fields (N, G)

    Notes
    -----
    μ has unit coefficient in every band, so subtracting a per-star constant from m̂ and a per-point
    constant from M changes only μ̂ by their difference, not χ² or Ê.  Both are centred first
    (weighted mean of m̂; band mean of M), which keeps Σw d² small enough for float32.
    """
    M = jnp.asarray(M, jnp.float32)
    R = jnp.asarray(R, jnp.float32)
    w = jnp.asarray(weight, jnp.float32)
    s0 = jnp.sum(w, axis=1, keepdims=True)                                   # (N, 1)
    m0 = jnp.sum(w * mag, axis=1, keepdims=True) / s0                         # (N, 1)
    m = jnp.where(w > 0, mag - m0, 0.0)
    c = jnp.mean(M, axis=1, keepdims=True)                                    # (G, 1)
    Mc = M - c
    hp = jax.lax.Precision.HIGHEST
    wm = w * m
    sR = jnp.matmul(w, R.T, precision=hp)
    sRR = jnp.matmul(w, (R * R).T, precision=hp)
    sM = jnp.matmul(w, Mc.T, precision=hp)
    sMM = jnp.matmul(w, (Mc * Mc).T, precision=hp)
    sRM = jnp.matmul(w, (R * Mc).T, precision=hp)
    smM = jnp.matmul(wm, Mc.T, precision=hp)
    smR = jnp.matmul(wm, R.T, precision=hp)
    smm = jnp.sum(wm * m, axis=1, keepdims=True)
    sm = jnp.sum(wm, axis=1, keepdims=True)                                   # ≈ 0 after centring
    sd = sm - sM
    sRd = smR - sRM
    sdd = smm - 2.0 * smM + sMM
    sol = _solve_from_sums(s0, sR, sRR, sd, sRd, sdd)
    shift = m0 - c.T                                                          # (N, G)
    return sol._replace(mu=sol.mu + shift, mu_free=sol.mu_free + shift)


@jax.jit
def solve_mu_E_direct(M, R, mag, weight):
    """Eqs. (G2)–(G3) evaluated on explicit residuals, for per-star point sets.

    Parameters
    ----------
    M, R : (N, K, B) the grid rows kept for each star
    mag, weight : (N, B)

    Returns
    -------
    MuESolution, fields (N, K); χ² = Σ w (m̂ − M − μ − E R)² computed from residuals (no cancellation)
    """
    w = weight[:, None, :]
    d = mag[:, None, :] - M
    s0 = jnp.sum(w, -1)
    # centre d per point so that the sums stay small
    dc0 = jnp.sum(w * d, -1) / s0
    dc = d - dc0[..., None]
    sR, sRR = jnp.sum(w * R, -1), jnp.sum(w * R * R, -1)
    sd, sRd = jnp.sum(w * dc, -1), jnp.sum(w * R * dc, -1)
    sol = _solve_from_sums(s0, sR, sRR, sd, sRd, jnp.sum(w * dc * dc, -1))

    def chi2_at(mu, E):
        r = dc - mu[..., None] - E[..., None] * R
        return jnp.sum(w * r * r, -1)
    return sol._replace(mu=sol.mu + dc0, mu_free=sol.mu_free + dc0, chi2=chi2_at(sol.mu, sol.E),
                        chi2_free=chi2_at(sol.mu_free, sol.E_free))


# ----------------------------------------------------------------------------------------- priors in μ
def parallax_of_mu(mu):
    """ϖ(μ) = 10^(2 − μ/5) [mas] (METHOD §8)."""
    return jnp.exp(_LN10 * (2.0 - mu / 5.0))


class PositionTable(NamedTuple):
    """The position-free prior ln p(μ, [M/H]) on a grid's [M/H] values (a pytree).

    values : (nF, nμ) float32, row f = :attr:`photoinfer.priors.GalacticPrior.sky_table` at the grid's f-th
        [M/H] value (interpolated linearly in [M/H] when it is not a table node), on the table's μ axis
    mu0, dmu : the μ axis (first value, step) [mag]
    """

    values: jnp.ndarray
    mu0: float
    dmu: float


def position_table(prior, feh_axis) -> PositionTable:
    """Rows of ``prior.sky_table`` (the one tabulation of the sky-averaged prior) at ``feh_axis``.

    Bilinear interpolation of the sky table = linear in [M/H] (done here, once) then linear in μ
    (:func:`lookup_position_table`), so the grid evaluates exactly the prior NUTS evaluates.
    """
    t = prior.sky_table
    v = np.asarray(t.values, np.float64)                                   # (nμ, nF_table)
    c = np.clip((np.asarray(feh_axis, np.float64) - t.feh0) / t.dfeh, 0.0, v.shape[1] - 1.0)
    i0 = np.minimum(np.floor(c + 1e-6).astype(int), v.shape[1] - 2)
    f = np.clip(c - i0, 0.0, 1.0)
    rows = (1.0 - f) * v[:, i0] + f * v[:, i0 + 1]                         # (nμ, nF)
    return PositionTable(jnp.asarray(rows.T, jnp.float32), float(t.mu0), float(t.dmu))


def lookup_position_table(table: PositionTable, row, mu):
    """ln p(μ, [M/H]_row) by linear interpolation in μ (clamped at the table's ends); shapes broadcast."""
    n = table.values.shape[1]
    c = jnp.clip((mu - table.mu0) / table.dmu, 0.0, n - 1.0)
    i = jnp.minimum(jnp.floor(c), n - 2.0)
    f = c - i
    flat = table.values.reshape(-1)
    k = row * n + i.astype(jnp.int32)
    v0 = flat[k]
    return v0 + f * (flat[k + 1] - v0)


def lookup_position_table_continuous(table: PositionTable, feh0, dfeh, feh, mu):
    """ln p(μ, [M/H]) bilinear in ([M/H], μ): the table's rows are at [M/H] = feh0 + k·dfeh (clamped)."""
    nf = table.values.shape[0]
    if nf == 1:
        return lookup_position_table(table, 0, mu)
    c = jnp.clip((feh - feh0) / dfeh, 0.0, nf - 1.0)
    r = jnp.minimum(jnp.floor(c), nf - 2.0)
    f = c - r
    r = r.astype(jnp.int32)
    return (1.0 - f) * lookup_position_table(table, r, mu) + f * lookup_position_table(table, r + 1, mu)


def log_prior_position(prior, table, row, feh, mu, l, b):
    """ln p(μ, [M/H] | l, b): from the table when given (position-free prior), else evaluated at (l, b)."""
    if table is not None:
        return lookup_position_table(table, row, mu)
    return prior.log_prior_position(feh, mu, l, b)



def log_prior_E_conditional(prior, E0, sigma_E0, c, s2):
    """The E ≥ 0 prior met by the conditional Gaussian N(c, s2) of E given (θ, μ).

    Returns (mean, var, lo, hi, ln_norm): the E posterior given (θ, μ) is N(mean, var) truncated to
    [lo, hi], and ∫ N(E; c, s2) p(E) dE = exp(ln_norm) · P(lo ≤ N(mean, var) ≤ hi).
    flat on [0, E_max]: unchanged, ln_norm = −ln E_max.  Gaussian N(E0, σ0) on E ≥ 0 (dust "gaussian"
    or "map"): product of Gaussians, ln_norm = ln N(c; E0, s2 + σ0²) − ln Φ(E0/σ0).
    """
    if prior is None or prior.dust == "flat":
        e_max = 7.0 if prior is None else float(prior.E_max)
        return c, s2, 0.0, e_max, jnp.full_like(c, -np.log(e_max))
    if prior.dust == "map":
        from ..priors import map_informed_E_prior
        E0, sig = map_informed_E_prior(E0)
        sigma_E0 = sig
    v0 = sigma_E0 ** 2
    var = s2 * v0 / (s2 + v0)
    mean = var * (c / s2 + E0 / v0)
    tot = s2 + v0
    ln_norm = -0.5 * (c - E0) ** 2 / tot - 0.5 * jnp.log(2 * np.pi * tot) - log_ndtr(E0 / jnp.sqrt(v0))
    return mean, var, 0.0, jnp.inf, ln_norm


def log_truncation(mean, var, lo, hi):
    """ln P(lo ≤ N(mean, var) ≤ hi), stable in both tails.

    ln(Φ(b) − Φ(a)) = ln Φ(b) + ln(1 − Φ(a)/Φ(b)); when the mean is below ``lo`` (a > 0) the same
    formula on the mirrored interval (−b, −a), so only one pair of ``log_ndtr`` is evaluated.
    """
    sd = jnp.sqrt(var)
    a = (lo - mean) / sd
    b_ = (hi - mean) / sd
    flip = a > 0
    top, bottom = jnp.where(flip, -a, b_), jnp.where(flip, -b_, a)
    lt = log_ndtr(top)
    return lt + jnp.log1p(-jnp.exp(jnp.minimum(log_ndtr(bottom) - lt, -1e-7)))


def gauss_newton_parallax(mu, var_mu, cov_muE, var_E, E, plx, plx_err, iterations: int = 2):
    """Condition the (μ, E) Gaussian on a parallax linearized around the current μ (Gauss–Newton).

    ϖ(μ) ≈ ϖ(μ₀) + j (μ − μ₀), j = −(ln 10/5) ϖ(μ₀), relinearized ``iterations`` times at the new mean
    (a Kalman update of the photometric Gaussian by one scalar observation).

    Returns
    -------
    mu, E, var_mu, cov_muE, var_E : the updated Gaussian
    ln_like : ln N(ϖ̂ | ϖ(μ₀) + j(μ_phot − μ₀), σ_ϖ² + j² var_mu), the linearized marginal likelihood
    """
    mu_p, E_p, vmu, cme, vE = mu, E, var_mu, cov_muE, var_E
    ln_like = jnp.zeros_like(mu)
    for _ in range(iterations):
        w0 = parallax_of_mu(mu_p)
        j = -(_LN10 / 5.0) * w0
        pred = w0 + j * (mu - mu_p)                       # linearized prediction at the photometric mean
        S = plx_err ** 2 + j * j * var_mu
        gain_mu, gain_E = var_mu * j / S, cov_muE * j / S
        resid = plx - pred
        mu_p, E_p = mu + gain_mu * resid, E + gain_E * resid
        vmu = var_mu - gain_mu * j * var_mu
        cme = cov_muE - gain_mu * j * cov_muE
        vE = var_E - gain_E * j * cov_muE
        ln_like = -0.5 * resid ** 2 / S - 0.5 * jnp.log(2 * np.pi * S)
    none = ~jnp.isfinite(plx_err)
    keep = lambda new, old: jnp.where(none, old, new)  # noqa: E731
    return (keep(mu_p, mu), keep(E_p, E), keep(vmu, var_mu), keep(cme, cov_muE), keep(vE, var_E),
            jnp.where(none, 0.0, ln_like))


# ----------------------------------------------------------------------------------------- screening
class GridResult(NamedTuple):
    """Grid points drawn for each star with their posterior weights; every field has leading axes (N, K).

    index : (N, K) int32 grid indices (−1 for padding); a point may appear several times (it was drawn
        several times), its posterior mass is the sum over its copies
    log_weight : (N, K) ln posterior mass of each entry, normalized per star (−inf: empty)
    theta : (N, K, 3)
    mu, E : (N, K) posterior mean of (μ, E) given θ
    var_mu, cov_muE, var_E : (N, K) the photometric (μ, E) covariance at that θ
    chi2 : (N, K) photometric χ² at the constrained optimum
    log_evidence : (N,) ln p(data) up to a per-star constant
    n_points : (N,) distinct grid points drawn
    """

    index: jnp.ndarray
    log_weight: jnp.ndarray
    theta: jnp.ndarray
    mu: jnp.ndarray
    E: jnp.ndarray
    var_mu: jnp.ndarray
    cov_muE: jnp.ndarray
    var_E: jnp.ndarray
    chi2: jnp.ndarray
    log_evidence: jnp.ndarray
    n_points: jnp.ndarray


def approximate_log_weight(sol: MuESolution, ln_prior_theta, row, feh, stars: StarArrays, prior, table):
    """Laplace (Gauss–Newton) ln posterior mass of each grid point (the screening / proposal weight).

    ln w ≈ −χ²_free/2 + ½ ln det C + ln N_lin(ϖ̂) + ln p(μ*, [M/H]) + ln p(θ) + ln ∫ p(E) N(E) dE, with
    μ* the parallax-updated mean (:func:`gauss_newton_parallax`).  Fields of ``sol``: (N, G); ``row``,
    ``feh``, ``ln_prior_theta``: broadcastable to (N, G).  The exact weights come from
    :func:`photoinfer.grid.posterior.grid_posterior`.

    Returns
    -------
    lw : (N, G), and the parallax-updated Gaussian (mu, E, var_mu, cov_muE, var_E)
    """
    ex = lambda a: a[:, None]  # noqa: E731
    mu, E, vmu, cme, vE, ln_plx = gauss_newton_parallax(sol.mu_free, sol.var_mu, sol.cov_muE, sol.var_E, sol.E_free,
                                                         ex(stars.parallax), ex(stars.parallax_err))
    det = jnp.maximum(sol.var_mu * sol.var_E - sol.cov_muE ** 2, 1e-30)
    mean, var, lo, hi, ln_norm = log_prior_E_conditional(prior, ex(stars.E0), ex(stars.sigma_E0), E, vE)
    ln_trunc = log_truncation(mean, var, lo, hi)
    # μ where the prior is evaluated: on the E = 0 edge when the mean is below it
    mu_eval = jnp.where(E < 0, mu - cme / vE * E, mu)
    ln_pos = 0.0 if (prior is None) else log_prior_position(prior, table, row, feh, mu_eval, ex(stars.l), ex(stars.b))
    lw = -0.5 * sol.chi2_free + 0.5 * jnp.log(det) + ln_plx + ln_trunc + ln_norm + ln_pos + ln_prior_theta
    return lw, (mu, E, vmu, cme, vE)


class GridArrays(NamedTuple):
    """Device copies of a :class:`ThetaGrid` for the fast path (built once per grid, a pytree).

    features : (5, B, G) band-major R, R², M̃, M̃², R·M̃ (M̃ = M minus its band mean c)
    c : (G,) band mean of M [mag]
    M, R : (G, B); ln_prior : (G,); theta : (G, 3)
    row : (G,) int32, index of the point's [M/H] in ``ThetaGrid.feh_axis`` (rows of :class:`PositionTable`)
    feh_axis : (nF,) the lattice's [M/H] values
    network : dict (params, theta_med, theta_std) or None, see :class:`ThetaGrid`
    """

    features: jnp.ndarray
    c: jnp.ndarray
    M: jnp.ndarray
    R: jnp.ndarray
    ln_prior: jnp.ndarray
    theta: jnp.ndarray
    row: jnp.ndarray
    feh_axis: jnp.ndarray
    network: dict | None


def grid_arrays(grid: ThetaGrid) -> GridArrays:
    """:class:`GridArrays` of a grid (float32)."""
    M = np.asarray(grid.M, np.float64)
    R = np.asarray(grid.R, np.float64)
    c = M.mean(1)
    Mc = M - c[:, None]
    feats = np.stack([R.T, (R * R).T, Mc.T, (Mc * Mc).T, (R * Mc).T]).astype(np.float32)
    row = np.searchsorted(grid.feh_axis, grid.theta[:, 2] - 1e-4).astype(np.int32)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    net = None if grid.network is None else jax.tree_util.tree_map(f32, grid.network)
    return GridArrays(jnp.asarray(feats), f32(c), f32(grid.M), f32(grid.R), f32(grid.ln_prior), f32(grid.theta),
                      jnp.asarray(row), f32(grid.feh_axis), net)


def solve_mu_E_grid(ga: GridArrays, mag, weight) -> MuESolution:
    """:func:`solve_mu_E` on every point of a grid, with the band sums as one fused loop over bands.

    Same algebra as :func:`solve_mu_E` (centred magnitudes); the sums Σ_b are accumulated band by
    band on (N, G) arrays, which XLA fuses into one pass (on a CPU about twice as fast as the seven
    (N, B) @ (B, G) products with B = 13).  Fields (N, G).
    """
    w = jnp.asarray(weight, jnp.float32)
    s0 = jnp.sum(w, axis=1, keepdims=True)
    m0 = jnp.sum(w * mag, axis=1, keepdims=True) / s0
    m = jnp.where(w > 0, mag - m0, 0.0)
    wm = w * m
    F = ga.features
    acc = [0.0] * 7
    for b in range(F.shape[1]):
        wb, wmb = w[:, b:b + 1], wm[:, b:b + 1]
        R, R2, Mc, Mc2, RM = (F[k, b][None, :] for k in range(5))
        acc = [acc[0] + wb * R, acc[1] + wb * R2, acc[2] + wb * Mc, acc[3] + wb * Mc2, acc[4] + wb * RM,
               acc[5] + wmb * Mc, acc[6] + wmb * R]
    sR, sRR, sM, sMM, sRM, smM, smR = acc
    smm = jnp.sum(wm * m, axis=1, keepdims=True)
    sm = jnp.sum(wm, axis=1, keepdims=True)
    sol = _solve_from_sums(s0, sR, sRR, sm - sM, smR - sRM, smm - 2.0 * smM + sMM)
    shift = m0 - ga.c[None, :]
    return sol._replace(mu=sol.mu + shift, mu_free=sol.mu_free + shift)


def _pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    if len(a) == size:
        return a
    return np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)])


# ----------------------------------------------------------------------------------------- NUTS seeds
class InitialPoints(NamedTuple):
    """Starting points for NUTS chains in every plausible mode.

    position : (N, C, 5) (teff, logg, feh, mu, E) per chain
    cov : (N, C, 5, 5) the local covariance of the chain's mode (for an initial dense mass matrix)
    mode : (N, C) int, which mode each chain starts in (0 = heaviest)
    mode_weight : (N, C) posterior mass of each mode (0 for modes beyond n_modes)
    n_modes : (N,) number of modes found
    """

    position: np.ndarray
    cov: np.ndarray
    mode: np.ndarray
    mode_weight: np.ndarray
    n_modes: np.ndarray


@partial(jax.jit, static_argnames=("n_chains",))
def _initial_points(theta, lw, mu, E, vmu, cme, vE, scale, floor, sep, min_mass, n_chains: int):
    """Per star (vmapped): greedy mode finding in scaled θ, chain allocation, local covariances."""
    K = lw.shape[0]
    x = theta / scale
    finite = jnp.isfinite(lw)
    lw = jnp.where(finite, lw, -jnp.inf)
    C = n_chains

    def pick(carry, _):
        centres, n_found, covered = carry
        cand_lw = jnp.where(covered | ~finite, -jnp.inf, lw)
        i = jnp.argmax(cand_lw)
        ok = jnp.isfinite(cand_lw[i])
        near = jnp.sqrt(jnp.sum((x - x[i]) ** 2, -1)) < sep
        centres = jnp.where(ok, centres.at[n_found].set(i), centres)
        return (centres, n_found + ok, covered | (near & ok)), None

    (centres, n_found, _), _ = jax.lax.scan(pick, (jnp.zeros(C, jnp.int32), jnp.int32(0), jnp.zeros(K, bool)), None,
                                            length=C)
    valid_c = jnp.arange(C) < n_found
    dist = jnp.sqrt(jnp.sum((x[:, None, :] - x[centres][None, :, :]) ** 2, -1))       # (K, C)
    dist = jnp.where(valid_c[None, :], dist, jnp.inf)
    assign = jnp.argmin(dist, axis=1)                                                   # (K,)
    onehot = (assign[:, None] == jnp.arange(C)[None, :]) & finite[:, None]
    lmass = logsumexp(jnp.where(onehot, lw[:, None], -jnp.inf), axis=0)                 # (C,)
    mass = jnp.exp(lmass - logsumexp(lw))
    good = valid_c & (mass >= min_mass)
    good = good.at[0].set(n_found > 0)
    # re-order modes by mass
    order = jnp.argsort(-jnp.where(good, mass, -1.0))
    n_modes = jnp.maximum(jnp.sum(good), 1)
    mass_s = jnp.where(jnp.arange(C) < n_modes, mass[order], 0.0)
    # chains: one per mode, then the rest by the modes' mass quantiles
    q = (jnp.arange(C) - n_modes + 0.5) / jnp.maximum(C - n_modes, 1)
    cum = jnp.cumsum(mass_s) / jnp.sum(mass_s)
    extra = jnp.minimum(jnp.searchsorted(cum, q), n_modes - 1)
    chain_mode = jnp.where(jnp.arange(C) < n_modes, jnp.arange(C), extra)              # index into order
    mode_of_point = jnp.argsort(order)[assign]                                          # sorted mode per point
    # the r-th chain of a mode starts at the mode's r-th best point
    rank_in_mode = jnp.cumsum(jax.nn.one_hot(chain_mode, C), axis=0)[jnp.arange(C), chain_mode] - 1
    pts = jnp.stack([theta[:, 0], theta[:, 1], theta[:, 2], mu, E], -1)                 # (K, 5)

    def per_mode(m):
        inm = (mode_of_point == m) & finite
        wl = jnp.where(inm, lw, -jnp.inf)
        w = jnp.exp(wl - logsumexp(wl))
        w = jnp.where(inm, w, 0.0)
        mean = jnp.sum(w[:, None] * pts, 0)
        dev = pts - mean
        cov = jnp.einsum("k,ki,kj->ij", w, dev, dev)
        within = jnp.sum(w * vmu), jnp.sum(w * cme), jnp.sum(w * vE)
        cov = cov.at[3, 3].add(within[0]).at[3, 4].add(within[1]).at[4, 3].add(within[1]).at[4, 4].add(within[2])
        cov = cov + jnp.diag(floor)
        ranked = jnp.argsort(-wl)
        return cov, ranked

    covs, ranked = jax.vmap(per_mode)(jnp.arange(C))                                     # (C,5,5), (C,K)
    start_idx = ranked[chain_mode, jnp.minimum(rank_in_mode.astype(jnp.int32), K - 1)]
    # a chain whose rank falls on an empty slot starts at the mode's best point
    start_idx = jnp.where(finite[start_idx], start_idx, ranked[chain_mode, 0])
    return pts[start_idx], covs[chain_mode], chain_mode, mass_s, n_modes


def initial_points(result: GridResult, n_chains: int = 4, scale=(1500.0, 0.9, 1.0), separation: float = 1.0,
                   min_mass: float = 1e-3, spacing=PRESETS["fine"]) -> InitialPoints:
    """Starting points for ``n_chains`` NUTS chains per star, in every separated mode of the grid posterior.

    Modes are found greedily: the heaviest point is a mode centre, points within ``separation`` (in θ
    scaled by ``scale``, default ≈ the model's θ spread) belong to it, the heaviest point left is the
    next centre, and so on (at most ``n_chains``).  Points go to the nearest centre; modes holding
    less than ``min_mass`` of the posterior are dropped.  Each mode gets one chain (heaviest mode
    first); the remaining chains go to modes in proportion to their mass, each starting at the
    mode's next-best point.

    Parameters
    ----------
    result : GridResult
        From :func:`screen` or :func:`photoinfer.grid.posterior.grid_posterior`.
    n_chains : int
    scale : (3,) θ scale for distances [K, dex, dex]
    separation : float
        Distance (scaled θ) within which points belong to one mode; dwarf and giant solutions of
        one star differ by > 1 in logg/0.9 dex.
    min_mass : float
        Smallest posterior mass of a mode that gets a chain.
    spacing : (3,) grid step; (step²/12) is added to the θ variances (the cell's own width).

    Returns
    -------
    InitialPoints
    """
    floor = jnp.asarray(np.r_[np.asarray(spacing, float) ** 2 / 12.0, 1e-6, 1e-6], jnp.float32)
    fn = jax.vmap(_initial_points, in_axes=(0, 0, 0, 0, 0, 0, 0, None, None, None, None, None))
    out = fn(jnp.asarray(result.theta), jnp.asarray(result.log_weight), jnp.asarray(result.mu), jnp.asarray(result.E),
             jnp.asarray(result.var_mu), jnp.asarray(result.cov_muE), jnp.asarray(result.var_E),
             jnp.asarray(scale, jnp.float32), floor, float(separation), float(min_mass), int(n_chains))
    return InitialPoints(*[np.asarray(a) for a in out])
