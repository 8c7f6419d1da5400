"""Catalogs larger than memory: chunked reading and HEALPix-partitioned Parquet datasets.

:func:`iter_catalog_chunks` streams a catalog as :class:`~photoinfer.catalog.Catalog` chunks:
Parquet files by record batches (pyarrow), a directory of Parquet files (for example a HATS
catalog: ``Norder=*/Dir=*/Npix=*.parquet``, read with pyarrow alone, no lsdb needed) file by file;
other formats are read whole and sliced.

:func:`partition_catalog` writes a **Galactic** HEALPix-partitioned dataset in one streaming pass::

    DIR/_partition.json                      written last: order, frame, row counts per partition
    DIR/Norder={k}/Npix={p}/part{c:06d}.parquet    rows of partition p from input chunk c
    DIR/Norder={k}/Npix=-1/part{c:06d}.parquet     stars without a position

in photoinfer's catalog columns (docs/catalogs.md) plus ``_gal_healpix_29`` (nested Galactic
pixel at order 29, −1 without position) and ``_row`` (row number in the input).  It is built in
``DIR.tmp`` and renamed when complete.  :class:`PartitionedCatalog` reads the stars of any set of
pixels at any nside from it (reading only the partitions that overlap), in input order.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from ..catalog import Catalog
from ..conventions import DEFAULT_BANDS, BandSet
from ..pixels import NO_PIXEL, ORDER_MAX, healpix29, nside_to_order, pixel_at_order

__all__ = ["iter_catalog_chunks", "partition_catalog", "PartitionedCatalog", "InMemoryCatalog", "open_source",
           "PARTITION_INDEX"]

log = logging.getLogger(__name__)

PARTITION_INDEX = "_partition.json"
_HP = "_gal_healpix_29"
_ROW = "_row"


def _parquet_files(directory: Path) -> list[Path]:
    files = [p for p in directory.rglob("*.parquet")
             if not any(part.startswith((".", "_")) for part in p.relative_to(directory).parts)]
    return sorted(files, key=lambda p: [int(s) if s.isdigit() else s for s in
                                        str(p.relative_to(directory)).replace("=", "/").split("/")])


def iter_catalog_chunks(path: str | os.PathLike, rows: int = 1_000_000,
                        bands: BandSet = DEFAULT_BANDS) -> Iterator[Catalog]:
    """Yield a catalog in chunks of at most ``rows`` stars.

    Parameters
    ----------
    path : a .parquet file (streamed by record batches), a directory of .parquet files (each
        streamed; HATS layout included), or any file :func:`~photoinfer.io.catalogs.read_catalog`
        reads (read whole, then sliced)
    rows : stars per chunk

    Without a ``source_id`` column, source_id is the row number over the whole input.
    """
    from .catalogs import _arrow_to_numpy, catalog_from_columns, read_catalog
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"catalog {path} does not exist")
    rows = max(int(rows), 1)
    if path.is_dir() or path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq
        files = _parquet_files(path) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"{path}: directory holds no .parquet files")
        offset = 0
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=rows):
                cols = {c: _arrow_to_numpy(batch.column(i)) for i, c in enumerate(batch.schema.names)}
                n = batch.num_rows
                if not any(c.lower() == "source_id" for c in cols):
                    cols["source_id"] = np.arange(offset, offset + n, dtype=np.int64)
                offset += n
                if n:
                    yield catalog_from_columns(cols, bands, name=f"{f.name}[{offset - n}:{offset}]")
        return
    cat = read_catalog(path, bands)
    for start in range(0, len(cat), rows):
        yield cat.subset(slice(start, start + rows))


def partition_catalog(path: str | os.PathLike, out: str | os.PathLike, nside: int = 32, rows: int = 1_000_000,
                      bands: BandSet = DEFAULT_BANDS, overwrite: bool = False) -> "PartitionedCatalog":
    """Stream a catalog into a Galactic HEALPix-partitioned Parquet dataset (layout in the module docstring).

    Parameters
    ----------
    path : input catalog (anything :func:`iter_catalog_chunks` reads)
    out : output directory (must not exist unless ``overwrite``)
    nside : partition nside (files per partition; fits may use any nside)
    rows : stars read per chunk (bounds memory)
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from .catalogs import catalog_to_columns
    out = Path(out)
    order = nside_to_order(nside)
    if out.exists():
        if not overwrite:
            raise ValueError(f"{out} exists (use overwrite=True / --overwrite)")
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    counts: dict[int, int] = {}
    offset = 0
    for c, cat in enumerate(iter_catalog_chunks(path, rows, bands)):
        h29 = healpix29(cat.l, cat.b)
        part = pixel_at_order(h29, ORDER_MAX, order)
        cols = catalog_to_columns(cat)
        cols[_HP] = h29
        cols[_ROW] = np.arange(offset, offset + len(cat), dtype=np.int64)
        offset += len(cat)
        order_idx = np.argsort(part, kind="stable")
        ids, starts = np.unique(part[order_idx], return_index=True)
        bounds = list(starts) + [len(part)]
        for i, p in enumerate(ids):
            idx = order_idx[bounds[i]:bounds[i + 1]]
            d = tmp / f"Norder={order}" / f"Npix={int(p)}"
            d.mkdir(parents=True, exist_ok=True)
            table = pa.table({k: _column(np.asarray(v)[idx]) for k, v in cols.items()})
            pq.write_table(table, d / f"part{c:06d}.parquet")
            counts[int(p)] = counts.get(int(p), 0) + len(idx)
    index = {"format": "photoinfer-partitioned", "format_version": 1, "order": order, "nside": int(nside),
             "frame": "galactic", "scheme": "nested", "n_rows": offset, "source": str(path),
             "counts": {str(k): v for k, v in sorted(counts.items())}}
    tmp.mkdir(parents=True, exist_ok=True)
    with open(tmp / PARTITION_INDEX, "w") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, out)
    log.info("partitioned %d stars into %d partitions at nside %d in %s", offset, len(counts), nside, out)
    return PartitionedCatalog(out, bands)


def _column(a: np.ndarray):
    return list(a) if a.ndim > 1 else a


class InMemoryCatalog:
    """A :class:`Catalog` held in memory, served by pixel (same interface as :class:`PartitionedCatalog`)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._pix: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.catalog)

    def pixels(self, nside: int) -> np.ndarray:
        """(N,) nested Galactic pixel of each star at ``nside`` (−1 without position)."""
        from ..pixels import pixel_index
        if nside not in self._pix:
            self._pix[nside] = pixel_index(self.catalog.l, self.catalog.b, nside)
        return self._pix[nside]

    def pixel_counts(self, nside: int) -> dict[int, int]:
        ids, n = np.unique(self.pixels(nside), return_counts=True)
        return {int(p): int(k) for p, k in zip(ids, n)}

    def read_pixels(self, pixels, nside: int) -> tuple[Catalog, np.ndarray]:
        """Stars of ``pixels``: (catalog sorted by pixel then input order, (n,) pixel ids)."""
        pix = self.pixels(nside)
        sel = np.flatnonzero(np.isin(pix, np.asarray(list(pixels), np.int64)))
        sel = sel[np.argsort(pix[sel], kind="stable")]
        return self.catalog.subset(sel), pix[sel]

    def __getstate__(self):
        return {"catalog": self.catalog, "_pix": {}}


class PartitionedCatalog:
    """A dataset written by :func:`partition_catalog`, read by pixel at any nside."""

    def __init__(self, path: str | os.PathLike, bands: BandSet = DEFAULT_BANDS):
        self.path = Path(path)
        self.bands = bands
        idx = self.path / PARTITION_INDEX
        if not idx.is_file():
            raise FileNotFoundError(f"{self.path}: no {PARTITION_INDEX} (not a complete photoinfer partitioned "
                                    f"catalog; write one with `photoinfer partition`)")
        with open(idx) as f:
            self.index = json.load(f)
        self.order = int(self.index["order"])
        self.counts = {int(k): int(v) for k, v in self.index["counts"].items()}

    def __len__(self) -> int:
        return int(self.index["n_rows"])

    def _dir(self, p: int) -> Path:
        return self.path / f"Norder={self.order}" / f"Npix={int(p)}"

    def _read_column(self, p: int, column: str) -> np.ndarray:
        import pyarrow.parquet as pq
        files = sorted(self._dir(p).glob("part*.parquet"))
        return np.concatenate([pq.read_table(f, columns=[column]).column(0).to_numpy() for f in files])

    def pixel_counts(self, nside: int) -> dict[int, int]:
        order = nside_to_order(nside)
        out: dict[int, int] = {}
        for p, n in self.counts.items():
            if p == NO_PIXEL:
                keys, k = np.array([NO_PIXEL]), np.array([n])
            elif order <= self.order:
                keys, k = np.array([p >> (2 * (self.order - order))]), np.array([n])
            else:
                keys, k = np.unique(pixel_at_order(self._read_column(p, _HP), ORDER_MAX, order), return_counts=True)
            for a, b in zip(keys, k):
                out[int(a)] = out.get(int(a), 0) + int(b)
        return out

    def _partitions_for(self, pixels, order: int) -> list[int]:
        parts = set()
        for q in pixels:
            q = int(q)
            if q == NO_PIXEL:
                parts.add(NO_PIXEL)
            elif order >= self.order:
                parts.add(q >> (2 * (order - self.order)))
            else:
                shift = 2 * (self.order - order)
                parts.update(range(q << shift, (q + 1) << shift))
        return sorted(p for p in parts if p in self.counts)

    def read_pixels(self, pixels, nside: int) -> tuple[Catalog, np.ndarray]:
        """Stars of ``pixels`` at ``nside``: (catalog sorted by pixel then input row, (n,) pixel ids)."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from .catalogs import _arrow_to_numpy, catalog_from_columns
        order = nside_to_order(nside)
        want = np.asarray(sorted(int(p) for p in pixels), np.int64)
        tables = [pq.read_table(f) for p in self._partitions_for(want, order)
                  for f in sorted(self._dir(p).glob("part*.parquet"))]
        if not tables:
            return None, np.zeros(0, np.int64)
        t = pa.concat_tables(tables, promote_options="default")
        cols = {c: _arrow_to_numpy(t.column(c)) for c in t.column_names}
        for c, v in cols.items():      # list columns (none in the documented format) back to arrays
            if v.dtype == object and len(v) and isinstance(v[0], (list, np.ndarray)):
                cols[c] = np.stack(v)
        h29 = cols.pop(_HP).astype(np.int64)
        row = cols.pop(_ROW).astype(np.int64)
        pix = pixel_at_order(h29, ORDER_MAX, order)
        sel = np.flatnonzero(np.isin(pix, want))
        sel = sel[np.lexsort((row[sel], pix[sel]))]
        cols = {k: v[sel] for k, v in cols.items()}
        cat = catalog_from_columns(cols, self.bands, name=f"{self.path.name}[{len(want)} pixel(s)]")
        return cat, pix[sel]


def open_source(source, bands: BandSet = DEFAULT_BANDS):
    """A pixel-addressable star source from a Catalog, a catalog file, or a partitioned directory."""
    if isinstance(source, (InMemoryCatalog, PartitionedCatalog)):
        return source
    if isinstance(source, Catalog):
        return InMemoryCatalog(source)
    path = Path(source)
    if path.is_dir() and (path / PARTITION_INDEX).is_file():
        return PartitionedCatalog(path, bands)
    if path.is_dir():
        raise ValueError(f"{path}: a directory that is not a photoinfer partitioned catalog (no {PARTITION_INDEX}); "
                         f"run `photoinfer partition --catalog {path} --out DIR` first")
    from .catalogs import read_catalog
    return InMemoryCatalog(read_catalog(path, bands))
