"""Per-star latent θ and E (an option of training): the errors-in-variables fix.

The paper (METHOD §3, §5) regresses ŷ on the *measured* θ̂ and accounts for the θ errors only in
the weights (the J C_θ Jᵀ term of C_y).  A least-squares fit on a noisy regressor learns
E[M(θ) | θ̂], not M(θ): where the θ density is steep (the main sequence is ≈ 0.2 dex wide in logg
and σ_logg ≈ 0.13; dM_G/dlogg ≈ 2.5) the learned M_G is flattened towards the population's ridge.

With ``TrainConfig.latent_theta`` every star gets its own θ and E, fitted with the network: training
minimizes the joint objective

    Σ_i ‖W_i (ŷ_i − A M(θ_i) − E_i A R(θ_i))‖² + (θ_i − θ̂_i)ᵀ C_θ,i⁻¹ (θ_i − θ̂_i) + (E_i − E₀_i)²/σ²_E₀,i

over the network and every (θ_i, E_i), W_i the whitening factor of the photometric and parallax
covariance alone (A diag(σ_m²) Aᵀ + σ_μ² e₁e₁ᵀ, with the released diagonal stabilization): θ and E
are parameters here, so the J C_θ Jᵀ and σ_E² (AR)(AR)ᵀ terms that marginalize them are not in C_y.
It is block-coordinate descent on one objective: the epochs fit the network at fixed (θ_i, E_i),
the rebuild after them (:func:`star_joint_fit`) moves each star's (θ_i, E_i) to its minimum at the
fixed network (Levenberg–Marquardt, a few steps warm-started from the last iteration).  For a
linear model this is Deming regression, the consistent estimator of a line with errors in both
variables (the ratio of the error variances known); the paper's regression on θ̂ is the
attenuated one.  The photometry (colours fix Teff, the parallax fixes M_G and so logg on the main
sequence) pulls each θ_i off θ̂ towards the truth.

After the fit: σ²_E is the (E, E) element of the inverse Gauss–Newton Hessian (θ marginalized, prior
included), and the outlier cut's χ² is ‖W r‖² + (θ − θ̂)ᵀ C_θ⁻¹ (θ − θ̂) at the optimum over
n_obs − 1 (for a linear model, exactly the paper's rᵀ(C + J C_θ Jᵀ)⁻¹r at the best E).  Iteration 0
is the paper's (θ = θ̂, E = E₀, no J and σ_E terms), which is this objective at the starting point.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import likelihood as lik
from .. import linalg as la
from ..batching import map_batched
from ..model import network
from .population import neg2_log_density, quadratic_majorizer

__all__ = ["photometric_whitening", "photometric_whitening_all", "star_joint_fit", "joint_fit_all"]


def photometric_whitening(s: lik.StarData):
    """W of C = A diag(σ_m²) Aᵀ + σ_μ² e₁e₁ᵀ (stabilized), restricted to the observed components, (B, B)."""
    B = s.y_hat.shape[-1]
    C = lik.covariance_y(s.sigma_m, s.sigma_mu, 0.0, jnp.zeros(B, s.y_hat.dtype), jnp.zeros((B, 3), s.y_hat.dtype),
                         s.theta_cov)
    return lik.whitening_matrix(lik.stabilize_diagonal(C), s.y_obs)


def star_joint_fit(params, theta_med, theta_std, s: lik.StarData, theta, E, n_steps: int = 5, damping: float = 1e-3,
                   prior=None, s_cut: lik.StarData | None = None):
    """Minimize one star's term of the joint objective (module docstring) over (θ, E) at a fixed network.

    Levenberg–Marquardt in standardized θ: ``n_steps`` steps from (θ, E), each accepted only if it
    lowers the objective (the damping grows ×10 on a rejected step, shrinks ÷10 on an accepted one).

    Parameters
    ----------
    s : StarData of one star (θ̂ = ``s.theta`` is the measurement, ``s.theta_cov`` its covariance)
    theta : (3,) starting θ [K, dex, dex]; E : () starting E
    prior : PopulationPrior, optional
        The population density of standardized θ (:mod:`photoinfer.train.population`): −2 ln p(x) is
        added to the objective, in the steps through its quadratic majorizer (Eq. X3).
    s_cut : StarData, optional
        The same star with the y₁ the cut χ² is to see (with a distance prior: the parallax's pseudo-observation
        alone; the prior's expansion is no misfit of the data); default ``s``.

    Returns
    -------
    theta : (3,), E, var_E : (), W : (B, B) the photometric whitening factor, cut χ² : (), n_obs : ()
    """
    W = photometric_whitening(s)
    Lt = la.inverse_lower(la.cholesky(s.theta_cov))  # C_θ⁻¹ = Ltᵀ Lt

    def model_y(z):
        return network.model_y(params, z[:3], z[3])

    def resid(z):
        th = theta_med + theta_std * z[:3]
        return jnp.concatenate([W @ ((s.y_hat - model_y(z)) * s.y_obs), Lt @ (th - s.theta),
                                ((z[3] - s.E0) / s.sigma_E0)[None]])

    def cost(z):
        r = resid(z)
        return r @ r + (0.0 if prior is None else neg2_log_density(prior, z[:3]))

    def normal_equations(z):
        r = resid(z)
        J = jax.jacfwd(resid)(z)
        H, g = J.T @ J, J.T @ r
        if prior is not None:
            Lp, h = quadratic_majorizer(prior, z[:3])
            H, g = H.at[:3, :3].add(Lp), g.at[:3].add(Lp @ z[:3] - h)
        return H, g

    def step(carry, _):
        z, c, lam = carry
        H, g = normal_equations(z)
        dz = -la.solve_spd(H + lam * jnp.diag(jnp.diag(H)) + 1e-9 * jnp.eye(4, dtype=H.dtype), g)
        z2 = z + dz
        c2 = cost(z2)
        ok = jnp.isfinite(c2) & (c2 < c)
        return (jnp.where(ok, z2, z), jnp.where(ok, c2, c), jnp.where(ok, lam / 10, lam * 10)), None

    z0 = jnp.concatenate([network.standardize(theta, theta_med, theta_std), jnp.reshape(E, (1,))])
    (z, c, _), _ = jax.lax.scan(step, (z0, cost(z0), jnp.asarray(damping, z0.dtype)), None, length=n_steps)
    var_E = la.inv_spd(normal_equations(z)[0])[3, 3]
    r = resid(z)
    n_y = s.y_hat.shape[-1]
    if s_cut is not None:
        r = jnp.concatenate([photometric_whitening(s_cut) @ ((s_cut.y_hat - model_y(z)) * s_cut.y_obs), r[n_y:]])
    chi2 = r[:n_y + 3] @ r[:n_y + 3]
    return theta_med + theta_std * z[:3], z[3], var_E, W, chi2, jnp.sum(s.y_obs)


def _joint_batch(n_steps):
    @jax.jit
    def run(params, med, std, s, theta, E, prior, s_cut):
        return jax.vmap(lambda si, t, e, sc: star_joint_fit(params, med, std, si, t, e, n_steps, prior=prior, s_cut=sc),
                        in_axes=(0, 0, 0, None if s_cut is None else 0))(s, theta, E, s_cut)
    return run


_BATCH = {}


def joint_fit_all(params, theta_med, theta_std, data: lik.StarData, theta, E, n_steps: int = 5,
                  batch_size: int = 8192, prior=None, cut_data: lik.StarData | None = None):
    """:func:`star_joint_fit` for every star, warm-started at (``theta``, ``E``), with the population ``prior``
    of θ if given, the reduced χ² from ``cut_data`` if given (``s_cut``).

    Returns
    -------
    theta : (N, 3) float64; E, var_E : (N,) float32; W : (N, B, B) float32 (non-finite set to 0);
    reduced_chi2 : (N,) float64 (cut χ²/(n_obs − 1), NaN where undefined); n_obs : (N,) int
    """
    fn = _BATCH.setdefault(n_steps, _joint_batch(n_steps))
    th, E, var, W, c2, n_obs = map_batched(  # (cut_data None: a pytree without leaves, passed through as None)
        lambda a: fn(params, theta_med, theta_std, *a[:3], prior, a[3]),
        (data, jnp.asarray(np.nan_to_num(theta), jnp.float32), jnp.asarray(np.nan_to_num(E), jnp.float32), cut_data),
        batch_size)
    with np.errstate(invalid="ignore", divide="ignore"):
        red = np.where(n_obs > 1, c2.astype(np.float64) / (n_obs - 1), np.nan)
    return (np.asarray(th, np.float64), np.asarray(E, np.float32), np.asarray(var, np.float32),
            np.where(np.isfinite(W), W, 0.0).astype(np.float32), red, n_obs)


@jax.jit
def _pw_batch(s):
    return jax.vmap(photometric_whitening)(s)


def photometric_whitening_all(data: lik.StarData, batch_size: int = 8192) -> np.ndarray:
    """:func:`photometric_whitening` for every star, (N, B, B) float32 (non-finite set to 0)."""
    W = map_batched(_pw_batch, data, batch_size)
    return np.where(np.isfinite(W), W, 0.0).astype(np.float32)
