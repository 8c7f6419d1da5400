"""The stellar model network (METHOD §2) as pure JAX functions of a parameter pytree.

Parameters are a dict of layers, each ``{"kernel": (in, out), "bias": (out,)}``,
named as in the released Keras file:

``hidden_1`` (3→H, sigmoid), ``hidden_2`` (H→H, sigmoid), ``BM`` (H→B, linear:
A·M(θ), the reference absolute magnitude then the colours), ``R`` (3→B,
exponential: R(θ) in magnitude space).  A layer computes ``x @ kernel + bias``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "init_params", "standardize", "colour_basis_absolute", "absolute_magnitudes", "extinction_vector",
    "predict_y", "predict_magnitudes", "regularization", "n_parameters",
]


def init_params(key, n_bands: int, n_hidden: int = 32) -> dict:
    """Glorot-uniform kernels and zero biases, as Keras initializes the released model.

    Parameters
    ----------
    key : jax.random.PRNGKey
    n_bands : int
        Number of passbands B.
    n_hidden : int
        Width of the two hidden layers (released: 32).
    """
    shapes = {"hidden_1": (3, n_hidden), "hidden_2": (n_hidden, n_hidden),
              "BM": (n_hidden, n_bands), "R": (3, n_bands)}
    keys = jax.random.split(key, len(shapes))
    params = {}
    for k, (name, (n_in, n_out)) in zip(keys, shapes.items()):
        lim = np.sqrt(6.0 / (n_in + n_out))
        params[name] = {"kernel": jax.random.uniform(k, (n_in, n_out), jnp.float32, -lim, lim),
                        "bias": jnp.zeros((n_out,), jnp.float32)}
    return params


def standardize(theta, theta_med, theta_std):
    """x = (θ − θ_med)/θ_std (METHOD §1).  θ: (..., 3) [K, dex, dex]."""
    return (theta - theta_med) / theta_std


def _dense(layer, x):
    return x @ layer["kernel"] + layer["bias"]


def colour_basis_absolute(params, x):
    """A·M(θ): reference absolute magnitude then the B−1 colours [mag].

    Parameters
    ----------
    params : dict
        Network parameters.
    x : array, shape (..., 3)
        Standardized features.

    Returns
    -------
    array, shape (..., B)
    """
    h = jax.nn.sigmoid(_dense(params["hidden_1"], x))
    h = jax.nn.sigmoid(_dense(params["hidden_2"], h))
    return _dense(params["BM"], h)


def extinction_vector(params, x):
    """R(θ) = exp(x·W + b): extinction per unit E in each band, shape (..., B) [mag]."""
    return jnp.exp(_dense(params["R"], x))


def to_colour_basis(m):
    """y = A m for magnitude-space vectors m of shape (..., B) (METHOD §2)."""
    return m.at[..., 1:].add(-m[..., :1])


def predict_y(params, theta_med, theta_std, theta, E):
    """y = A M(θ) + E·A R(θ): reference magnitude and colours at distance modulus 0.

    Parameters
    ----------
    theta : array, shape (..., 3)
        (Teff [K], logg [dex], [M/H] [dex]).
    E : array, shape (...)
        Reddening.

    Returns
    -------
    array, shape (..., B) [mag]
    """
    return model_y(params, standardize(theta, theta_med, theta_std), E)


def model_y(params, x, E):
    """y = A M + E·A R (METHOD §2) at standardized features: :func:`predict_y` without the standardization.

    Parameters
    ----------
    x : array, shape (..., 3)
        Standardized features.
    E : array, shape (...)
        Reddening.

    Returns
    -------
    array, shape (..., B) [mag]
    """
    return colour_basis_absolute(params, x) + jnp.asarray(E)[..., None] * to_colour_basis(extinction_vector(params, x))


def absolute_magnitudes(params, x):
    """M(θ): absolute magnitudes at standardized features x (..., 3), shape (..., B) [mag].

    A⁻¹ applied to :func:`colour_basis_absolute`: m_b = y_b + y_1.
    """
    am = colour_basis_absolute(params, x)
    return am.at[..., 1:].add(am[..., :1])


def predict_magnitudes(params, theta_med, theta_std, theta, mu, E):
    """m = M(θ) + μ + E·R(θ): apparent magnitudes, shape (..., B) [mag] (METHOD §2)."""
    x = standardize(theta, theta_med, theta_std)
    M = absolute_magnitudes(params, x)
    return M + jnp.asarray(mu)[..., None] + jnp.asarray(E)[..., None] * extinction_vector(params, x)


def regularization(params, l2_hidden: float = 1e-4, l1_extinction: float = 1e-2):
    """The network's penalty (METHOD §2): L2 on the hidden kernels, L1 on the R kernel."""
    return (l2_hidden * (jnp.sum(params["hidden_1"]["kernel"] ** 2) + jnp.sum(params["hidden_2"]["kernel"] ** 2))
            + l1_extinction * jnp.sum(jnp.abs(params["R"]["kernel"])))


def n_parameters(params) -> int:
    """Number of trainable numbers in a parameter pytree."""
    return int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params)))
