"""Per-pixel output files of the pixel pipeline, each written atomically, and the manifest written last.

Layout (docs/pipeline.md)::

    OUT/nside{NSIDE}/{pix0001234 | nopos}/
        summary.parquet   one row per star: SUMMARY_COLUMNS + pixel, image_frac_outside
        images.h5         per-star (μ, E) posterior images (format below)
        posterior.nc      arviz InferenceData of the draws (photoinfer.posterior), if asked for
        quicklook.png     stacked (μ, E) image and median E(μ) profile
        manifest.json     written last: a pixel is finished iff its manifest exists and matches

Every file is written to a hidden temporary name in the same directory (``.NAME.tmp<pid>``) and
renamed with ``os.replace``, so a file with its final name is always complete.  Before a pixel
is redone its old manifest is removed first, so a crash never leaves a manifest next to files
of another run.

``images.h5``: datasets ``source_id`` (n,) int64; ``images`` (n, n_mu, n_E) uint8, gzip-4 +
shuffle, chunked one star per chunk, per-star normalized: density p ≈ images · scale / 255
[mag⁻²]; ``scale`` (n,) float32; ``frac_outside`` (n,) float32 (probability off the grid);
``stack`` (n_mu, n_E) float32 (sum of the stars' unit-mass images); ``profile_median_E`` (n_mu,)
float32.  Attributes: ``mu_edges``, ``E_edges`` (bin edges [mag]), ``grid`` (JSON of
:class:`~photoinfer.sightline.ImageGrid`), ``image_source`` (``nuts-histogram`` or ``grid``),
``smooth_bins`` (σ_μ, σ_E of the histogram smoothing, bins), ``quantization``, ``pixel``,
``nside``, ``format_version``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..sightline import ImageGrid, dequantize

__all__ = ["MANIFEST", "FORMAT_VERSION", "pixel_dir", "atomic_path", "write_json", "write_images", "read_images",
           "write_quicklook", "read_manifest", "manifest_matches", "clear_manifest", "file_record",
           "hash_arrays", "remove_stale_temporaries"]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def pixel_dir(out: str | os.PathLike, nside: int, pixel: int) -> Path:
    """``OUT/nside{NSIDE}/{pixel_name}`` (not created)."""
    from ..pixels import pixel_name
    return Path(out) / f"nside{int(nside)}" / pixel_name(pixel)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete ``.*.tmp<pid>`` files left by a killed run in ``directory``; returns how many."""
    d = Path(directory)
    if not d.is_dir():
        return 0
    n = 0
    for f in d.glob(".*.tmp*"):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
            n += 1
    return n


def write_json(obj, path: str | os.PathLike) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def hash_arrays(columns: dict) -> str:
    """sha256 of named arrays (names, dtypes, shapes and values; order of names irrelevant)."""
    h = hashlib.sha256()
    for k in sorted(columns):
        a = np.asarray(columns[k])
        if a.dtype.kind in "OUS":
            a = np.array([str(v) for v in a.ravel()], dtype=object)
            data = "\x00".join(a.tolist()).encode()
        else:
            data = np.ascontiguousarray(a).tobytes()
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(data)
    return h.hexdigest()


def file_record(path: Path) -> dict:
    """``{"name", "bytes", "sha256"}`` of a written file (recorded in the manifest)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": h.hexdigest()}


def write_images(path, source_id, q, scale, frac_outside, stack, profile, grid: ImageGrid, *, image_source: str,
                 smooth, pixel: int, nside: int) -> Path:
    """Write ``images.h5`` (format in the module docstring) atomically."""
    import h5py
    n = len(source_id)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("source_id", data=np.asarray(source_id, np.int64))
            kw = dict(compression="gzip", compression_opts=4, shuffle=True,
                      chunks=(1, grid.n_mu, grid.n_E)) if n else {}
            f.create_dataset("images", data=q, **kw)
            f.create_dataset("scale", data=np.asarray(scale, np.float32))
            f.create_dataset("frac_outside", data=np.asarray(frac_outside, np.float32))
            f.create_dataset("stack", data=np.asarray(stack, np.float32), compression="gzip", compression_opts=4)
            f.create_dataset("profile_median_E", data=np.asarray(profile, np.float32))
            f.attrs.update(mu_edges=grid.mu_edges, E_edges=grid.E_edges, grid=json.dumps(grid.to_dict()),
                           image_source=image_source, smooth_bins=np.asarray(smooth, np.float64),
                           quantization=f"{q.dtype.name}: p = images * scale / {np.iinfo(q.dtype).max} [mag^-2]",
                           pixel=int(pixel), nside=int(nside), format_version=FORMAT_VERSION)
    return Path(path)


def read_images(path, dequantized: bool = True) -> dict:
    """Read ``images.h5``: dict with ``source_id``, ``images`` (float32 densities, or the stored
    integers with ``dequantized=False``), ``scale``, ``frac_outside``, ``stack``, ``profile_median_E``,
    ``grid`` (:class:`ImageGrid`) and ``attrs``."""
    import h5py
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in ("source_id", "images", "scale", "frac_outside", "stack", "profile_median_E")}
        attrs = dict(f.attrs)
    if dequantized:
        out["images"] = dequantize(out["images"], out["scale"])
    out["grid"] = ImageGrid(**json.loads(attrs["grid"]))
    out["attrs"] = attrs
    return out


def write_quicklook(path, stack, profile, grid: ImageGrid, title: str) -> Path:
    """Quick-look PNG: the stacked (μ, E) image (log stretch) with the median E(μ) profile over it."""
    import matplotlib
    from matplotlib.figure import Figure
    del matplotlib
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    s = np.asarray(stack, dtype=np.float64)
    top = s.max() if s.size and s.max() > 0 else 1.0
    ax.imshow(np.log10(s.T / top + 1e-4), origin="lower", aspect="auto", cmap="Greys", vmin=-4, vmax=0,
              extent=(grid.mu_min, grid.mu_max, grid.E_min, grid.E_max), interpolation="nearest")
    ax.plot(grid.mu_centers, profile, color="C3", lw=1.5, label="median E(μ)")
    finite = np.isfinite(profile)
    if finite.any():
        ax.set_ylim(grid.E_min, min(grid.E_max, max(0.2, 1.5 * float(np.nanmax(profile)) + 0.1)))
    ax.set_xlabel("distance modulus μ [mag]")
    ax.set_ylabel("E [mag]")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def read_manifest(directory) -> dict | None:
    """The pixel's manifest, or None when absent or unreadable (an unfinished pixel)."""
    p = Path(directory) / MANIFEST
    try:
        with open(p) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None


def manifest_matches(directory, input_hash: str | None, model_hash: str, settings_hash: str) -> bool:
    """True when the manifest exists, its hashes equal these (``input_hash`` None: not checked) and
    every listed file exists with its recorded size."""
    m = read_manifest(directory)
    if m is None or m.get("format_version") != FORMAT_VERSION:
        return False
    if m.get("model_hash") != model_hash or m.get("settings_hash") != settings_hash:
        return False
    if input_hash is not None and m.get("input_hash") != input_hash:
        return False
    for rec in m.get("files", {}).values():
        f = Path(directory) / rec["name"]
        if not f.is_file() or f.stat().st_size != rec["bytes"]:
            return False
    return True


def clear_manifest(directory) -> None:
    """Remove a pixel's manifest (first step of redoing it)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(directory) / MANIFEST)
