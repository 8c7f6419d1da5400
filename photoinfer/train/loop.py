"""The iterative training of METHOD §5 with optax: epochs of Adam steps between per-iteration rebuilds.

:func:`train` is pure apart from its ``callback``: it reads a :class:`~photoinfer.catalog.Catalog`
and returns a :class:`~photoinfer.model.StellarModel` and a :class:`History`; it writes no files.
Progress bars and checkpoints live in the callback (see :mod:`photoinfer.commands.train`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import __version__
from ..catalog import TRAINING_UNUSABLE, Catalog
from ..evaluate import star_data
from ..model import StellarModel, network
from . import schedule
from .rebuild import rebuild_all, whitening_all

#: Values of ``TrainConfig.latent_theta``.
LATENT = ("none", "fit", "profile", "marginal")

__all__ = ["LATENT", "TrainConfig", "TrainState", "History", "train", "make_optimizer", "batch_loss"]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train` (defaults: METHOD §5, the paper's schedule).

    Attributes
    ----------
    iterations, epochs : int
        Outer iterations (rebuilds) and epochs per iteration (20 × 25).
    batch_size : int
        Stars per Adam step (1024).
    seed : int
        Seeds the split, the initial weights and the shuffles.
    split_seed : int or None
        Seeds the split alone (None: ``seed``): the same held-out stars for runs that differ in ``seed``.
    learning_rate, lr_decay : float
        Learning rate of iteration k: learning_rate·exp(−lr_decay·k).
    split : tuple of 3 floats
        Train / validation / test fractions (0.7, 0.2, 0.1).
    max_sigma_E0_first : float
        Iteration 0 leaves out stars with σ_E₀ above this (0.2).
    cut_start, cut_end, cut_k_end : float, float, int
        Outlier-cut threshold on the reduced χ² (100 → 5 geometrically by iteration 14).
    n_hidden, l2_hidden, l1_extinction : int, float, float
        Network width and regularization (32, 1e-4, 1e-2; METHOD §2).
    rebuild_batch_size : int
        Stars per batch of the vectorized rebuild.
    validity : bool
        Compute the region-of-validity density of the training stars at the end.
    init_output_bias : bool
        Fresh weights only: start the output bias of A·M at the training stars' median ŷ
        (per component), so that the first steps fit shapes rather than offsets.  With 10⁶ stars
        it makes no difference; with a few thousand (few steps per epoch) it avoids an iteration
        0 that ends far from the data.
    max_cut_fraction : float
        Safety of the outlier cut: if the threshold would leave out more than this fraction of
        the usable training stars (a model still far from the data), the threshold is raised to
        that quantile of the reduced χ² and the iteration record says so (``threshold_raised``).
    parallax_residual : {"magnitude", "parallax"}
        How the parallax enters y₁.  ``"magnitude"`` (the paper, METHOD §3): μ̂ = 10 − 5 log10 ϖ̂
        for stars with σ_ϖ/ϖ̂ ≤ 0.2.  ``"parallax"``: from iteration 1 on, every star with a
        parallax (any S/N, negative included) enters through the parallax residual
        (ϖ̂ − ϖ_model)/(ϖ_lin·ln10/5), linearized about the current model after every iteration
        (:mod:`photoinfer.train.parallax`); free of the selection on ϖ̂ and of the log bias.
    distance_prior : {"none", "bayestar", "brutus"}
        With ``parallax_residual="parallax"`` and ``latent_theta="marginal"``: the distribution of
        distances along each star's sightline (that Galactic model, :mod:`photoinfer.priors.galactic`) as a factor of its
        likelihood, p(μ = m̂_G − M_G(θ) − E R_G | l, b) (Eq. P1 of :mod:`photoinfer.train.parallax`):
        removes the Malmquist-type bias of M_G where θ is uncertain, with the normalization of
        p(θ | m_G) (Eq. P2) in the objective, estimated with ``normalizer_draws`` fixed points of the population
        density (2048; stratified and quasi-random, :func:`~photoinfer.train.population.integration_draws`) and
        summed over a seeded subsample of ``normalizer_stars`` training stars
        (8192; scaled to all: Σ ln Z_i is a smooth function of the network).  Stars without (l, b) get none.
    theta_denoise : {"none", "tweedie"}
        What θ the network is fed: the measured θ̂ (``"none"``, the paper) or the posterior mean
        θ̂ + C_θ ∇ ln p(θ̂) by Tweedie's formula, p the KDE of the training stars' θ̂
        (:mod:`photoinfer.train.denoise`): removes the first-order errors-in-variables bias of
        regressing on noisy θ̂.  C_θ in C_y is unchanged.
    scale_step : bool
        After every iteration's epochs, set the overall scale of R (with every E scaled inversely:
        the photometry cannot see it) to its maximum-likelihood value under the reddening priors
        (:mod:`photoinfer.train.scale`); the iteration record gives the factor (``R_scale``).
        Off: the paper's alternation alone, along which the scale drifts.
    latent_theta : {"none", "fit", "profile", "marginal"}
        ``"none"``: the paper (the network is fed θ̂; θ errors only weight C_y).  Otherwise every
        star's θ and E are fitted with the network (:mod:`photoinfer.train.latent`): after every
        iteration's epochs each (θ_i, E_i) moves to the minimum of its term of the joint objective
        (``latent_steps`` Levenberg–Marquardt steps) and the network is fed the fitted θ_i with the
        photometric C_y.  ``"fit"``: the epochs fit the network at fixed (θ_i, E_i);
        ``"profile"``: each step's loss is the joint objective with (θ_i, E_i) profiled out to
        second order about the fitted values, the network's Jacobian live
        (:mod:`photoinfer.train.profile`).  ``"marginal"``: the profiled loss with the population
        density p(θ) of the training stars (deconvolved from their θ̂ and C_θ, fitted once before
        iteration 0; :mod:`photoinfer.train.population`) as every θ_i's prior and ln det H added:
        the Laplace approximation of the marginal likelihood, θ_i and E_i integrated, not profiled
        (consistent in the θ errors where the profile is not; the distances' distribution enters with
        ``distance_prior``, and p(θ) is then fitted to every star with a θ measurement:
        :func:`population_members`).
    latent_steps : int
        Levenberg–Marquardt steps per star and iteration (5).
    gn_steps, gn_curvature : int
        With ``latent_theta="profile"`` or ``"marginal"``, from iteration 1 on: after each iteration's epochs,
        ``gn_steps`` joint Gauss–Newton (Levenberg–Marquardt) steps on the network and the training
        stars' (θ_i, E_i) (:mod:`photoinfer.train.gauss_newton`), the curvature summed over a random
        ``gn_curvature`` of them (0: none; 16384).
    prior_components, prior_stars : int
        ``latent_theta="marginal"``: components of the population mixture of θ (48), and the most members it is
        fitted to (a seeded subsample above that; 60000).  Its fit is shared by every star (one mixture), so its
        error does not average out over the stars: measured, the mixture's EM start alone moves M_G by 0.005 mag
        rms (docs/benchmarks.md, session 12).
    parallax_integral : {"laplace", "exact"}
        ``latent_theta="marginal"`` with the parallax residual: how each star's marginal holds its parallax and
        distance prior — in the Laplace approximation with the parallax's weight at the star's current μ (Eq. P3 of
        :mod:`photoinfer.train.parallax`), or integrated exactly over μ (Eq. P4: the Laplace term's Gaussian factor
        replaced by the exact one; removes the faint bias of M_G that the parallax's skew in μ gives the Laplace
        approximation where a star's θ leaves its μ uncertain, as on the subgiant branch).
    polish_steps, polish_iterations : int
        After the epochs of each of the last ``polish_iterations`` iterations, ``polish_steps``
        full-batch L-BFGS steps on the training loss (:mod:`photoinfer.train.polish`); 0: none.
    """

    iterations: int = 20
    epochs: int = 25
    batch_size: int = 1024
    seed: int = 0
    split_seed: int | None = None
    learning_rate: float = 1e-3
    lr_decay: float = 0.2
    split: tuple = (0.7, 0.2, 0.1)
    max_sigma_E0_first: float = 0.2
    cut_start: float = 100.0
    cut_end: float = 5.0
    cut_k_end: int = 14
    n_hidden: int = 32
    l2_hidden: float = 1e-4
    l1_extinction: float = 1e-2
    rebuild_batch_size: int = 8192
    validity: bool = True
    init_output_bias: bool = True
    max_cut_fraction: float = 0.5
    parallax_residual: str = "magnitude"
    distance_prior: str = "none"
    normalizer_draws: int = 2048
    normalizer_stars: int = 8192
    theta_denoise: str = "none"
    scale_step: bool = False
    latent_theta: str = "none"
    latent_steps: int = 5
    prior_components: int = 48
    prior_stars: int = 60000
    parallax_integral: str = "laplace"
    gn_steps: int = 0
    gn_curvature: int = 16384
    polish_steps: int = 0
    polish_iterations: int = 1

    def __post_init__(self):
        from .denoise import DENOISE
        if self.theta_denoise not in DENOISE:
            raise ValueError(f"TrainConfig.theta_denoise must be one of {DENOISE}, not {self.theta_denoise!r}")
        from .parallax import INTEGRALS, RESIDUALS
        if self.parallax_residual not in RESIDUALS:
            raise ValueError(f"TrainConfig.parallax_residual must be one of {RESIDUALS}, not {self.parallax_residual!r}")
        if self.distance_prior != "none":
            from ..priors.galactic import galactic_params
            galactic_params(self.distance_prior)  # (an unknown name raises, naming the choices)
            if self.parallax_residual != "parallax":
                raise ValueError("TrainConfig.distance_prior needs parallax_residual='parallax' (it enters through "
                                 "the linearized parallax pseudo-observation)")
            if self.latent_theta != "marginal":
                raise ValueError("TrainConfig.distance_prior needs latent_theta='marginal': its normalization (Eq. P2) "
                                 "integrates the population density of θ")
        if not (self.l2_hidden >= 0 and self.l1_extinction >= 0):
            raise ValueError(f"TrainConfig: the regularization must be >= 0, got l2_hidden = {self.l2_hidden}, "
                             f"l1_extinction = {self.l1_extinction}")
        if self.parallax_integral not in INTEGRALS:
            raise ValueError(f"TrainConfig.parallax_integral must be one of {INTEGRALS}, not {self.parallax_integral!r}")
        if self.parallax_integral == "exact" and (self.parallax_residual != "parallax" or self.latent_theta != "marginal"):
            raise ValueError("TrainConfig.parallax_integral='exact' needs parallax_residual='parallax' and "
                             "latent_theta='marginal' (it replaces the Gaussian parallax factor of the marginal's "
                             "Laplace term)")
        if self.latent_theta not in LATENT:
            raise ValueError(f"TrainConfig.latent_theta must be one of {LATENT}, not {self.latent_theta!r}")
        if self.latent_theta != "none" and self.theta_denoise != "none":
            raise ValueError("TrainConfig.latent_theta fits θ per star; it cannot be combined with theta_denoise")
        if self.gn_steps > 0 and self.latent_theta not in ("profile", "marginal"):
            raise ValueError("TrainConfig.gn_steps needs latent_theta='profile' or 'marginal' (the joint steps move "
                             "every star's latent θ and E with the network)")
        if self.polish_steps > 0 and self.latent_theta in ("profile", "marginal"):
            raise ValueError(f"TrainConfig.polish_steps cannot be combined with latent_theta={self.latent_theta!r}: the "
                             "full-batch L-BFGS of the profiled loss hung on 200,000 stars (twice; "
                             "docs/training.md)")
        for name in ("polish_steps", "polish_iterations", "gn_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("iterations", "epochs", "batch_size", "n_hidden", "rebuild_batch_size", "latent_steps",
                     "prior_components", "prior_stars", "normalizer_draws", "normalizer_stars"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["split"] = list(self.split)
        return d

    #: Settings that must agree between a checkpoint and the run resuming it (iterations may grow).
    RESUME_KEYS = ("epochs", "batch_size", "seed", "split_seed", "learning_rate", "lr_decay", "split", "max_sigma_E0_first",
                   "cut_start", "cut_end", "cut_k_end", "n_hidden", "l2_hidden", "l1_extinction",
                   "init_output_bias", "max_cut_fraction", "parallax_residual", "distance_prior", "normalizer_draws",
                   "normalizer_stars", "theta_denoise", "scale_step",
                   "latent_theta", "latent_steps", "prior_components", "prior_stars", "parallax_integral", "gn_steps", "gn_curvature", "polish_steps",
                   "polish_iterations")


@dataclass
class TrainState:
    """Everything needed to continue training after ``iteration`` completed iterations.

    Attributes
    ----------
    iteration : int
        Completed iterations.
    params : dict
        Network parameters.
    opt_state : optax state (Adam with an injected learning rate)
    theta_med, theta_std : (3,) θ normalization
    E, var_E : (N,) the current per-star reddening and its variance (E₀, 0 before iteration 1)
    included : (N,) bool, stars entering the next iteration (train and validation splits)
    rng_state : dict, the shuffle generator's ``bit_generator.state``
    history : dict with lists ``epochs`` and ``iterations`` (JSON-able records)
    mu_lin : (N,) or None, the distance moduli the parallax residual is linearized about
        (``parallax_residual="parallax"`` after iteration 0; None otherwise)
    theta_fit : (N, 3) or None, every star's fitted θ (``latent_theta`` after iteration 0; None otherwise)
    """

    iteration: int
    params: dict
    opt_state: object
    theta_med: np.ndarray
    theta_std: np.ndarray
    E: np.ndarray
    var_E: np.ndarray
    included: np.ndarray
    rng_state: dict
    history: dict = field(default_factory=lambda: {"epochs": [], "iterations": []})
    mu_lin: np.ndarray | None = None
    theta_fit: np.ndarray | None = None


@dataclass
class History:
    """What :func:`train` did.

    Attributes
    ----------
    epochs : list of dict
        Per epoch: ``iteration``, ``epoch``, ``learning_rate``, ``train_loss``, ``val_loss`` (χ²/B
        mean plus regularization, as Keras reports it), ``train_chi2``, ``val_chi2`` (without the
        regularization), ``seconds``.
    iterations : list of dict
        Per iteration: ``n_train``, ``n_val`` (stars trained / validated on), ``threshold`` and
        ``n_cut``, ``frac_cut`` (training stars left out of the next iteration), reddening changes
        ``dE_median_abs``, ``dE_rms``, ``dE_max_abs``, timings ``epochs_seconds``, ``rebuild_seconds``.
    split : (N,) int8, 0 train / 1 validation / 2 test (every catalog star)
    usable : (N,) bool, no :data:`~photoinfer.catalog.TRAINING_UNUSABLE` flag
    included : (N,) bool, stars that passed the last outlier cut
    E, sigma_E : (N,) the last reddening update (NaN for unusable stars)
    reduced_chi2 : (N,) the cut's χ²/(n_obs − 1) after the last iteration
    config : dict; timings : dict
    theta_fit : (N, 3) or None, the fitted θ of every star (``latent_theta``; NaN for unusable stars)
    """

    epochs: list
    iterations: list
    split: np.ndarray
    usable: np.ndarray
    included: np.ndarray
    E: np.ndarray
    sigma_E: np.ndarray
    reduced_chi2: np.ndarray
    config: dict
    timings: dict
    theta_fit: np.ndarray | None = None

    def summary(self) -> dict:
        """JSON-able summary (no per-star arrays)."""
        last = self.epochs[-1] if self.epochs else {}
        return {"config": self.config, "timings": self.timings,
                "final_train_loss": last.get("train_loss"), "final_val_loss": last.get("val_loss"),
                "n_split": {n: int(np.sum(self.usable & (self.split == i))) for i, n in enumerate(schedule.SPLIT_NAMES)},
                "epochs": self.epochs, "iterations": self.iterations}


def make_optimizer(learning_rate: float = 1e-3):
    """Adam with its learning rate injected, so it can change between iterations keeping the moments."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


def batch_loss(params, x, E, y, W, w, n_bands: int, l2: float, l1: float):
    """Loss of a batch: Σ w χ²/B / Σ w + regularization, χ² = ‖W (ŷ − ŷ_model(x, E))‖² (METHOD §3).

    Parameters
    ----------
    x : (n, 3) standardized θ̂; E : (n,); y : (n, B) ŷ; W : (n, B, B) whitening factors
    w : (n,) weights (1 for a star in the batch, 0 for padding)

    Returns
    -------
    loss, chi2_per_band : ()
    """
    r = jnp.einsum("nij,nj->ni", W, y - network.model_y(params, x, E))
    data = jnp.sum(w * jnp.sum(r * r, axis=-1)) / jnp.maximum(jnp.sum(w), 1.0) / n_bands
    return data + network.regularization(params, l2, l1), data


def _make_epoch(opt, n_batches: int, batch_size: int, n_bands: int, l2: float, l1: float, loss_fn=None):
    """One epoch as a jitted ``lax.scan`` over batches; each step gathers its batch by index.

    The shuffle is a numpy permutation of the star indices (drawn outside, once per epoch).
    Gathering inside the step measured 2.7× faster on the 2-core CPU than gathering the whole
    shuffled epoch first (1.23 vs 0.45 M star-epochs/s at 2×10⁵ stars) and needs no copy of W.
    """

    loss_fn = loss_fn or batch_loss

    def epoch(params, opt_state, x, E, y, W, idx, w, aux=(), glob=()):
        def step(carry, b):
            p, s = carry
            i, wb = b
            (loss, data), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x[i], E[i], y[i], W[i], wb,
                                                                        *(a[i] for a in aux), n_bands, l2, l1,
                                                                        *((glob,) if glob else ()))
            upd, s2 = opt.update(g, s, p)
            p2 = optax.apply_updates(p, upd)
            live = jnp.sum(wb) > 0  # an all-padding batch makes no step
            keep = lambda new, old: jax.tree_util.tree_map(lambda a, c: jnp.where(live, a, c), new, old)  # noqa: E731
            return (keep(p2, p), keep(s2, s)), (loss, data, jnp.sum(wb))

        batches = (idx.reshape(n_batches, batch_size), w.reshape(n_batches, batch_size))
        (params, opt_state), (loss, data, n) = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state, loss, data, n

    return jax.jit(epoch)


def _make_eval(n_bands: int, l2: float, l1: float, loss_fn=None):
    loss_fn = loss_fn or batch_loss

    @jax.jit
    def evaluate(params, x, E, y, W, idx, w, aux=(), glob=()):
        return loss_fn(params, x[idx], E[idx], y[idx], W[idx], w, *(a[idx] for a in aux), n_bands, l2, l1,
                       *((glob,) if glob else ()))
    return evaluate


def _median_target(cat: Catalog, select) -> np.ndarray:
    """Median over the selected stars of each observed component of ŷ (0 where none), shape (B,)."""
    d = star_data(cat.subset(select))
    y = np.where(np.asarray(d.y_obs), np.asarray(d.y_hat), np.nan)
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(y, axis=0)
    return np.nan_to_num(med)


def _initial_state(cat: Catalog, cfg: TrainConfig, init: StellarModel | None, split, usable) -> TrainState:
    if init is not None:
        if init.bands.keys != cat.bands.keys:
            raise ValueError(f"--init model bands {init.bands.names} differ from the catalog's {cat.bands.names}")
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), init.params)
        med, std = np.asarray(init.theta_med, float), np.asarray(init.theta_std, float)
    else:
        train_theta = cat.theta[usable & (split == schedule.TRAIN)]
        if len(train_theta) < 2:
            raise ValueError(f"{cat.name}: only {len(train_theta)} usable training star(s); need at least 2")
        med, std = np.median(train_theta, axis=0), np.std(train_theta, axis=0)
        if np.any(~(std > 0)):
            raise ValueError(f"{cat.name}: θ of the training stars has zero spread in some component: std = {std}")
        params = network.init_params(jax.random.PRNGKey(cfg.seed), len(cat.bands), cfg.n_hidden)
        if cfg.init_output_bias:
            params["BM"]["bias"] = jnp.asarray(_median_target(cat, usable & (split == schedule.TRAIN)), jnp.float32)
    opt_state = make_optimizer(cfg.learning_rate).init(params)
    sigma_E0 = np.nan_to_num(cat.sigma_E0, nan=np.inf)
    included = usable & (sigma_E0 <= cfg.max_sigma_E0_first)
    rng = np.random.default_rng([cfg.seed, 1])
    return TrainState(0, params, opt_state, med, std, np.nan_to_num(cat.E0).astype(np.float32),
                      np.zeros(len(cat), np.float32), included, rng.bit_generator.state)


def population_members(cat: Catalog, cfg: TrainConfig) -> np.ndarray:
    """Which stars' θ̂ the population density is fitted to, (N,) bool: the usable training stars; with a
    distance prior, every star with a usable θ measurement, trained on or not.

    With the distance prior each star's θ prior is p(θ) p(μ = m̂_G − M_G(θ) − E R_G | l, b), the selection of
    the training stars on m_G (a reference magnitude and a parallax) being conditioned on; p(θ) must then
    be the density before that selection, and the stars it removes (too faint for the reference band) are
    the faint dwarfs (measured on the default mock: 28 % of the logg > 4.6 stars kept, 98 % of the giants).
    """
    if cfg.distance_prior == "none":
        return cat.usable(TRAINING_UNUSABLE)
    from ..catalog import Flag
    return cat.usable(Flag.BAD_THETA | Flag.NO_THETA | Flag.CUT_THETA_ERROR)


def _population_prior(data, select, state: TrainState, cfg: TrainConfig):
    """The population density of standardized θ (:func:`~photoinfer.train.population.fit_population`) of the
    selected stars with a finite, positive-definite C_θ; returns (prior, info)."""
    from .population import fit_population
    from .profile import standardized_measurement
    x, S = standardized_measurement(data, state.theta_med, state.theta_std)
    ok = select & np.isfinite(x).all(1) & np.isfinite(S).all(axis=(1, 2))
    ok[ok] = np.linalg.eigvalsh(S[ok])[:, 0] > 0
    t0 = time.perf_counter()
    prior, info = fit_population(x[ok], S[ok], cfg.prior_components, seed=cfg.seed, max_stars=cfg.prior_stars)
    info["seconds"] = time.perf_counter() - t0
    return prior, info


def train(cat: Catalog, config: TrainConfig = TrainConfig(), *, init: StellarModel | None = None,
          resume: TrainState | None = None, callback=None) -> tuple[StellarModel, History]:
    """Train a stellar model on ``cat`` (METHOD §5).

    Parameters
    ----------
    cat : Catalog
        Training-type stars (θ, C_θ, photometry, parallax, reddening prior).  Stars with a
        :data:`~photoinfer.catalog.TRAINING_UNUSABLE` flag are carried but never used.
    config : TrainConfig
    init : StellarModel, optional
        Start from this model's parameters and θ normalization (fine-tuning); default: fresh
        weights (:func:`~photoinfer.model.network.init_params`, seeded) and the training split's
        θ median and standard deviation.
    resume : TrainState, optional
        Continue from this state (e.g. a checkpoint); it must come from the same catalog and config.
    callback : callable, optional
        ``callback(event, state, record)``: event ``"epoch"`` after every epoch (record: the epoch
        record) and ``"iteration"`` after every iteration's rebuild (record: the iteration record,
        state: a :class:`TrainState` to checkpoint).

    Returns
    -------
    model : StellarModel
        With provenance (catalog, config, split sizes, final losses) and, if ``config.validity``,
        the region of validity of its training stars.
    history : History
    """
    cfg = config
    n, B = len(cat), len(cat.bands)
    if n == 0:
        raise ValueError(f"{cat.name}: the catalog is empty")
    split = schedule.split_labels(n, cfg.seed if cfg.split_seed is None else cfg.split_seed, cfg.split)
    usable = cat.usable(TRAINING_UNUSABLE)
    state = resume if resume is not None else _initial_state(cat, cfg, init, split, usable)
    if len(state.E) != n:
        raise ValueError(f"the resumed state has {len(state.E)} stars, the catalog {cat.name} {n}")
    data = star_data(cat)
    if cfg.theta_denoise == "tweedie":
        from .denoise import tweedie_theta
        ok = usable & np.isfinite(cat.theta).all(axis=1) & np.isfinite(cat.theta_cov).all(axis=(1, 2))
        theta_net = np.array(np.nan_to_num(cat.theta), np.float64)
        theta_net[ok] = tweedie_theta(cat.theta[ok], cat.theta_cov[ok], reference=cat.theta[ok & (split == schedule.TRAIN)])
        data = data._replace(theta=jnp.asarray(theta_net, jnp.float32))
    y_obs_paper = np.asarray(data.y_obs)  # the validity maps keep the paper's parallax sample
    px = None
    dist_prior = None if cfg.distance_prior == "none" else cfg.distance_prior
    if cfg.parallax_residual == "parallax":
        from .parallax import ParallaxInputs, linearized_data, model_distance_modulus
        px = ParallaxInputs(cat)
        if dist_prior is not None and not (np.isfinite(px.l) & np.isfinite(px.b) & usable).any():
            raise ValueError(f"{cat.name}: distance_prior needs the Galactic coordinates (columns l, b) of the "
                             "stars; no usable star has them")
        if state.mu_lin is not None:
            data = linearized_data(data, px, state.mu_lin, dist_prior)
    mu_lin = state.mu_lin
    live_weight = px is not None and cfg.latent_theta == "marginal"  # Eq. P3 of parallax.py

    exact_mu = live_weight and cfg.parallax_integral == "exact"
    galactic = None
    if dist_prior is not None:
        from ..priors.galactic import galactic_params
        galactic = galactic_params(dist_prior)

    def weights_at(mu):
        """Eq. P3's per-star terms (zeros: no parallax weight at the current μ), or Eq. P4's (8 wide)."""
        if not live_weight or mu is None:
            return jnp.zeros((n, 8 if exact_mu else 3), jnp.float32)
        from .parallax import integral_terms, weight_terms
        return jnp.asarray(integral_terms(data, px, mu, galactic) if exact_mu else weight_terms(data, px, mu))
    plx_dev = weights_at(mu_lin)

    def cut_data():
        """What the outlier cut's χ² sees: with a distance prior, y₁ = the parallax's pseudo-observation alone (the
        prior's expansion, Eq. P1, is no misfit: with a vanishing curvature its pseudo-observation lies σ_μ̃²|g|/2
        away, hundreds of mag for a star whose σ_μ̃ is tens of mag); otherwise the training data itself (None)."""
        return None if dist_prior is None or mu_lin is None else linearized_data(data, px, mu_lin, None)
    med32, std32 = jnp.asarray(state.theta_med, jnp.float32), jnp.asarray(state.theta_std, jnp.float32)
    theta_fit = state.theta_fit

    def standardized(theta):
        return jnp.asarray(np.nan_to_num(np.asarray(network.standardize(np.asarray(theta), state.theta_med,
                                                                          state.theta_std))), jnp.float32)

    x_all = standardized(data.theta if theta_fit is None else theta_fit)
    train_pool = np.flatnonzero(usable & (split == schedule.TRAIN))
    val_pool = np.flatnonzero(usable & (split == schedule.VALIDATION))
    if len(train_pool) == 0:
        raise ValueError(f"{cat.name}: no usable training star")
    bs = cfg.batch_size
    n_batches = -(-len(train_pool) // bs)
    opt = make_optimizer(cfg.learning_rate)
    epoch_fn = _make_epoch(opt, n_batches, bs, B, cfg.l2_hidden, cfg.l1_extinction)
    eval_fn = _make_eval(B, cfg.l2_hidden, cfg.l1_extinction)
    plain_fns, loss_fn, aux = (epoch_fn, eval_fn), None, ()
    prior, prior_info = None, None
    profiled = cfg.latent_theta in ("profile", "marginal")
    if cfg.latent_theta == "marginal":
        prior, prior_info = _population_prior(data, population_members(cat, cfg) & (split == schedule.TRAIN), state, cfg)
    draws = None
    if dist_prior is not None:  # Eq. P2: K fixed draws of p(θ) for the normalization of p(θ | m_G)
        from .population import integration_draws
        draws = jnp.asarray(integration_draws(prior, cfg.normalizer_draws, cfg.seed))
    if profiled:  # from iteration 1 on (after the first joint fit): the profiled loss
        from functools import partial

        from .profile import profile_aux, profile_batch_loss, with_population_prior
        pl = partial(profile_batch_loss, log_det=cfg.latent_theta == "marginal", galactic=galactic)
        profile_fns = (_make_epoch(opt, n_batches, bs, B, cfg.l2_hidden, cfg.l1_extinction, pl),
                       _make_eval(B, cfg.l2_hidden, cfg.l1_extinction, pl))
        measured_arrays = profile_aux(data, state.theta_med, state.theta_std)
        profile_arrays = (measured_arrays if prior is None or theta_fit is None
                          else with_population_prior(measured_arrays, prior, x_all))
    val_idx = jnp.asarray(val_pool if len(val_pool) else train_pool[:1], jnp.int32)
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng_state
    params, opt_state = state.params, state.opt_state
    E, var_E, included = state.E, state.var_E, state.included
    history = {"epochs": list(state.history["epochs"]), "iterations": list(state.history["iterations"])}
    W_dev = None  # the whitening factors on the device (one copy: the host array is dropped)
    red = np.full(n, np.nan)
    t_start = time.perf_counter()

    for k in range(state.iteration, cfg.iterations):
        t0 = time.perf_counter()
        if W_dev is None:  # iteration 0, or the first iteration after a resume
            if theta_fit is not None:  # latent θ: the photometric whitening (no J, no σ_E)
                from .latent import photometric_whitening_all
                W_dev = jnp.asarray(photometric_whitening_all(data, cfg.rebuild_batch_size))
            else:
                W_dev = jnp.asarray(whitening_all(params, med32, std32, data, E, np.sqrt(var_E), first=(k == 0),
                                                  batch_size=cfg.rebuild_batch_size))
        E_dev = jnp.asarray(E, jnp.float32)
        y_all = data.y_hat
        if profiled and theta_fit is not None:
            (epoch_fn, eval_fn), loss_fn, aux = profile_fns, pl, (*profile_arrays, plx_dev)
        else:
            (epoch_fn, eval_fn), loss_fn, aux = plain_fns, None, ()
        train_idx = train_pool[included[train_pool]]
        if len(train_idx) == 0:
            raise RuntimeError(f"{cat.name}: iteration {k}: every training star was cut (no finite reduced χ² below "
                               "the threshold); the model has diverged")
        glob, z_norm = (), None
        if draws is not None and theta_fit is not None:  # Eq. P2 over a seeded subsample of the stars it applies to
            from .parallax import Normalizer, normalizer_surrogate
            z_pool = train_idx[np.asarray(data.y_obs)[train_idx, 0] & np.isfinite(px.l[train_idx])
                               & np.isfinite(px.b[train_idx]) & np.isfinite(px.mag_ref[train_idx])]
            z_idx = np.sort(np.random.default_rng([cfg.seed, k, 3]).choice(
                z_pool, min(cfg.normalizer_stars, len(z_pool)), replace=False))
            z_norm = Normalizer(draws, galactic, px.mag_ref[z_idx], np.asarray(data.E0)[z_idx],
                                np.asarray(data.sigma_E0)[z_idx], px.l[z_idx], px.b[z_idx],
                                len(z_pool) / max(len(z_idx), 1))
            c, d, M0, R0 = normalizer_surrogate(params, z_norm)
            glob = (draws, c, d, M0, R0, jnp.float32(z_norm.weight / (len(train_idx) * B)))
        val_w = jnp.asarray(included[np.asarray(val_idx)] & (len(val_pool) > 0), jnp.float32)
        lr = schedule.learning_rate(k, cfg.learning_rate, cfg.lr_decay)
        opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        w = np.zeros(n_batches * bs, np.float32)
        w[:len(train_idx)] = 1.0
        w = jnp.asarray(w)
        t_epochs = time.perf_counter()
        for e in range(cfg.epochs):
            te = time.perf_counter()
            idx = np.zeros(n_batches * bs, np.int32)
            idx[:len(train_idx)] = train_idx[rng.permutation(len(train_idx))]
            params, opt_state, loss, chi2b, nb = epoch_fn(params, opt_state, x_all, E_dev, y_all, W_dev,
                                                          jnp.asarray(idx), w, aux, glob)
            loss, chi2b, nb = np.asarray(loss), np.asarray(chi2b), np.asarray(nb)
            vloss, vchi2 = eval_fn(params, x_all, E_dev, y_all, W_dev, val_idx, val_w, aux, glob)
            rec = {"iteration": k, "epoch": e, "learning_rate": lr,
                   "train_loss": float(np.sum(loss * nb) / max(nb.sum(), 1)),
                   "train_chi2": float(np.sum(chi2b * nb) / max(nb.sum(), 1)),
                   "val_loss": float(vloss), "val_chi2": float(vchi2), "seconds": time.perf_counter() - te}
            history["epochs"].append(rec)
            if callback is not None:
                callback("epoch", None, rec)
        gn = None
        if cfg.gn_steps > 0 and profiled and theta_fit is not None:
            from .gauss_newton import gauss_newton_steps
            tg = time.perf_counter()
            tj = jnp.asarray(train_idx, jnp.int32)
            z = jnp.concatenate([x_all[tj], E_dev[tj][:, None]], axis=1)
            xt, Lt, E0a, iva, pla = (a[tj] for a in aux)
            params, z_new, gh = gauss_newton_steps(
                params, z, y_all[tj], W_dev[tj], jnp.concatenate([xt, E0a[:, None]], axis=1), Lt, iva,
                n_bands=B, l2=cfg.l2_hidden, l1=cfg.l1_extinction, n_steps=cfg.gn_steps,
                n_curvature=cfg.gn_curvature, seed=cfg.seed * 1000 + k, log_det=cfg.latent_theta == "marginal",
                normalizer=z_norm, plx=pla, galactic=galactic)
            theta_fit = np.array(theta_fit)
            theta_fit[train_idx] = np.asarray(state.theta_med) + np.asarray(state.theta_std) * np.asarray(z_new[:, :3], np.float64)
            E = np.array(E, np.float32)
            E[train_idx] = z_new[:, 3]
            x_all = standardized(theta_fit)
            vloss, _ = eval_fn(params, x_all, jnp.asarray(E, jnp.float32), y_all, W_dev, val_idx, val_w, aux, glob)
            gn = {"F": [h["F_after"] for h in gh], "predicted": [h.get("predicted") for h in gh],
                  "accepted": sum(h["accepted"] for h in gh),
                  "val_loss_after": float(vloss), "seconds": time.perf_counter() - tg}
        polish = None
        if cfg.polish_steps > 0 and k >= cfg.iterations - cfg.polish_iterations:
            from .polish import lbfgs_polish
            tp = time.perf_counter()
            ti = jnp.asarray(train_idx, jnp.int32)
            params, pl, pf = lbfgs_polish(params, x_all[ti], E_dev[ti], y_all[ti], W_dev[ti], B, cfg.l2_hidden,
                                          cfg.l1_extinction, cfg.polish_steps, loss_fn, [a[ti] for a in aux])
            vloss, _ = eval_fn(params, x_all, E_dev, y_all, W_dev, val_idx, val_w, aux)
            polish = {"loss_before": float(pl[0]), "loss_after": float(pf), "val_loss_after": float(vloss),
                      "seconds": time.perf_counter() - tp}
        t_rebuild = time.perf_counter()
        epochs_s = t_rebuild - t_epochs
        W_dev = None
        r_scale = 1.0
        if cfg.scale_step:  # the E·R scale at its maximum likelihood (before relinearizing y₁ and the rebuild)
            from .scale import apply_scale, best_scale, photometric_reddening
            d_scale = data if theta_fit is None else data._replace(
                theta=jnp.asarray(theta_fit, jnp.float32), theta_cov=jnp.zeros_like(data.theta_cov))
            q, b = photometric_reddening(params, med32, std32, d_scale, cfg.rebuild_batch_size)
            sel = train_pool[included[train_pool]]
            r_scale = best_scale(q[sel], b[sel], np.asarray(data.E0)[sel], np.asarray(data.sigma_E0)[sel])
            params = apply_scale(params, r_scale)
        if cfg.latent_theta != "none" and theta_fit is None:  # the joint fit starts at (θ̂, E₀)
            theta_fit = np.asarray(data.theta, np.float64)
        E_start = np.asarray(E, np.float64) / r_scale  # (E·R unchanged by the scale step)
        if px is not None:  # relinearize the parallax residual about the current model (at the current E)
            mu_lin = model_distance_modulus(params, med32, std32, px.mag_ref,
                                            np.asarray(data.theta if theta_fit is None else theta_fit), E_start)
            data = linearized_data(data, px, mu_lin, dist_prior)
            plx_dev = weights_at(mu_lin)
        if cfg.latent_theta != "none":
            from .latent import joint_fit_all
            theta_fit, E_new, var_new, W_host, red, _ = joint_fit_all(params, med32, std32, data, theta_fit, E_start,
                                                                      cfg.latent_steps, cfg.rebuild_batch_size, prior,
                                                                      cut_data())
            x_all = standardized(theta_fit)
            if profiled and prior is not None:
                profile_arrays = with_population_prior(measured_arrays, prior, x_all)
        else:
            E_new, var_new, W_host, red, _ = rebuild_all(params, med32, std32, data, cfg.rebuild_batch_size)
        W_dev = jnp.asarray(W_host)
        del W_host
        dE = (E_new - E_start)[usable]
        thr = schedule.cut_threshold(k, cfg.cut_start, cfg.cut_end, cfg.cut_k_end)
        pool_red = red[train_pool]
        raised = bool(np.mean(~(pool_red <= thr)) > cfg.max_cut_fraction)
        if raised:
            finite = pool_red[np.isfinite(pool_red)]
            thr = float(np.quantile(finite, 1.0 - cfg.max_cut_fraction)) if len(finite) else np.inf
        new_included = usable & np.isfinite(red) & (red <= thr)
        cut_train = usable[train_pool] & ~new_included[train_pool]
        E, var_E, included = E_new, var_new, new_included
        irec = {"iteration": k, "learning_rate": lr, "n_train": int(len(train_idx)),
                "n_val": int(np.asarray(val_w).sum()), "threshold": thr, "threshold_raised": raised, "n_cut": int(cut_train.sum()),
                "frac_cut": float(cut_train.mean()),
                "dE_median_abs": float(np.median(np.abs(dE))) if len(dE) else 0.0,
                "dE_rms": float(np.sqrt(np.mean(dE ** 2))) if len(dE) else 0.0,
                "dE_max_abs": float(np.max(np.abs(dE))) if len(dE) else 0.0,
                "train_loss": history["epochs"][-1]["train_loss"], "val_loss": history["epochs"][-1]["val_loss"],
                "R_scale": r_scale, "polish": polish, "gauss_newton": gn, "n_parallax": int(np.asarray(data.y_obs)[usable, 0].sum()), "epochs_seconds": epochs_s, "rebuild_seconds": time.perf_counter() - t_rebuild
                + (t_epochs - t0), "star_epochs_per_second": len(train_idx) * cfg.epochs / epochs_s}
        history["iterations"].append(irec)
        state = TrainState(k + 1, params, opt_state, state.theta_med, state.theta_std, E, var_E, included,
                           rng.bit_generator.state, history, mu_lin, theta_fit)
        if callback is not None:
            callback("iteration", state, irec)

    if not np.isfinite(red).any():  # nothing trained in this call (resumed a finished run): recompute
        if theta_fit is not None:
            from .latent import joint_fit_all
            red = joint_fit_all(params, med32, std32, data, theta_fit, E, 0, cfg.rebuild_batch_size, prior, cut_data())[4]
        else:
            _, _, _, red, _ = rebuild_all(params, med32, std32, data, cfg.rebuild_batch_size)
    timings = {"total_seconds": time.perf_counter() - t_start,
               "epochs_seconds": float(sum(r["epochs_seconds"] for r in history["iterations"])),
               "rebuild_seconds": float(sum(r["rebuild_seconds"] for r in history["iterations"]))}
    if prior_info is not None:
        timings["population_seconds"] = prior_info["seconds"]
        timings["population_em_iterations"] = len(prior_info["log_likelihood"])
    hist = History(history["epochs"], history["iterations"], split, usable, included,
                   np.where(usable, E, np.nan), np.where(usable, np.sqrt(var_E), np.nan),
                   np.where(usable, red, np.nan), cfg.to_dict(), timings,
                   None if theta_fit is None else np.where(usable[:, None], theta_fit, np.nan))
    model = StellarModel(params=jax.tree_util.tree_map(np.asarray, params), theta_med=np.asarray(state.theta_med),
                         theta_std=np.asarray(state.theta_std), bands=cat.bands)
    validity = None
    if cfg.validity:
        from .validation import validity_grid
        final_train = usable & (split == schedule.TRAIN) & included
        validity = validity_grid(cat.theta[final_train], y_obs_paper[final_train], cat.bands)
    last = history["epochs"][-1] if history["epochs"] else {}
    provenance = {"source": "trained by photoinfer", "photoinfer_version": __version__, "catalog": cat.name,
                  "n_stars": n, "n_usable": int(usable.sum()), "config": cfg.to_dict(),
                  "init": (init.provenance.get("file") or init.provenance.get("source")) if init is not None else None,
                  "split": {nm: int(np.sum(usable & (split == i))) for i, nm in enumerate(schedule.SPLIT_NAMES)},
                  "final_train_loss": last.get("train_loss"), "final_val_loss": last.get("val_loss"),
                  "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return model.replace(provenance=provenance, validity=validity), hist
