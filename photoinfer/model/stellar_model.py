"""A trained stellar model: parameters, bands, θ normalization, provenance, region of validity."""
from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from ..conventions import BandSet
from . import network

__all__ = ["StellarModel", "ValidityGrid"]


@dataclass(frozen=True)
class ValidityGrid:
    """Training-sample density per band on a regular (Teff, logg, [M/H]) grid (METHOD §7).

    Attributes
    ----------
    density : ndarray, shape (K, nT, nG, nF)
        Peak-normalized density; K is the number of density maps (one per band, the
        first for the absolute-magnitude/parallax sample in the released grid).
    teff, logg, feh : ndarray, shapes (nT,), (nG,), (nF,)
        Grid axes [K, dex, dex], each uniformly spaced.
    labels : tuple of str
        What each of the K maps describes.
    """

    density: np.ndarray
    teff: np.ndarray
    logg: np.ndarray
    feh: np.ndarray
    labels: tuple[str, ...]

    def __call__(self, theta):
        """Density of each map at θ (multilinear interpolation; 0 outside the grid).

        Parameters
        ----------
        theta : array, shape (..., 3)

        Returns
        -------
        array, shape (..., K)
        """
        theta = jnp.asarray(theta, jnp.float32)
        coords = [(theta[..., i] - ax[0]) / (ax[1] - ax[0]) for i, ax in enumerate((self.teff, self.logg, self.feh))]
        dens = jnp.asarray(self.density, jnp.float32)
        out = [jax.scipy.ndimage.map_coordinates(d, coords, order=1, mode="constant", cval=0.0) for d in dens]
        return jnp.stack(out, axis=-1)

    def min_density(self, theta, maps=None):
        """The smallest density over the maps in use, shape (...): the star's validity score.

        Parameters
        ----------
        theta : array, shape (..., 3)
        maps : bool array, shape (..., K) or (K,), optional
            Which maps count (e.g. map 0, the training sample, and the maps of the bands a star
            has observed); default all.  Maps not in use count as density 1.
        """
        dens = self(theta)
        if maps is not None:
            dens = jnp.where(jnp.asarray(maps, bool), dens, 1.0)
        return jnp.min(dens, axis=-1)

    def band_maps(self, observed) -> np.ndarray:
        """The maps that judge a star with ``observed`` bands (…, B): map 0 and one per observed band.

        The released grid and photoinfer's own have K = B maps: map 0 for the training sample
        with a usable parallax (the reference magnitude), map b for colour b.
        """
        observed = np.asarray(observed, bool)
        if observed.shape[-1] != self.density.shape[0]:
            return np.ones(observed.shape[:-1] + (self.density.shape[0],), bool)
        maps = observed.copy()
        maps[..., 0] = True
        return maps


@dataclass(frozen=True)
class StellarModel:
    """M(θ), R(θ) with everything needed to use them.

    Attributes
    ----------
    params : dict
        Network parameters (see :mod:`photoinfer.model.network`).
    theta_med, theta_std : ndarray, shape (3,)
        θ standardization [K, dex, dex].
    bands : BandSet
        Passbands, reference first.
    provenance : dict
        Where the model comes from (training data, code version, source file...).
    validity : ValidityGrid or None
        Region of validity, when known.
    """

    params: dict
    theta_med: np.ndarray
    theta_std: np.ndarray
    bands: BandSet
    provenance: dict = field(default_factory=dict)
    validity: ValidityGrid | None = None

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    def standardize(self, theta):
        return network.standardize(theta, self.theta_med, self.theta_std)

    def predict_y(self, theta, E=0.0):
        """A(M(θ) + E R(θ)), shape (..., B) [mag]: reference absolute magnitude, then colours."""
        theta = jnp.asarray(theta, jnp.float32)
        E = jnp.broadcast_to(jnp.asarray(E, jnp.float32), theta.shape[:-1])
        return network.predict_y(self.params, self.theta_med, self.theta_std, theta, E)

    def predict_magnitudes(self, theta, mu=0.0, E=0.0):
        """M(θ) + μ + E R(θ), shape (..., B) [mag]."""
        theta = jnp.asarray(theta, jnp.float32)
        shape = theta.shape[:-1]
        return network.predict_magnitudes(self.params, self.theta_med, self.theta_std, theta,
                                          jnp.broadcast_to(jnp.asarray(mu, jnp.float32), shape),
                                          jnp.broadcast_to(jnp.asarray(E, jnp.float32), shape))

    def extinction(self, theta):
        """R(θ), shape (..., B) [mag per unit E]."""
        return network.extinction_vector(self.params, self.standardize(jnp.asarray(theta, jnp.float32)))

    def replace(self, **changes) -> "StellarModel":
        from dataclasses import replace
        return replace(self, **changes)
