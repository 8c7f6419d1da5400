"""Passbands, their order and zero points, and the magnitude–colour basis.

The method is band-agnostic: a :class:`BandSet` is an ordered tuple of
:class:`Band`; its first band is the reference magnitude (METHOD §2: y₁ = m_ref,
y_b = m_b − m_ref).  :data:`DEFAULT_BANDS` is the released model's 13 bands.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Band", "BandSet", "DEFAULT_BANDS", "KNOWN_BANDS", "band_set", "colour_matrix"]


@dataclass(frozen=True)
class Band:
    """One passband.

    Attributes
    ----------
    name : str
        Short display name, e.g. ``"G"``, ``"Ks"``.
    key : str
        Column-safe, case-insensitive-unique identifier, e.g. ``"gaia_g"``; catalog
        columns are ``{key}_mag`` and ``{key}_mag_err``.
    survey : str
        Survey the band belongs to.
    vega_to_ab : float
        Offset [mag] added to a Vega magnitude to make it AB (0 where the survey
        already reports AB or photoinfer keeps the survey's own system).
    """

    name: str
    key: str
    survey: str
    vega_to_ab: float = 0.0


KNOWN_BANDS: dict[str, Band] = {
    b.name: b
    for b in (
        Band("G", "gaia_g", "Gaia"),
        Band("BP", "gaia_bp", "Gaia"),
        Band("RP", "gaia_rp", "Gaia"),
        Band("g", "ps1_g", "Pan-STARRS1"),
        Band("r", "ps1_r", "Pan-STARRS1"),
        Band("i", "ps1_i", "Pan-STARRS1"),
        Band("z", "ps1_z", "Pan-STARRS1"),
        Band("y", "ps1_y", "Pan-STARRS1"),
        Band("J", "tmass_j", "2MASS"),
        Band("H", "tmass_h", "2MASS"),
        Band("Ks", "tmass_ks", "2MASS"),
        # unWISE is Vega in the catalog; the model works in AB (METHOD §6).
        Band("W1", "unwise_w1", "unWISE", 2.699),
        Band("W2", "unwise_w2", "unWISE", 3.339),
    )
}


@dataclass(frozen=True)
class BandSet:
    """An ordered set of passbands; ``bands[0]`` is the reference magnitude."""

    bands: tuple[Band, ...]

    def __post_init__(self):
        if len(self.bands) < 2:
            raise ValueError("a band set needs at least two bands (a reference and one colour)")
        keys = [b.key.lower() for b in self.bands]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate band keys in {keys}")

    def __len__(self) -> int:
        return len(self.bands)

    def __iter__(self):
        return iter(self.bands)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.bands]

    @property
    def keys(self) -> list[str]:
        return [b.key for b in self.bands]

    @property
    def reference(self) -> Band:
        return self.bands[0]

    @property
    def vega_to_ab(self) -> np.ndarray:
        """Vega→AB offsets [mag], shape (B,)."""
        return np.array([b.vega_to_ab for b in self.bands])

    def y_labels(self) -> list[str]:
        """Labels of the magnitude–colour vector y: ``G``, ``BP-G``, ..."""
        ref = self.reference.name
        return [ref] + [f"{b.name}-{ref}" for b in self.bands[1:]]

    def to_dict(self) -> list[dict]:
        return [dict(name=b.name, key=b.key, survey=b.survey, vega_to_ab=b.vega_to_ab) for b in self.bands]

    @classmethod
    def from_dict(cls, rows: list[dict]) -> "BandSet":
        return cls(tuple(Band(**r) for r in rows))


DEFAULT_BANDS = BandSet(tuple(KNOWN_BANDS[n] for n in
                              ("G", "BP", "RP", "g", "r", "i", "z", "y", "J", "H", "Ks", "W1", "W2")))


def band_set(names: list[str] | tuple[str, ...]) -> BandSet:
    """Build a :class:`BandSet` from names; unknown names become new bands.

    Parameters
    ----------
    names : sequence of str
        Band names in order; the first is the reference magnitude.  A name that
        is not in :data:`KNOWN_BANDS` is declared as a new band with ``key`` equal to
        its lower-cased name and no Vega→AB offset.
    """
    return BandSet(tuple(KNOWN_BANDS.get(n, Band(n, n.lower(), "user")) for n in names))


def colour_matrix(n_bands: int) -> np.ndarray:
    """The matrix A of METHOD §2: y = A m, y₁ = m₁, y_b = m_b − m₁.

    Returns
    -------
    A : ndarray, shape (B, B)
    """
    A = np.eye(n_bands)
    A[1:, 0] = -1.0
    return A
