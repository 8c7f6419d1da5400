"""The parallax-space y₁ residual: an option of training free of the parallax selection bias.

The paper (METHOD §3) puts the parallax into ŷ₁ = m̂_G − μ̂ with μ̂ = 10 − 5 log10 ϖ̂ and
σ_μ = (5/ln 10) σ_ϖ/ϖ̂, only for stars with σ_ϖ/ϖ̂ ≤ 0.2.  Selecting on the *observed* ϖ̂ keeps the
stars whose parallax scattered high (μ̂ biased low), and log ϖ̂ is itself biased at low S/N.

Here the y₁ residual is the parallax residual in magnitude units,

    u = (ϖ̂ − ϖ_model)/(ϖ_lin · ln10/5),   ϖ_model = 10^(2 − μ_model/5),
    μ_model = m̂_G − (A M)_G(θ̂) − E·R_G(θ̂),

with the denominator ϖ_lin fixed during an iteration (like the rest of C_y), and linearized in
μ_model about the current model, μ_lin = μ_model at (network, E) of the last rebuild (ϖ_lin =
10^(2 − μ_lin/5)).  Then u = m̂_G − μ̃ − (A M)_G − E R_G to first order in μ_model − μ_lin, i.e. the
paper's magnitude residual with the pseudo-observation

    μ̃ = μ_lin − (5/ln10)(ϖ̂ − ϖ_lin)/ϖ_lin,   σ_μ̃ = (5/ln10) σ_ϖ/ϖ_lin     (:func:`pseudo_distance_modulus`)

(the first-order expansion of 10 − 5 log10 ϖ about ϖ_lin, evaluated at ϖ̂).  μ̃ is linear in ϖ̂, so
E[μ̃] is the linearization of the true μ about μ_lin, whatever ϖ̂'s S/N (negative ϖ̂ included), and
its error σ_μ̃ does not depend on ϖ̂, so no star is selected on its observed parallax.  At μ_lin =
μ̂ it *is* the paper's (μ̂, σ_μ).  The rest of training (the loss, C_y, the reddening update of
METHOD §4, the outlier cut) is unchanged and consistent: all of it sees (μ̃, σ_μ̃) instead of
(μ̂, σ_μ), rebuilt after every iteration (a Gauss–Newton step per iteration).  Iteration 0 (no
model yet) uses the paper's (μ̂, σ_μ) with the same 0.2 cut.

What remains of bias is second order: with μ_lin − μ_true = δ (the model's per-star error: θ̂, E and
photometric noise), E[μ̃] − μ_true = −(ln10/10)·E[δ²] + O(δ³) (≈ −0.02 mag at δ = 0.3 mag rms).

**Distance prior** (``TrainConfig.distance_prior``).  The parallax residual conditions on m̂_G, but the
likelihood of a star whose θ is uncertain also has the factor p(m_G | θ, E) = p(μ = m_G − M_G(θ) − E R_G
| l, b): the distances' distribution along the sightline (Eq. G5 of :mod:`photoinfer.priors.galactic`;
volume and density).  Without it, integrating or profiling θ_i favours whatever M_G the parallax alone
allows, where at a given m_G the luminous, distant stars are the more numerous (a Malmquist-type bias
of M_G, measured 0.03–0.04 mag; docs/benchmarks.md).  Selection on apparent magnitude cancels from it
(it depends on m_G only).  Within an iteration −2 ln p(μ) enters as its second-order expansion about
μ* = μ_lin (slope g, curvature a ≥ 0), combined with the parallax's pseudo-observation into one
Gaussian pseudo-observation of μ (:func:`with_distance_prior`):

    1/σ_μ'² = 1/σ_μ̃² + a,   μ' = σ_μ'² (μ̃/σ_μ̃² + a μ* − g/2)                   (Eq. P1)

which touches −2 ln [N(μ̃; μ, σ_μ̃) p(μ)] at μ* in value (up to a constant) and slope, so a fixed point
of the iterations is a stationary point of the likelihood with the prior.

The factor makes each star's θ prior p(θ | m_G) ∝ p(θ) p(μ = m_G − M_G(θ) − E R_G | l, b), whose
normalization depends on the network:

    Z_i = ∫ p(θ) N(E; E₀, σ²_E₀) p(m̂_G − M_G(θ) − E R_G(θ) | l_i, b_i) dθ dE            (Eq. P2)

and −2 ln of the likelihood conditional on m̂_G (on which the selection of the training stars depends) has
+2 ln Z_i: without it every network that makes the stars more luminous (farther, more volume) scores
better (measured: M_G 0.06 mag too bright, started at the truth).  Z_i is estimated with K fixed draws of
the population mixture p(θ) and 3-point Gauss–Hermite in E (:func:`log_normalizer`).

**The weight in the Laplace term** (``latent_theta="marginal"``).  σ_μ̃ is fixed at μ_lin in W, but the marginal
estimator's ln det H needs the parallax's weight at each star's current μ: :func:`log_det_weight_change` (Eq. P3),
from the per-star :func:`weight_terms`.

**The exact μ integral** (``TrainConfig.parallax_integral="exact"``, instead of Eq. P3).  Even with its weight at the
current μ, the Laplace approximation misses the parallax's skew in μ: ϖ = 10^(2 − μ/5) is convex in μ, so over the
spread v of a star's μ allowed by its other data the expected parallax exceeds ϖ(E μ) by the factor e^(v/2K²), and a
Gaussian about the mode biases M_G faint by up to v/2K (a one-dimensional model, exact integral against Laplace:
+0.014 mag at v = 0.1 mag², S/N 5; +0.023 at v = 0.2; unbiased with the exact integral).  The subgiants, whose M_G is
steep in log g, have the largest v.  The distance prior, expanded to second order with its curvature clipped, has the
same kind of error.  In the whitened residuals r = W(ŷ − f) of the Laplace term, the y₁ row's share of the
information about the star's distance modulus μ_c = μ' + vᵀr/κ (v = W e₁, κ = vᵀv, μ' the pseudo-observation of
Eq. P1 with variance s = 1.001 σ'² in C_y) separates exactly:

    H_rest = H − κ w wᵀ = (P J_z)ᵀ(P J_z) + Λ,  w = J_zᵀv/κ,  P = I − vvᵀ/κ;   μ_c ~ N(m_r, v_r) from the rest:
    v_r = wᵀ H_rest⁻¹ w,
    m_r = μ_c − wᵀ H_rest⁻¹ g_rest (μ_c at the rest's mode, g_rest its objective's ½ gradient at z; where z is the mode
    of the whole, m_r = μ_c + v_r κ (μ_c − μ')),   and the true μ ~ N(m_r, V), V = v_r + τ², τ² = 1/κ − s (photometry)

so the Gaussian factor's integral is replaced by the exact one,

    D_μ = −2 ln ∫ N(u; m_r, V) e^{−λ(u)/2} du + 2 ln ∫ N(u; m_r, V) e^{−λ_G(u)/2} du                 (Eq. P4)
    λ(u) = ((ϖ̂ − 10^(2 − u/5))/σ_ϖ)² − 2 ln p(u | l, b),   λ_G(u) = (u − μ')²/s + λ(μ_lin) − (μ_lin − μ')²/s

the first by 16-point Gauss–Hermite about its own mode (found by Newton steps from μ_c), the second in closed form
(:func:`integral_correction`, per-star constants :func:`integral_terms`), added to the star's Laplace term.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import linalg as la
from ..batching import map_batched
from ..likelihood import LN10, StarData
from ..model import network

__all__ = ["RESIDUALS", "pseudo_distance_modulus", "model_distance_modulus", "ParallaxInputs", "linearized_data",
           "distance_prior_terms", "with_distance_prior", "Normalizer", "reference_band", "log_normalizer", "normalizer_surrogate",
           "weight_terms", "log_det_weight_change", "INTEGRALS", "integral_terms", "integral_correction"]

#: Values of ``TrainConfig.parallax_residual``.
RESIDUALS = ("magnitude", "parallax")
#: Values of ``TrainConfig.parallax_integral``: the parallax and distance prior in the marginal's Laplace term with the
#: weight at the current μ (Eq. P3), or integrated exactly over μ (Eq. P4).
INTEGRALS = ("laplace", "exact")
K = 5.0 / LN10


def pseudo_distance_modulus(parallax, parallax_err, mu_lin):
    """μ̃ and σ_μ̃ [mag] of the parallax residual linearized about μ_lin (module docstring).

    Parameters
    ----------
    parallax, parallax_err : (N,) [mas] (any sign; NaN where absent)
    mu_lin : (N,) [mag] the current model's distance modulus of each star

    Returns
    -------
    mu_tilde, sigma_mu_tilde : (N,) [mag] (NaN where parallax or mu_lin is not finite)
    """
    parallax, parallax_err, mu_lin = (np.asarray(a, np.float64) for a in (parallax, parallax_err, mu_lin))
    plx_lin = 10.0 ** (2.0 - mu_lin / 5.0)
    return mu_lin - K * (parallax - plx_lin) / plx_lin, K * parallax_err / plx_lin


@jax.jit
def _model_y1(params, med, std, theta, E):
    return jax.vmap(lambda t, e: network.predict_y(params, med, std, t, e)[0])(theta, E)


def model_distance_modulus(params, theta_med, theta_std, mag_ref, theta, E, batch_size: int = 65536):
    """μ_model = m̂_G − (A M)_G(θ̂) − E R_G(θ̂) [mag], (N,).

    Parameters
    ----------
    mag_ref : (N,) observed reference-band magnitude; theta : (N, 3); E : (N,)
    """
    y1 = map_batched(lambda a: _model_y1(params, theta_med, theta_std, *a),
                     (jnp.asarray(np.nan_to_num(theta), jnp.float32), jnp.asarray(E, jnp.float32)), batch_size)
    return np.asarray(mag_ref, np.float64) - np.asarray(y1, np.float64)


class ParallaxInputs:
    """What the parallax residual needs of a catalog: m̂_G, ϖ̂, σ_ϖ, (l, b) and which stars can use them.

    ``usable``: the reference band is observed and ϖ̂, σ_ϖ > 0 are finite (any S/N, any sign).
    """

    def __init__(self, cat):
        self.mag_ref = np.asarray(cat.mag[:, 0], np.float64)
        self.parallax = np.asarray(cat.parallax, np.float64)
        self.parallax_err = np.asarray(cat.parallax_err, np.float64)
        err = np.asarray(cat.mag_err[:, 0], np.float64)
        self.l, self.b = np.asarray(cat.l, np.float64), np.asarray(cat.b, np.float64)
        with np.errstate(invalid="ignore"):
            self.usable = (np.isfinite(self.mag_ref) & np.isfinite(err) & (err > 0) & np.isfinite(self.parallax)
                           & np.isfinite(self.parallax_err) & (self.parallax_err > 0))


@jax.jit
def _prior_slope_curvature(mu, l, b, params):
    from ..priors.galactic import log_prior_mu
    f = lambda m, ll, bb: -2.0 * log_prior_mu(m, ll, bb, params)  # noqa: E731
    g = jax.vmap(jax.grad(f))(mu, l, b)
    a = jax.vmap(jax.grad(jax.grad(f)))(mu, l, b)
    return g, a


def distance_prior_terms(mu, l, b, prior="bayestar", batch_size: int = 65536):
    """Slope g and curvature a = max(∂², 0) of −2 ln p(μ | l, b) at ``mu`` (Eq. P1), (N,) each.

    Parameters
    ----------
    mu : (N,) [mag]; l, b : (N,) [deg]
    prior : the Galactic model's name or :class:`~photoinfer.priors.galactic.GalacticParams`

    Returns
    -------
    g [1/mag], a [1/mag²] : (N,) float64, 0 where μ, l or b is not finite (no prior for that star)
    """
    from ..priors.galactic import galactic_params
    params = galactic_params(prior)
    mu, l, b = (np.asarray(v, np.float64) for v in (mu, l, b))
    ok = np.isfinite(mu) & np.isfinite(l) & np.isfinite(b)
    f32 = lambda v: jnp.asarray(np.where(ok, v, 0.0), jnp.float32)  # noqa: E731
    g, a = map_batched(lambda t: _prior_slope_curvature(*t, params), (f32(mu), f32(l), f32(b)), batch_size)
    g, a = np.asarray(g, np.float64), np.maximum(np.asarray(a, np.float64), 0.0)
    return np.where(ok, g, 0.0), np.where(ok, a, 0.0)


def with_distance_prior(mu_tilde, sigma, mu_star, g, a):
    """The parallax pseudo-observation (μ̃, σ_μ̃) combined with the distance prior's expansion (g, a) at
    μ* (Eq. P1): (μ', σ_μ') [mag], shapes of the inputs."""
    prec = 1.0 / np.asarray(sigma, np.float64) ** 2 + a
    return (mu_tilde / sigma ** 2 + a * mu_star - 0.5 * g) / prec, 1.0 / np.sqrt(prec)


_GH_NODES = np.array([-np.sqrt(3.0), 0.0, np.sqrt(3.0)])
_GH_LOGW = np.log([1 / 6, 2 / 3, 1 / 6])


class Normalizer(NamedTuple):
    """What Σ_i 2 ln Z_i of Eq. P2 is summed from: ``draws`` (K, 3) standardized draws of the population p(θ),
    the ``galactic`` model (:class:`~photoinfer.priors.galactic.GalacticParams`), the m stars' ``mag_ref``
    (m̂_G), ``E0``, ``sigma_E0``, ``l``, ``b`` (m,) each, all finite, and the ``weight`` (the stars they stand
    for / m) that scales their sum to all."""

    draws: jnp.ndarray
    galactic: object
    mag_ref: np.ndarray
    E0: np.ndarray
    sigma_E0: np.ndarray
    l: np.ndarray
    b: np.ndarray
    weight: float

    def stars(self):
        """The per-star arrays (mag_ref, E0, sigma_E0, l, b), float32, in :func:`log_normalizer`'s order."""
        return [jnp.asarray(a, jnp.float32) for a in (self.mag_ref, self.E0, self.sigma_E0, self.l, self.b)]


def reference_band(params, xs):
    """The network's M_G and R_G (K,) at standardized θ ``xs`` (K, 3): the components of y₁ = m_G."""
    return (network.colour_basis_absolute(params, xs)[:, 0],
            network.to_colour_basis(network.extinction_vector(params, xs))[:, 0])


def log_normalizer(params, xs, mag_ref, E0, sigma_E0, l, b, galactic):
    """ln Z_i of Eq. P2 (up to a constant), (n,).

    Parameters
    ----------
    params : network parameters; xs : (K, 3) standardized draws of the population p(θ)
    mag_ref : (n,) m̂_G; E0, sigma_E0 : (n,) reddening prior; l, b : (n,) [deg] (finite)
    galactic : :class:`~photoinfer.priors.galactic.GalacticParams`
    """
    return _log_normalizer_at(*reference_band(params, xs), mag_ref, E0, sigma_E0, l, b, galactic)


def _log_normalizer_at(MG, RG, mag_ref, E0, sigma_E0, l, b, galactic):
    """:func:`log_normalizer` given the network's M_G and R_G (K,) at the population draws."""
    from ..priors.galactic import log_prior_mu
    E = E0[:, None] + sigma_E0[:, None] * jnp.asarray(_GH_NODES, E0.dtype)
    mu = mag_ref[:, None, None] - MG[None, :, None] - E[:, None, :] * RG[None, :, None]
    lp = log_prior_mu(mu, l[:, None, None], b[:, None, None], galactic) + jnp.asarray(_GH_LOGW, mu.dtype)
    return jax.scipy.special.logsumexp(lp, axis=(1, 2)) - jnp.log(float(MG.shape[0]))


@jax.jit
def _normalizer_slopes(MG, RG, mag_ref, E0, sigma_E0, l, b, galactic):
    f = lambda m, r: 2.0 * jnp.sum(_log_normalizer_at(m, r, mag_ref, E0, sigma_E0, l, b, galactic))  # noqa: E731
    return jax.grad(f, argnums=(0, 1))(MG, RG)


def normalizer_surrogate(params, norm: Normalizer, batch_size: int = 4096):
    """The first-order expansion of Σ_i 2 ln Z_i (Eq. P2) over ``norm``'s stars (unweighted) in the network's M_G
    and R_G at its draws: slopes c, d (K,) and the values M0, R0 (K,) they are taken at (float32 arrays), for
    :func:`~photoinfer.train.profile.profile_batch_loss` (the Adam epochs; the Gauss–Newton steps use Z itself)."""
    MG, RG = reference_band(params, norm.draws)
    arrs = norm.stars()
    c, d = jnp.zeros_like(MG), jnp.zeros_like(RG)
    for s in range(0, len(arrs[0]), batch_size):  # (the last batch is shorter: one more compilation at most)
        gc, gd = _normalizer_slopes(MG, RG, *(a[s:s + batch_size] for a in arrs), norm.galactic)
        c, d = c + gc, d + gd
    return c, d, MG, RG


def weight_terms(data: StarData, px: ParallaxInputs, mu_lin) -> np.ndarray:
    """What :func:`log_det_weight_change` needs of each star (Eq. P3), (N, 3) float32: c = m̂_G − μ_lin (the
    network's y₁ at the linearization), σ_μ̃ at μ_lin, and the distance prior's curvature a (0 without one); all
    0 where ``data`` (of :func:`linearized_data`) has no y₁ (then the weight is left as it is)."""
    _, sig = pseudo_distance_modulus(px.parallax, px.parallax_err, mu_lin)
    obs1 = np.asarray(data.y_obs)[:, 0] & (np.asarray(data.sigma_mu) > 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        a = np.maximum(1.0 / np.asarray(data.sigma_mu, np.float64) ** 2 - 1.0 / sig ** 2, 0.0)
        out = np.column_stack([px.mag_ref - np.asarray(mu_lin, np.float64), sig, a])
    ok = obs1 & np.isfinite(out).all(axis=1) & (sig > 0)
    return np.where(ok[:, None], out, 0.0).astype(np.float32)


def log_det_weight_change(f1, Jz, v, solve, terms):
    """ln det H(s(μ)) − ln det H(s_lin): the Laplace term of a star with its parallax weight at its current μ (Eq. P3).

    The pseudo-observation's variance σ_μ̃² = (K σ_ϖ/ϖ)² is fixed at μ_lin in C_y (so in W), which gives the
    exact parallax likelihood's value and slope at μ_lin; but the width of the likelihood in μ grows with distance,
    and the Laplace term ln det H of the marginal estimator has that width at the star's *current* μ = m̂_G − f₁
    (f₁ = M_G + E R_G at its latent θ, E): frozen, −2 ln of the marginal misses +(2/K)·f·M_G (f the parallax's
    share of the precision along μ), which biases M_G faint by ≈ f σ_μ̃²/K.  With s = (σ_μ̃(μ)⁻² + a)⁻¹ the y₁
    variance, σ_μ̃(μ) = σ_μ̃(μ_lin)·10^((μ − μ_lin)/5), Δ = 1.001 (s − s_lin) (the released stabilization scales the
    diagonal of C_y by 1.001), C_y(s)⁻¹ = Q − Δ Qe₁e₁ᵀQ/(1 + Δ q₁₁) (Sherman–Morrison, Q = WᵀW), and by the matrix
    determinant lemma

        ln det H(s) − ln det H(s_lin) = ln(1 − Δ uᵀH⁻¹u/(1 + Δ vᵀv)),   v = W e₁,  u = J_zᵀ v     (Eq. P3)

    (the distance prior's curvature a stays at μ_lin; μ − μ_lin is clipped to ±5 mag).

    Parameters
    ----------
    f1 : () the network's y₁ at the latent; Jz : (B, 4) W ∂f/∂z; v : (B,) W e₁; solve : u ↦ H⁻¹u
    terms : (3,) a row of :func:`weight_terms`
    """
    c, sig_lin, a = terms[0], terms[1], terms[2]
    has = sig_lin > 0
    sl = jnp.where(has, sig_lin, 1.0)
    sig = sl * 10.0 ** (jnp.clip(c - f1, -5.0, 5.0) / 5.0)
    d = 1.001 * (1.0 / (1.0 / sig ** 2 + a) - 1.0 / (1.0 / sl ** 2 + a))
    u = Jz.T @ v
    k = d / (1.0 + d * (v @ v))
    return jnp.where(has, jnp.log1p(-k * (u @ solve(u))), 0.0)


def _neg2_log_factor(u, plx, plx_err, l, b, galactic):
    """λ(u) of Eq. P4: −2 ln of the parallax's likelihood and the distance prior at distance modulus u [mag]."""
    lam = ((plx - 10.0 ** (2.0 - u / 5.0)) / plx_err) ** 2
    if galactic is None:
        return lam
    from ..priors.galactic import log_prior_mu
    return lam - 2.0 * log_prior_mu(u, l, b, galactic)


_factor_jit = jax.jit(_neg2_log_factor)


def integral_terms(data: StarData, px: ParallaxInputs, mu_lin, galactic=None, batch_size: int = 65536) -> np.ndarray:
    """Per-star constants of :func:`integral_correction` (Eq. P4), (N, 8) float32: μ', s, μ_lin, ϖ̂, σ_ϖ, l, b and
    λ(μ_lin) − (μ_lin − μ')²/s; all 0 (no correction) where ``data`` (of :func:`linearized_data`) has no y₁.

    Parameters
    ----------
    data : the linearized StarData (y₁ = m̂_G − μ', σ_μ = σ'); px : :class:`ParallaxInputs`; mu_lin : (N,) [mag]
    galactic : :class:`~photoinfer.priors.galactic.GalacticParams` or None (no distance prior)
    """
    obs1 = np.asarray(data.y_obs)[:, 0] & (np.asarray(data.sigma_mu) > 0)
    mu_p = px.mag_ref - np.asarray(data.y_hat, np.float64)[:, 0]
    s = 1.001 * np.asarray(data.sigma_mu, np.float64) ** 2
    cols = np.column_stack([mu_p, s, np.asarray(mu_lin, np.float64), px.parallax, px.parallax_err, px.l, px.b])
    with np.errstate(invalid="ignore"):
        ok = obs1 & np.isfinite(cols).all(axis=1) & (s > 0)
    cols = np.where(ok[:, None], cols, 1.0)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    lam = np.asarray(map_batched(lambda t: _factor_jit(*t, galactic), tuple(f32(cols[:, j]) for j in (2, 3, 4, 5, 6)),
                                 batch_size), np.float64)
    out = np.column_stack([cols, lam - (cols[:, 2] - cols[:, 0]) ** 2 / cols[:, 1]])
    ok &= np.isfinite(out).all(axis=1)
    return np.where(ok[:, None], out, 0.0).astype(np.float32)


_P4_T, _P4_W = np.polynomial.hermite_e.hermegauss(16)
_P4_LOGW = np.log(_P4_W) + 0.5 * _P4_T ** 2


def integral_correction(r, Jz, v, Lam, dz, terms, galactic=None, newton_steps: int = 4):
    """D_μ of Eq. P4 for one star: the exact integral over its distance modulus of the parallax's likelihood and the
    distance prior, minus the Gaussian factor's integral that its Laplace term holds.

    Parameters
    ----------
    r : (B,) whitened residuals W(ŷ − f) at the latent; Jz : (B, 4) W ∂f/∂z; v : (B,) W e₁
    Lam : (4, 4) the prior's part Λ of H = J_zᵀJ_z + Λ; dz : (4,) z − z̃, the latent's offset from the prior's centre
    terms : (8,) a row of :func:`integral_terms` (zeros: no correction)
    galactic : :class:`~photoinfer.priors.galactic.GalacticParams` or None

    Returns
    -------
    () [−2 ln units]
    """
    mu_p, s, mu_lin, plx, plx_err, l, b, c = (terms[i] for i in range(8))
    kap = v @ v
    has = (s > 0) & (kap > 0)  # (κ = 0: y₁ unobserved, W e₁ = 0; every masked value kept finite for the gradient)
    s, plx_err, kap = (jnp.where(has, a, 1.0) for a in (s, plx_err, kap))
    w = Jz.T @ v / kap
    PJ = Jz - jnp.outer(v, w)  # (I − vvᵀ/κ) J_z: the rows' information without y₁'s (no cancellation in H − κwwᵀ)
    H_rest = PJ.T @ PJ + Lam
    L = la.cholesky(H_rest)
    v_r = w @ la.cho_solve(L, w)
    V = jnp.where(has, jnp.maximum(v_r + jnp.maximum(1.0 / kap - s, 0.0), 1e-8), 1.0)
    mu_c = mu_p + (v @ r) / kap
    m_r = mu_c - w @ la.cho_solve(L, PJ.T @ r - Lam @ dz)  # μ_c at the rest's mode (a Gauss–Newton step from z)
    gauss = (m_r - mu_p) ** 2 / (V + s) + jnp.log((V + s) / s) + c

    def h(x):  # (distance moduli kept within [−5, 35] mag: finite far outside any star's posterior)
        return (x - m_r) ** 2 / V + _neg2_log_factor(jnp.clip(x, -5.0, 35.0), plx, plx_err, l, b, galactic)
    dh, d2h = jax.grad(h), jax.grad(jax.grad(h))

    def newton(x, _):  # (steps of at most 2 mag)
        return x - jnp.clip(dh(x) / jnp.maximum(d2h(x), 1.0 / V), -2.0, 2.0), None
    x0 = jax.lax.stop_gradient(jax.lax.scan(newton, jax.lax.stop_gradient(mu_c), None, length=newton_steps)[0])
    sd = jax.lax.stop_gradient(jnp.minimum(jnp.sqrt(2.0 / jnp.maximum(d2h(x0), 1.0 / V)), 5.0))
    hk = jax.vmap(h)(x0 + sd * jnp.asarray(_P4_T, r.dtype))
    exact = (-2.0 * jnp.log(sd) + jnp.log(2.0 * jnp.pi * V)
             - 2.0 * jax.scipy.special.logsumexp(jnp.asarray(_P4_LOGW, r.dtype) - 0.5 * hk))
    return jnp.where(has, exact - gauss, 0.0)


def _with_y1(data: StarData, y1, sigma_mu, obs1) -> StarData:
    y_obs = np.asarray(data.y_obs).copy()
    y_obs[:, 0] = obs1
    y_hat = np.asarray(data.y_hat).copy()
    y_hat[:, 0] = np.where(obs1, y1, 0.0)
    return data._replace(y_hat=jnp.asarray(y_hat, jnp.float32), y_obs=jnp.asarray(y_obs),
                         sigma_mu=jnp.asarray(np.where(obs1, sigma_mu, 0.0), jnp.float32))


def linearized_data(data: StarData, px: ParallaxInputs, mu_lin, prior=None) -> StarData:
    """``data`` with y₁ = m̂_G − μ̃, σ_μ = σ_μ̃ (linearized about ``mu_lin``) for every star with a parallax;
    with a Galactic ``prior`` (name), (μ', σ_μ') of Eq. P1 instead.  A pseudo-observation beyond 10⁶ mag (value or
    error: a parallax error many orders above the model's parallax, as at the faint end of a mock without
    magnitude limits) carries no weight and would overflow float32: that star's y₁ is left unobserved."""
    mu_t, sig = pseudo_distance_modulus(px.parallax, px.parallax_err, mu_lin)
    if prior is not None:
        g, a = distance_prior_terms(mu_lin, px.l, px.b, prior)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            mu_t, sig = with_distance_prior(mu_t, sig, np.asarray(mu_lin, np.float64), g, a)
    with np.errstate(invalid="ignore"):
        obs1 = px.usable & (np.abs(mu_t) < 1e6) & (sig > 0) & (sig < 1e6)
    return _with_y1(data, px.mag_ref - np.nan_to_num(mu_t), np.nan_to_num(sig), obs1)

