"""`Catalog`: plain per-star arrays, their validation flags, and the input preparation of METHOD §6.

Nothing is ever dropped: a star that cannot be used keeps its row and gets a flag
(:class:`Flag`); every output of photoinfer carries one row per input star.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field, replace

import numpy as np

from .conventions import DEFAULT_BANDS, BandSet

__all__ = ["Catalog", "Flag", "PrepReport", "TRAINING_UNUSABLE", "INFERENCE_UNUSABLE",
           "add_error_floor", "drop_noisy_bands", "vega_to_ab", "theta_variance_floor", "theta_error_cut",
           "survey_zero_points", "reddening_prior_floor", "prepare", "PREPARATION_STEPS"]

log = logging.getLogger(__name__)


class Flag(enum.IntFlag):
    """Per-star status bits (0 = fine).  Stored in ``Catalog.flags`` and in every output table."""

    BAD_MAGNITUDE = 1        #: a magnitude was infinite, or its error non-finite or <= 0: that band is treated as unobserved
    NO_REFERENCE = 2         #: the reference band (first band) is unobserved: colours undefined for training/evaluation
    BAD_PARALLAX = 4         #: parallax or its error non-finite or error <= 0: parallax ignored
    NONPOSITIVE_PARALLAX = 8  #: ϖ̂ <= 0: no distance modulus for training; inference uses it in its Gaussian likelihood
    BAD_THETA = 16           #: θ non-finite or its covariance not positive-definite
    NO_THETA = 32            #: no spectroscopic θ (photometry-only star)
    BAD_REDDENING_PRIOR = 64  #: reddening prior missing or its error <= 0
    TOO_FEW_BANDS = 128      #: fewer than two observed bands
    CUT_THETA_ERROR = 256    #: θ error above the preparation cut (METHOD §6)
    OUTSIDE_VALIDITY = 512   #: (inference) posterior mostly outside the model's region of validity
    NOT_CONVERGED = 1024     #: (inference) r̂ or ESS below threshold
    FIT_FAILED = 2048        #: (inference/evaluation) non-finite result
    NO_POSITION = 4096       #: (pixel pipeline) no finite (l, b): in pixel -1, fit with the position-free prior
    MULTIMODAL = 8192        #: (inference) the chains ended in separate modes: r̂/ESS within modes, draws mass-weighted

    @classmethod
    def describe(cls, value: int) -> str:
        """Names of the bits set in ``value``, joined by ``|`` (``"OK"`` for 0)."""
        names = [f.name for f in cls if value & f]
        return "|".join(names) if names else "OK"


#: Stars with any of these bits cannot enter training or `evaluate`.
TRAINING_UNUSABLE = (Flag.NO_REFERENCE | Flag.BAD_THETA | Flag.NO_THETA | Flag.BAD_REDDENING_PRIOR
                     | Flag.CUT_THETA_ERROR)
#: Stars with any of these bits cannot be fit from photometry.
INFERENCE_UNUSABLE = Flag.TOO_FEW_BANDS


def _str_array(a, n) -> np.ndarray:
    if a is None:
        return np.full(n, "", dtype=object)
    a = np.asarray(a)
    if a.dtype.kind == "S":
        a = np.char.decode(a, "utf-8")
    return np.array([str(v).strip() for v in a], dtype=object)


@dataclass
class Catalog:
    """Per-star arrays.  N stars, B bands; NaN marks a missing value.

    Attributes
    ----------
    bands : BandSet
    source_id : (N,) int64
    mag, mag_err : (N, B) [mag]; NaN where unobserved
    parallax, parallax_err : (N,) [mas]; NaN where unknown
    l, b : (N,) Galactic longitude and latitude [deg]; NaN where unknown
    theta : (N, 3) (Teff [K], logg [dex], [M/H] [dex]); NaN for photometry-only stars
    theta_cov : (N, 3, 3); NaN where θ is unknown
    E0, sigma_E0 : (N,) reddening prior (SFD/Bayestar19 units); NaN where unknown
    r_source : (N,) str, where the reddening prior comes from (``sfd``, ``b19``, ``default``, ...)
    atm_source : (N,) str, the spectroscopic survey of θ
    flags : (N,) int64, :class:`Flag` bits
    extra : dict of (N,) or (N, ...) arrays carried through unchanged (e.g. truth columns of a mock)
    name : str, where the catalog came from (file name), for messages
    """

    bands: BandSet
    source_id: np.ndarray
    mag: np.ndarray
    mag_err: np.ndarray
    parallax: np.ndarray
    parallax_err: np.ndarray
    l: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    theta_cov: np.ndarray
    E0: np.ndarray
    sigma_E0: np.ndarray
    r_source: np.ndarray
    atm_source: np.ndarray
    flags: np.ndarray
    extra: dict = field(default_factory=dict)
    name: str = "catalog"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, mag, mag_err, *, bands: BandSet = DEFAULT_BANDS, source_id=None, parallax=None,
                    parallax_err=None, l=None, b=None, theta=None, theta_cov=None, E0=None, sigma_E0=None,
                    r_source=None, atm_source=None, extra=None, name: str = "catalog") -> "Catalog":
        """Build and validate a catalog from arrays (missing arguments become NaN / empty).

        Raises
        ------
        ValueError
            When array shapes disagree (naming the argument), or source_id repeats.
        """
        mag = np.array(mag, dtype=np.float64, ndmin=2)
        n, nb = mag.shape
        if nb != len(bands):
            raise ValueError(f"{name}: mag has {nb} columns but the band set has {len(bands)} bands {bands.names}")

        def col(a, shape=(), fill=np.nan, label=""):
            if a is None:
                return np.full((n,) + shape, fill)
            a = np.asarray(a, dtype=np.float64)
            if a.shape != (n,) + shape:
                raise ValueError(f"{name}: {label} has shape {a.shape}, expected {(n,) + shape}")
            return a.copy()

        sid = np.arange(n, dtype=np.int64) if source_id is None else np.asarray(source_id).astype(np.int64)
        if sid.shape != (n,):
            raise ValueError(f"{name}: source_id has shape {sid.shape}, expected ({n},)")
        if len(np.unique(sid)) != n:
            vals, counts = np.unique(sid, return_counts=True)
            raise ValueError(f"{name}: source_id is not unique (e.g. {vals[counts > 1][:5].tolist()} repeat)")
        extra = {k: np.asarray(v) for k, v in (extra or {}).items()}
        for k, v in extra.items():
            if len(v) != n:
                raise ValueError(f"{name}: extra column {k!r} has {len(v)} rows, expected {n}")
        cat = cls(bands=bands, source_id=sid, mag=mag.copy(), mag_err=col(mag_err, (nb,), label="mag_err"),
                  parallax=col(parallax, label="parallax"), parallax_err=col(parallax_err, label="parallax_err"),
                  l=col(l, label="l"), b=col(b, label="b"), theta=col(theta, (3,), label="theta"),
                  theta_cov=col(theta_cov, (3, 3), label="theta_cov"), E0=col(E0, label="E0"),
                  sigma_E0=col(sigma_E0, label="sigma_E0"), r_source=_str_array(r_source, n),
                  atm_source=_str_array(atm_source, n), flags=np.zeros(n, np.int64), extra=extra, name=name)
        cat.validate()
        return cat

    def __len__(self) -> int:
        return len(self.source_id)

    # ------------------------------------------------------------------ validation
    def validate(self) -> "Catalog":
        """Recompute :attr:`flags` from the values and make bad values unobserved (NaN).

        Per band: an infinite magnitude, or an error that is non-finite or <= 0, makes that
        band unobserved and sets ``BAD_MAGNITUDE``.  Logs how many stars each flag touches.
        Returns ``self`` (modified in place).
        """
        flags = np.zeros(len(self), np.int64)
        with np.errstate(invalid="ignore"):
            present = ~np.isnan(self.mag)
            bad = present & (~np.isfinite(self.mag) | ~np.isfinite(self.mag_err) | ~(self.mag_err > 0))
        flags[bad.any(axis=1)] |= Flag.BAD_MAGNITUDE
        self.mag[bad] = np.nan
        self.mag_err[bad | ~present] = np.nan
        obs = np.isfinite(self.mag)
        flags[~obs[:, 0]] |= Flag.NO_REFERENCE
        flags[obs.sum(axis=1) < 2] |= Flag.TOO_FEW_BANDS

        has_plx = ~np.isnan(self.parallax)
        with np.errstate(invalid="ignore"):
            bad_plx = has_plx & (~np.isfinite(self.parallax) | ~np.isfinite(self.parallax_err) | ~(self.parallax_err > 0))
            flags[bad_plx] |= Flag.BAD_PARALLAX
            self.parallax[bad_plx] = np.nan
            self.parallax_err[np.isnan(self.parallax)] = np.nan
            flags[np.isfinite(self.parallax) & (self.parallax <= 0)] |= Flag.NONPOSITIVE_PARALLAX

        no_theta = np.isnan(self.theta).all(axis=1)
        flags[no_theta] |= Flag.NO_THETA
        flags[~no_theta & ~theta_cov_ok(self.theta, self.theta_cov)] |= Flag.BAD_THETA

        with np.errstate(invalid="ignore"):
            flags[~(np.isfinite(self.E0) & np.isfinite(self.sigma_E0) & (self.sigma_E0 > 0))] |= Flag.BAD_REDDENING_PRIOR
        # flags set by earlier preparation steps survive re-validation
        self.flags = flags | (self.flags & Flag.CUT_THETA_ERROR)
        for f in (Flag.BAD_MAGNITUDE, Flag.NO_REFERENCE, Flag.TOO_FEW_BANDS, Flag.BAD_PARALLAX, Flag.BAD_THETA):
            k = int(np.count_nonzero(self.flags & f))
            if k:
                log.warning("%s: %d star(s) flagged %s (first source_id %s)", self.name, k, f.name,
                            self.source_id[np.flatnonzero(self.flags & f)[0]])
        return self

    def problems(self, unusable: int = TRAINING_UNUSABLE, limit: int = 10) -> list[str]:
        """Human-readable lines ``source_id: FLAGS`` for stars with any of the ``unusable`` bits."""
        idx = np.flatnonzero(self.flags & unusable)
        return [f"source_id {self.source_id[i]} (row {i}): {Flag.describe(self.flags[i])}" for i in idx[:limit]]

    # ------------------------------------------------------------------ convenience
    @property
    def observed(self) -> np.ndarray:
        """(N, B) bool: band observed."""
        return np.isfinite(self.mag)

    def usable(self, unusable: int = TRAINING_UNUSABLE) -> np.ndarray:
        """(N,) bool: no bit of ``unusable`` set."""
        return (self.flags & int(unusable)) == 0

    def subset(self, index) -> "Catalog":
        """A new catalog (copied arrays) with the rows ``index`` (bool mask, integer array or slice)."""
        take = lambda a: np.array(a[index], copy=True)  # noqa: E731
        fields = {k: take(getattr(self, k)) for k in ("source_id", "mag", "mag_err", "parallax", "parallax_err", "l",
                                                       "b", "theta", "theta_cov", "E0", "sigma_E0", "r_source",
                                                       "atm_source", "flags")}
        return replace(self, extra={k: take(v) for k, v in self.extra.items()}, **fields)

    def copy(self) -> "Catalog":
        return self.subset(slice(None))


def theta_cov_ok(theta: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """(N,) bool: θ finite and C_θ finite, symmetric and positive-definite."""
    ok = np.isfinite(theta).all(axis=1) & np.isfinite(cov).all(axis=(1, 2))
    c = np.where(ok[:, None, None], cov, np.eye(3))
    ok &= np.all(np.abs(c - np.swapaxes(c, 1, 2)) <= 1e-6 * (np.abs(c).max(axis=(1, 2))[:, None, None] + 1e-30),
                 axis=(1, 2))
    ok &= np.all(np.linalg.eigvalsh(0.5 * (c + np.swapaxes(c, 1, 2))) > 0, axis=1)
    return ok


# ---------------------------------------------------------------------- preparation (METHOD §6)
@dataclass(frozen=True)
class PrepReport:
    """What one preparation step changed."""

    step: str
    n_stars: int
    n_values: int
    note: str = ""

    def __str__(self) -> str:
        return f"{self.step}: {self.n_stars} star(s), {self.n_values} value(s) changed{'; ' + self.note if self.note else ''}"


def add_error_floor(cat: Catalog, floor: float = 0.02) -> tuple[Catalog, PrepReport]:
    """σ_m ← sqrt(σ_m² + floor²) for every observed band (METHOD §6, 0.02 mag)."""
    out = cat.copy()
    obs = out.observed
    out.mag_err[obs] = np.hypot(out.mag_err[obs], floor)
    return out, PrepReport("add_error_floor", int(obs.any(axis=1).sum()), int(obs.sum()), f"floor {floor} mag")


def drop_noisy_bands(cat: Catalog, max_err: float = 0.2) -> tuple[Catalog, PrepReport]:
    """Make bands with σ_m > ``max_err`` unobserved (METHOD §6, 0.2 mag)."""
    out = cat.copy()
    noisy = out.observed & (out.mag_err > max_err)
    out.mag[noisy] = np.nan
    out.mag_err[noisy] = np.nan
    out.validate()
    return out, PrepReport("drop_noisy_bands", int(noisy.any(axis=1).sum()), int(noisy.sum()), f"sigma > {max_err} mag")


def vega_to_ab(cat: Catalog) -> tuple[Catalog, PrepReport]:
    """Add each band's Vega→AB offset (unWISE W1 +2.699, W2 +3.339; METHOD §6)."""
    out = cat.copy()
    off = cat.bands.vega_to_ab
    changed = out.observed & (off != 0)[None, :]
    out.mag = out.mag + off[None, :]
    return out, PrepReport("vega_to_ab", int(changed.any(axis=1).sum()), int(changed.sum()),
                           ", ".join(f"{b.name} {b.vega_to_ab:+.3f}" for b in cat.bands if b.vega_to_ab))


def theta_variance_floor(cat: Catalog, floors=(10.0, 0.05, 0.03)) -> tuple[Catalog, PrepReport]:
    """Raise the θ variances to at least floor² ((10 K)², 0.05², 0.03²; METHOD §6)."""
    out = cat.copy()
    var = np.diagonal(out.theta_cov, axis1=1, axis2=2).copy()
    low = np.isfinite(var) & (var < np.asarray(floors) ** 2)
    idx = np.arange(3)
    out.theta_cov[:, idx, idx] = np.where(low, np.asarray(floors) ** 2, var)
    out.validate()
    return out, PrepReport("theta_variance_floor", int(low.any(axis=1).sum()), int(low.sum()), f"floors {tuple(floors)}")


def theta_error_cut(cat: Catalog, max_err=(200.0, 0.5, 0.5)) -> tuple[Catalog, PrepReport]:
    """Flag ``CUT_THETA_ERROR`` on stars with a θ error above (200 K, 0.5, 0.5) (METHOD §6); none removed."""
    out = cat.copy()
    with np.errstate(invalid="ignore"):
        err = np.sqrt(np.diagonal(out.theta_cov, axis1=1, axis2=2))
        cut = (err > np.asarray(max_err)).any(axis=1)
    out.flags = np.where(cut, out.flags | Flag.CUT_THETA_ERROR, out.flags)
    return out, PrepReport("theta_error_cut", int(cut.sum()), int(cut.sum()), f"sigma > {tuple(max_err)}; flagged, not removed")


#: Survey zero points onto GALAH's scale (METHOD §6): added to (Teff, logg, [M/H]).
SURVEY_ZERO_POINTS = {"apogee": (23.05, 0.0119, 0.0502), "galah": (0.0, 0.0, 0.0)}


def survey_zero_points(cat: Catalog, offsets: dict | None = None) -> tuple[Catalog, PrepReport]:
    """Add per-survey θ offsets (``atm_source`` → (ΔTeff, Δlogg, Δ[M/H])); default APOGEE's released ones.

    LAMOST's offsets are given in the paper, not in the released code: pass them in ``offsets``.
    """
    offsets = SURVEY_ZERO_POINTS if offsets is None else offsets
    out = cat.copy()
    n = 0
    for survey, off in offsets.items():
        k = np.char.lower(out.atm_source.astype(str)) == survey.lower()
        out.theta[k] += np.asarray(off)
        n += int(k.sum()) if np.any(off) else 0
    return out, PrepReport("survey_zero_points", n, 3 * n, ", ".join(f"{s} {tuple(o)}" for s, o in offsets.items()))


def reddening_prior_floor(cat: Catalog, floor: float = 0.02) -> tuple[Catalog, PrepReport]:
    """σ_E₀ ← sqrt(σ_E₀² + floor²) (METHOD §6, 0.02 for everyone)."""
    out = cat.copy()
    ok = np.isfinite(out.sigma_E0)
    out.sigma_E0[ok] = np.hypot(out.sigma_E0[ok], floor)
    out.validate()
    return out, PrepReport("reddening_prior_floor", int(ok.sum()), int(ok.sum()), f"floor {floor}")


PREPARATION_STEPS = {f.__name__: f for f in (add_error_floor, drop_noisy_bands, vega_to_ab, theta_variance_floor,
                                             theta_error_cut, survey_zero_points, reddening_prior_floor)}


def prepare(cat: Catalog, steps=("add_error_floor", "drop_noisy_bands", "vega_to_ab", "theta_variance_floor",
                                 "theta_error_cut", "survey_zero_points", "reddening_prior_floor")
        ) -> tuple[Catalog, list[PrepReport]]:
    """Run preparation steps in order (by name), logging and returning each step's report.

    The released sample file is already prepared (floor, AB): don't run these on it.
    """
    reports = []
    for s in steps:
        if s not in PREPARATION_STEPS:
            raise ValueError(f"unknown preparation step {s!r}; known: {sorted(PREPARATION_STEPS)}")
        cat, rep = PREPARATION_STEPS[s](cat)
        log.info("%s", rep)
        reports.append(rep)
    return cat, reports
