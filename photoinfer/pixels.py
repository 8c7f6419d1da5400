"""HEALPix pixels of the sky and the fixed-size batches that carry their stars through a fit.

Stars are assigned to **nested** HEALPix pixels of **Galactic** (l, b) at a chosen ``nside``
(``healpy.ang2pix(nside, l, b, nest=True, lonlat=True)``).  Stars without a finite (l, b) get
the pixel id :data:`NO_PIXEL` (= −1) and the flag :attr:`~photoinfer.catalog.Flag.NO_POSITION`;
they are fit like any other pixel (with the position-free prior) and never dropped.

Packing (:func:`plan_units`).  A fit call always receives exactly ``batch_size`` stars, so one
compilation serves every call.  A pixel with n stars gives ``n // batch_size`` full batches of its
own; the remainders (< batch_size stars each) are packed whole, in pixel order, into shared
batches (except the stars without position, pixel −1, which never share a batch) (next fit: a remainder that does not fit in the open batch closes it).  A batch is a
tuple of :class:`Segment` (pixel, start, stop): the star index ranges inside each pixel, so the
outputs of pixels sharing a batch are never mixed.  Only the last shared batch of a run is
partly empty; the fit call pads it.

A **unit** (:class:`Unit`) is the work of one task: one shared batch and all batches of the
pixels in it.  Units are independent (no batch spans two units), so they run in any order, on
any worker, and are redone whole after a crash.  The plan depends only on the number of stars
per pixel and ``batch_size``, and each batch's random seed only on (global seed, pixel,
start) (:func:`batch_seed`), so results do not depend on order, worker, restarts or on which
pixels a run selects.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NO_PIXEL", "ORDER_MAX", "nside_to_order", "pixel_index", "healpix29", "pixel_at_order",
           "Segment", "Unit", "plan_units", "batch_seed", "pixel_name", "stars_by_pixel"]

#: Pixel id of stars without a sky position.
NO_PIXEL = -1
#: Order of the fine nested index stored in partitioned catalogs (as HATS' ``_healpix_29``).
ORDER_MAX = 29


def nside_to_order(nside: int) -> int:
    """log2(nside); raises ValueError unless nside is a power of two in [1, 2**29]."""
    nside = int(nside)
    order = nside.bit_length() - 1
    if nside < 1 or (1 << order) != nside or order > ORDER_MAX:
        raise ValueError(f"nside must be a power of two between 1 and 2**{ORDER_MAX}, got {nside}")
    return order


def pixel_index(l, b, nside: int) -> np.ndarray:
    """Nested HEALPix pixel of each star in Galactic coordinates.

    Parameters
    ----------
    l, b : (N,) Galactic longitude and latitude [deg]; NaN where unknown
    nside : int, a power of two

    Returns
    -------
    (N,) int64 pixel ids in [0, 12 nside²), :data:`NO_PIXEL` where l or b is not finite
    (or |b| > 90°).
    """
    import healpy as hp
    nside_to_order(nside)
    l = np.asarray(l, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(l) & np.isfinite(b) & (np.abs(b) <= 90.0)
    out = np.full(l.shape, NO_PIXEL, dtype=np.int64)
    if ok.any():
        out[ok] = hp.ang2pix(int(nside), l[ok], b[ok], nest=True, lonlat=True)
    return out


def healpix29(l, b) -> np.ndarray:
    """(N,) int64 nested pixel at order 29 in Galactic coordinates (:data:`NO_PIXEL` without position)."""
    return pixel_index(l, b, 1 << ORDER_MAX)


def pixel_at_order(pix, order_from: int, order_to: int) -> np.ndarray:
    """Nested pixel ids at a coarser order (``order_to`` <= ``order_from``); :data:`NO_PIXEL` stays."""
    pix = np.asarray(pix, dtype=np.int64)
    if order_to > order_from:
        raise ValueError(f"pixel_at_order: cannot refine order {order_from} to {order_to}")
    return np.where(pix < 0, NO_PIXEL, pix >> (2 * (order_from - order_to)))


def pixel_name(pixel: int) -> str:
    """Directory name of a pixel's outputs: ``pix{id:07d}``, or ``nopos`` for :data:`NO_PIXEL`."""
    return "nopos" if int(pixel) == NO_PIXEL else f"pix{int(pixel):07d}"


def stars_by_pixel(pix: np.ndarray) -> dict[int, np.ndarray]:
    """Row indices of each pixel's stars, in input order (stable), keyed by pixel id (sorted)."""
    pix = np.asarray(pix, dtype=np.int64)
    order = np.argsort(pix, kind="stable")
    ids, starts = np.unique(pix[order], return_index=True)
    bounds = list(starts) + [len(pix)]
    return {int(p): order[bounds[i]:bounds[i + 1]] for i, p in enumerate(ids)}


@dataclass(frozen=True)
class Segment:
    """Stars ``start:stop`` (indices in the pixel's own star list) of ``pixel``."""

    pixel: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Unit:
    """One task: the pixels it completes and the batches (tuples of :class:`Segment`) that fit them."""

    pixels: tuple
    batches: tuple

    @property
    def n_stars(self) -> int:
        return sum(len(s) for batch in self.batches for s in batch)

    @property
    def key(self) -> str:
        """A name for logs and Dask task keys (first pixel and pixel count)."""
        return f"unit-{pixel_name(self.pixels[0])}-{len(self.pixels)}"


def plan_units(counts: dict, batch_size: int) -> list[Unit]:
    """Pack pixels into fixed-size batches and group them into independent units.

    Parameters
    ----------
    counts : dict pixel id -> number of stars (pixels with 0 stars are ignored)
    batch_size : int, stars per fit call

    Returns
    -------
    list of :class:`Unit`, ordered by first pixel; every star of every pixel is in exactly one
    segment of exactly one batch, and every batch has at most ``batch_size`` stars.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    units: list[Unit] = []
    open_pixels: list[int] = []
    open_full: list[tuple] = []
    open_shared: list[Segment] = []
    fill = 0

    def close():
        nonlocal open_pixels, open_full, open_shared, fill
        if open_pixels:
            batches = tuple(open_full) + ((tuple(open_shared),) if open_shared else ())
            units.append(Unit(pixels=tuple(open_pixels), batches=batches))
        open_pixels, open_full, open_shared, fill = [], [], [], 0

    for p in sorted(int(k) for k, v in counts.items() if v > 0):
        n = int(counts[p])
        n_full, r = divmod(n, batch_size)
        full = tuple((Segment(p, i * batch_size, (i + 1) * batch_size),) for i in range(n_full))
        if r == 0:                      # a pixel of whole batches is a unit of its own
            units.append(Unit(pixels=(p,), batches=full))
            continue
        if p == NO_PIXEL:               # stars without position never share a batch (position-free prior)
            units.append(Unit(pixels=(p,), batches=full + ((Segment(p, n_full * batch_size, n),),)))
            continue
        if fill + r > batch_size:
            close()
        open_pixels.append(p)
        open_full.extend(full)
        open_shared.append(Segment(p, n_full * batch_size, n))
        fill += r
    close()
    return units


def batch_seed(seed: int, segment: Segment) -> int:
    """Seed of the fit call whose first segment is ``segment``: a function of (seed, pixel, start) only.

    Returns an int in [0, 2**31).
    """
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(segment.pixel) + 1, int(segment.start)])
    return int(ss.generate_state(1, dtype=np.uint32)[0] >> 1)
