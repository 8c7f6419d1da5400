"""Observational error and coverage model of mock catalogs, fitted on the real 8,000-star sample.

Everything :mod:`photoinfer.simulate` needs to turn noise-free quantities into a catalog that
looks like the released sample ``green2020_sample_8k.h5``:

- photometric errors per band as a function of the noise-free magnitude m [mag]::

      σ_b(m) = sqrt(f_b² + exp(a_b + β (m − 15)))                                      (E1)

  β = 0.8 ln 10 fixed (background-limited photometry, σ ∝ 1/flux); a_b and the floor f_b ≥ 0.02
  fitted per band (the released sample already contains the 0.02 mag floor of METHOD §6);
- survey-like faint limits per band: fainter bands, and bands with σ > 0.2 mag, are unobserved;
- observed-band patterns ("masks") resampled from real stars of similar reference magnitude (the
  real sample's coverage depends strongly on brightness: PS1 and unWISE saturate at G ≲ 14);
- parallax errors as a function of the reference (Gaia G) magnitude::

      σ_ϖ(G) = sqrt(f_ϖ² + exp(c + γ (G − 15)))   [mas]                               (E2)

- reddening-prior errors σ_E₀: per prior source (sfd / b19 / default, real proportions) a
  log-normal, clipped below at 0.02;
- θ errors: per survey (lamost / apogee / galah, real proportions) log σ ~ N(mean, cov) (the real
  correlations are ≈ 0, so C_θ is diagonal), clipped to the preparation floors and cuts of METHOD §6.

:func:`fit_error_model` computes all of this from a catalog; :data:`DEFAULT_ERROR_MODEL` holds its
output on ``green2020_sample_8k.h5`` (hard-coded, so that simulating needs no data file).
:meth:`ErrorModel.with_reference` adds the real catalog itself, so that σ_E₀ and C_θ are resampled
from real stars instead of drawn from the fits.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["ErrorModel", "DEFAULT_ERROR_MODEL", "fit_error_model", "photometric_error", "parallax_error",
           "MAX_MAG_ERR", "BETA"]

#: Bands with σ above this are unobserved (METHOD §6).
MAX_MAG_ERR = 0.2
#: Fixed slope β of Eq. (E1): σ ∝ 10^(0.4 m) (background-limited).
BETA = float(0.8 * np.log(10.0))
#: Reference magnitude bin edges for the mask resampling (reference band, noise-free).
MASK_EDGES = (11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0)


@dataclass(frozen=True)
class ErrorModel:
    """Error and coverage model of a survey-like catalog (see the module docstring).

    Attributes
    ----------
    band_keys : tuple of str
        Band keys, in the model's order (B).
    mag_a, mag_floor : ndarray (B,)
        a_b and f_b of Eq. (E1) [ln mag², mag].
    mag_limit : ndarray (B,)
        Faint limit per band [mag] (noise-free magnitude; fainter → unobserved).
    mask_edges : ndarray (K−1,)
        Reference-magnitude bin edges of the mask table.
    mask_codes : tuple of K int arrays
        Per bin, observed-band patterns of real stars as bit codes (bit b = band b observed).
    mask_counts : tuple of K int arrays
        How many real stars had each code.
    plx_floor, plx_c, plx_gamma : float
        f_ϖ, c, γ of Eq. (E2).
    ebv_sources : tuple of str
        Reddening-prior sources; ``ebv_weight``, ``ebv_lnmean``, ``ebv_lnsd`` (same length): their
        fraction and the log-normal of σ_E₀.
    theta_surveys : tuple of str
        θ surveys; ``theta_weight`` (S,), ``theta_lnmean`` (S, 3), ``theta_lncov`` (S, 3, 3): their
        fraction and the normal of ln σ_θ (σ_θ in K, dex, dex).
    theta_err_min, theta_err_max : (3,)
        Clip of σ_θ (METHOD §6 floors and cuts).
    max_mag_err : float
        A band is unobserved where its error at the noise-free magnitude exceeds this [mag] (default
        ``MAX_MAG_ERR``, 0.2).
    mag_err_cap : float
        Errors larger than this [mag] are reported (and drawn) as this (default ``inf``: none).  With
        ``mag_limit = max_mag_err = inf`` and a cap: a mock without any selection on magnitudes whose faint bands
        stay finite numbers.
    reference : dict or None
        Real per-star arrays to resample instead of the fits: ``sigma_E0`` (N,), ``theta_cov``
        (N, 3, 3), ``atm_source`` (N,).
    source : str
        Where the fit comes from.
    """

    band_keys: tuple
    mag_a: np.ndarray
    mag_floor: np.ndarray
    mag_limit: np.ndarray
    mask_edges: np.ndarray
    mask_codes: tuple
    mask_counts: tuple
    plx_floor: float
    plx_c: float
    plx_gamma: float
    ebv_sources: tuple
    ebv_weight: np.ndarray
    ebv_lnmean: np.ndarray
    ebv_lnsd: np.ndarray
    theta_surveys: tuple
    theta_weight: np.ndarray
    theta_lnmean: np.ndarray
    theta_lncov: np.ndarray
    theta_err_min: np.ndarray = field(default_factory=lambda: np.array([10.0, 0.05, 0.03]))
    theta_err_max: np.ndarray = field(default_factory=lambda: np.array([200.0, 0.5, 0.5]))
    max_mag_err: float = MAX_MAG_ERR
    mag_err_cap: float = np.inf
    reference: dict | None = None
    source: str = ""

    def for_bands(self, keys) -> "ErrorModel":
        """The model restricted/reordered to band ``keys`` (masks re-coded); raises for unknown bands."""
        keys = list(keys)
        missing = [k for k in keys if k not in self.band_keys]
        if missing:
            raise ValueError(f"error model ({self.source}) has no fit for band(s) {missing}; "
                             f"fitted bands: {list(self.band_keys)}. Fit one with fit_error_model(catalog).")
        idx = np.array([self.band_keys.index(k) for k in keys])
        if list(keys) == list(self.band_keys):
            return self
        recode = lambda codes: ((codes[:, None] >> idx[None, :]) & 1) @ (1 << np.arange(len(idx)))  # noqa: E731
        return replace(self, band_keys=tuple(keys), mag_a=self.mag_a[idx], mag_floor=self.mag_floor[idx],
                       mag_limit=self.mag_limit[idx], mask_codes=tuple(recode(np.asarray(c)) for c in self.mask_codes))

    def with_reference(self, cat) -> "ErrorModel":
        """Resample σ_E₀, C_θ and atm_source from the real catalog ``cat`` (stars with valid values)."""
        ok = np.isfinite(cat.sigma_E0) & (cat.sigma_E0 > 0)
        okt = np.isfinite(cat.theta_cov).all(axis=(1, 2))
        if not ok.any() or not okt.any():
            raise ValueError(f"{cat.name}: no star with both a reddening prior error and a θ covariance")
        return replace(self, reference=dict(sigma_E0=np.asarray(cat.sigma_E0[ok], np.float64),
                                            theta_cov=np.asarray(cat.theta_cov[okt], np.float64),
                                            atm_source=np.asarray(cat.atm_source[okt]).astype(str)),
                       source=f"{self.source} + resampled from {cat.name}")


def photometric_error(em: ErrorModel, mag):
    """σ_b(m) of Eq. (E1) [mag]; ``mag`` shape (..., B) noise-free magnitudes."""
    return np.sqrt(em.mag_floor ** 2 + np.exp(em.mag_a + BETA * (np.asarray(mag) - 15.0)))


def parallax_error(em: ErrorModel, G):
    """σ_ϖ(G) of Eq. (E2) [mas]; ``G`` any shape [mag]."""
    return np.sqrt(em.plx_floor ** 2 + np.exp(em.plx_c + em.plx_gamma * (np.asarray(G) - 15.0)))


# ---------------------------------------------------------------------- fitting
def _robust_fit(res, x0, bounds=(-np.inf, np.inf)):
    from scipy.optimize import least_squares
    return least_squares(res, x0, bounds=bounds, loss="soft_l1", f_scale=0.05).x


def fit_error_model(cat, mag_limit=None) -> ErrorModel:
    """Fit an :class:`ErrorModel` on a real catalog (how :data:`DEFAULT_ERROR_MODEL` was made).

    Parameters
    ----------
    cat : Catalog
        With magnitudes and errors (floor included), parallaxes, σ_E₀ with ``r_source``, and C_θ with
        ``atm_source``.
    mag_limit : array (B,), optional
        Faint limits; default :data:`SURVEY_LIMITS` for known band keys, else the catalog's faintest
        observed magnitude per band.

    Returns
    -------
    ErrorModel
        Fits by robust (soft-L1) least squares in ln σ: (E1) with β fixed, (E2) with γ free.
    """
    mag, err = cat.mag, cat.mag_err
    B = mag.shape[1]
    a, floor = np.zeros(B), np.zeros(B)
    for j in range(B):
        ok = np.isfinite(mag[:, j]) & np.isfinite(err[:, j])
        m, e = mag[ok, j], err[ok, j]

        def res(p):
            return 0.5 * np.log(0.02 ** 2 + np.exp(2 * p[1]) + np.exp(p[0] + BETA * (m - 15.0))) - np.log(e)
        p = _robust_fit(res, [-8.0, -5.0], ([-30.0, -12.0], [5.0, -1.0]))
        a[j], floor[j] = p[0], np.hypot(0.02, np.exp(p[1]))
    keys = tuple(cat.bands.keys)
    if mag_limit is None:
        mag_limit = np.array([SURVEY_LIMITS.get(k, np.nanmax(mag[:, j])) for j, k in enumerate(keys)])

    ref = mag[:, 0]
    obs = np.isfinite(mag)
    code = obs.astype(np.int64) @ (1 << np.arange(B))
    have = np.isfinite(ref)
    bins = np.digitize(ref[have], MASK_EDGES)
    codes, counts = [], []
    for k in range(len(MASK_EDGES) + 1):
        c, n = np.unique(code[have][bins == k], return_counts=True)
        codes.append(c)
        counts.append(n)

    okp = np.isfinite(cat.parallax_err) & np.isfinite(ref)
    G, pe = ref[okp], cat.parallax_err[okp]

    def resp(q):
        return 0.5 * np.log(np.exp(2 * q[0]) + np.exp(q[1] + q[2] * (G - 15.0))) - np.log(pe)
    q = _robust_fit(resp, [np.log(0.02), np.log(0.04 ** 2), 1.5])

    rs = np.char.lower(cat.r_source.astype(str))
    srcs = tuple(str(s) for s in np.unique(rs) if s)
    w, lm, ls = [], [], []
    for s in srcs:
        v = cat.sigma_E0[(rs == s) & (cat.sigma_E0 > 0)]
        w.append(len(v))
        lm.append(np.mean(np.log(v)))
        ls.append(np.std(np.log(v)))
    at = np.char.lower(cat.atm_source.astype(str))
    sig = np.sqrt(np.diagonal(cat.theta_cov, axis1=1, axis2=2))
    surveys = tuple(str(s) for s in np.unique(at) if s)
    tw, tm, tc = [], [], []
    for s in surveys:
        k = (at == s) & np.isfinite(sig).all(axis=1)
        lsig = np.log(sig[k])
        tw.append(k.sum())
        tm.append(lsig.mean(axis=0))
        tc.append(np.cov(lsig.T))
    return ErrorModel(band_keys=keys, mag_a=a, mag_floor=floor, mag_limit=np.asarray(mag_limit, float),
                      mask_edges=np.array(MASK_EDGES), mask_codes=tuple(codes), mask_counts=tuple(counts),
                      plx_floor=float(np.exp(q[0])), plx_c=float(q[1]), plx_gamma=float(q[2]),
                      ebv_sources=srcs, ebv_weight=np.array(w, float) / np.sum(w), ebv_lnmean=np.array(lm),
                      ebv_lnsd=np.array(ls), theta_surveys=surveys, theta_weight=np.array(tw, float) / np.sum(tw),
                      theta_lnmean=np.array(tm), theta_lncov=np.array(tc), source=f"fit on {cat.name}")


# ---------------------------------------------------------------------- hard-coded fit on the 8k sample
#: Survey-like faint limits [mag] (AB for unWISE): Gaia G 20.7, BP 20.5, RP 20.0 (DR2/3 completeness),
#: PS1 3π 5σ-ish (g 23.0, r 22.8, i 22.5, z 21.9, y 21.0), 2MASS (J 16.9, H 16.2, Ks 15.6, where the
#: fitted σ reaches 0.2), unWISE (W1 17.9 Vega = 20.6 AB, W2 16.6 Vega = 19.9 AB).
SURVEY_LIMITS = {"gaia_g": 20.7, "gaia_bp": 20.5, "gaia_rp": 20.0, "ps1_g": 23.0, "ps1_r": 22.8, "ps1_i": 22.5,
                 "ps1_z": 21.9, "ps1_y": 21.0, "tmass_j": 16.9, "tmass_h": 16.2, "tmass_ks": 15.6,
                 "unwise_w1": 20.6, "unwise_w2": 19.9}

#: :func:`fit_error_model` on the released 8,000-star sample, hard-coded (regenerate with
#: ``fit_error_model(read_catalog("green2020_sample_8k.h5"))``; tests/test_simulate.py checks that the
#: refit reproduces these numbers).  Fit quality (rms of ln σ about Eq. E1): G 0.008, BP 0.074, RP 0.041,
#: PS1 0.020–0.029, 2MASS 0.076–0.122, W1 0.015, W2 0.042; Eq. (E2): rms 0.31 in ln σ_ϖ.  σ reaches 0.2 mag
#: at G 23.2, BP 21.0, RP 20.4, g 22.6, r 23.1, i 23.2, z 22.3, y 20.8, J 17.0, H 16.1, Ks 15.5, W1 21.1,
#: W2 20.3; σ_ϖ = 0.030 mas at G 13, 0.040 at 15, 0.105 at 17, 0.39 at 19, 0.75 at 20.
DEFAULT_ERROR_MODEL = ErrorModel(
    band_keys=('gaia_g', 'gaia_bp', 'gaia_rp', 'ps1_g', 'ps1_r', 'ps1_i', 'ps1_z', 'ps1_y', 'tmass_j', 'tmass_h', 'tmass_ks', 'unwise_w1', 'unwise_w2'),
    mag_a=np.array([-18.3221, -14.2471, -13.1356, -17.2777, -18.1501, -18.3667, -16.7415, -13.9253,  -6.8648,  -5.2627,  -4.2215,
 -14.4086, -12.9357]),
    mag_floor=np.array([0.02  , 0.0202, 0.0201, 0.0205, 0.0205, 0.0204, 0.0205, 0.0204, 0.0305, 0.0311, 0.0288, 0.0203, 0.0204]),
    mag_limit=np.array([SURVEY_LIMITS[k] for k in ('gaia_g', 'gaia_bp', 'gaia_rp', 'ps1_g', 'ps1_r', 'ps1_i', 'ps1_z', 'ps1_y', 'tmass_j', 'tmass_h', 'tmass_ks', 'unwise_w1', 'unwise_w2')]),
    mask_edges=np.array(MASK_EDGES),
    mask_codes=(np.array([7, 1287, 1799]),
                np.array([7, 647, 1031, 1287, 1543, 1799, 1807, 1927, 6023]),
                np.array([7, 135, 143, 151, 199, 207, 263, 519, 527, 1167, 1287, 1423, 1679, 1799, 1807, 1823, 1921, 1927, 1935, 1943, 1951, 1959, 1967, 1991, 1999, 2007, 2015, 2047, 4231, 4239, 4295, 5895, 5903, 6023, 6031, 6039, 6047, 6055, 6087, 6095, 6103, 6111, 6119, 6127]),
                np.array([7, 135, 143, 159, 191, 207, 223, 239, 247, 255, 703, 775, 783, 903, 975, 991, 1007, 1023, 1167, 1183, 1231, 1287, 1487, 1503, 1679, 1759, 1791, 1799, 1807, 1823, 1831, 1871, 1919, 1927, 1935, 1943, 1951, 1959, 1967, 1983, 1991, 1999, 2015, 2023, 2031, 2039, 2047, 4103, 4255, 4319, 4335, 4351, 5071, 5087, 5103, 5127, 5343, 5599, 5615, 5631, 5855, 5889, 5895, 5903, 5919, 5927, 5967, 5983, 6015, 6023, 6031, 6039, 6047, 6063, 6079, 6087, 6095, 6103, 6111, 6119, 6127, 6135, 6143, 8143, 8175, 8183, 8191]),
                np.array([7, 159, 223, 255, 511, 1023, 1247, 1279, 1791, 1799, 1823, 1951, 1967, 1983, 1999, 2007, 2015, 2031, 2047, 4103, 4335, 4351, 4607, 5087, 5375, 5623, 5631, 5887, 5895, 5983, 6015, 6047, 6079, 6111, 6127, 6137, 6143, 6399, 7167, 7943, 8063, 8151, 8159, 8183, 8191]),
                np.array([255, 511, 1023, 1279, 1535, 1791, 1799, 1823, 1951, 1999, 2015, 2047, 2303, 4095, 4103, 4335, 4351, 5119, 5375, 5631, 5887, 5895, 6015, 6079, 6111, 6127, 6137, 6143, 6151, 6399, 6919, 7167, 7423, 7679, 7935, 7943, 8127, 8175, 8185, 8191]),
                np.array([15, 255, 511, 1023, 1279, 1791, 1799, 1983, 2015, 2047, 2815, 3071, 3583, 4095, 4103, 4351, 4607, 4863, 5119, 5127, 5895, 6127, 6143, 6151, 6399, 6655, 6919, 7039, 7151, 7159, 7167, 7423, 7935, 7943, 8127, 8159, 8191]),
                np.array([1, 7, 255, 511, 767, 1023, 1791, 1799, 2015, 2041, 2045, 2047, 2055, 2303, 2559, 2815, 3071, 3839, 4103, 4351, 4607, 4735, 5119, 5887, 5895, 6143, 6151, 6383, 6399, 6407, 6655, 6919, 7151, 7167, 7423, 7679, 7935, 7943, 8127, 8191])),
    mask_counts=(np.array([3, 2, 122]),
                 np.array([6, 1, 1, 1, 1, 298, 8, 30, 2]),
                 np.array([4, 6, 4, 1, 1, 3, 1, 1, 1, 1, 2, 1, 1, 207, 131, 2, 1, 193, 131, 5, 11, 2, 1, 22, 17, 2, 2, 1, 1, 1, 1, 13, 1, 38, 15, 2, 2, 1, 23, 13, 3, 1, 2, 1]),
                 np.array([2, 1, 3, 1, 2, 4, 4, 1, 1, 5, 1, 1, 1, 1, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 106, 28, 16, 2, 2, 5, 7, 148, 1, 98, 1, 9, 13, 5, 119, 147, 2, 31, 1, 85, 2, 1, 2, 3, 7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 85, 1, 1, 4, 1, 3, 1, 10, 34, 1, 13, 1, 6, 25, 124, 7, 192, 3, 70, 3, 271, 1, 2, 2, 12]),
                 np.array([3, 1, 1, 9, 2, 6, 1, 1, 2, 6, 2, 14, 1, 14, 1, 1, 62, 2, 238, 7, 1, 41, 1, 1, 2, 1, 1, 4, 25, 1, 4, 3, 4, 30, 4, 1, 900, 3, 2, 8, 1, 1, 3, 1, 182]),
                 np.array([14, 2, 3, 1, 1, 1, 8, 1, 1, 1, 2, 141, 1, 7, 5, 1, 37, 1, 4, 2, 1, 20, 1, 3, 2, 1, 2, 544, 3, 17, 1, 10, 1, 1, 3, 33, 3, 1, 1, 678]),
                 np.array([1, 14, 4, 9, 1, 2, 6, 1, 1, 52, 1, 1, 1, 4, 1, 23, 3, 1, 9, 1, 5, 1, 179, 5, 29, 48, 2, 1, 1, 1, 173, 2, 1, 8, 2, 1, 535]),
                 np.array([1, 2, 14, 14, 1, 3, 1, 1, 1, 1, 1, 9, 1, 1, 1, 1, 2, 1, 2, 3, 1, 1, 2, 1, 1, 36, 3, 1, 64, 1, 78, 2, 1, 115, 2, 4, 1, 3, 1, 216])),
    plx_floor=0.02947, plx_c=-7.2561, plx_gamma=1.3354,
    ebv_sources=('b19', 'default', 'sfd'), ebv_weight=np.array([0.5109, 0.0949, 0.3942]),
    ebv_lnmean=np.array([-3.438 , -0.9264, -3.7802]), ebv_lnsd=np.array([0.4462, 1.0637, 0.2473]),
    theta_surveys=('apogee', 'galah', 'lamost'), theta_weight=np.array([0.055 , 0.0466, 0.8984]),
    theta_lnmean=np.array([[ 4.512 , -2.5761, -3.407 ], [ 4.3512, -1.6503, -2.5005], [ 3.9624, -2.0692, -2.6071]]),
    theta_lncov=np.array([[[0.0382, 0.011 , 0.0168],  [0.011 , 0.0177, 0.0143],  [0.0168, 0.0143, 0.0298]], [[0.0942, 0.0213, 0.0251],  [0.0213, 0.0081, 0.0095],  [0.0251, 0.0095, 0.0112]], [[0.3636, 0.2886, 0.257 ],  [0.2886, 0.2667, 0.2218],  [0.257 , 0.2218, 0.2097]]]),
    source="fit_error_model(read_catalog('green2020_sample_8k.h5'))")
