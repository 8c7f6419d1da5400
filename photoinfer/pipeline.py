"""The per-HEALPix pipeline: read each pixel's stars, fit them in fixed-size batches, write its products.

The one module that mixes I/O and numerics.  Flow (docs/pipeline.md)::

    source (Catalog | file | partitioned dir) ──pixel_counts──▶ plan_units (photoinfer.pixels)
        └─ per unit (serial, or a Dask task):  read_pixels → [skip pixels whose manifest matches]
             → per batch: subset + pad to batch_size → fit_fn(model, batch, seed=batch_seed) → split
             → per pixel: summary.parquet, images.h5, posterior.nc, quicklook.png, manifest.json (last)

``fit_fn(model, catalog, *, seed, **fit_settings) -> FitResult`` is any fitting method
(normally :func:`method_fit_fn`: grid, NUTS or grid+nuts).  It always receives
exactly ``batch_size`` stars (the pipeline pads with copies of the batch's first star, flagged
unusable, which it then drops), so a jitted sampler compiles once per process.  Nothing here is device-specific: the
same code runs on a GPU when JAX sees one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import __version__
from .catalog import INFERENCE_UNUSABLE, Catalog, Flag
from .fitresult import SUMMARY_COLUMNS, FitResult
from .io import pixel_products as pp
from .pixels import NO_PIXEL, Unit, batch_seed, nside_to_order, pixel_name, plan_units
from .sightline import DEFAULT_GRID, DEFAULT_SMOOTH, ImageGrid, images_from_draws, median_profile, quantize

__all__ = ["PipelineConfig", "RunReport", "run_pipeline", "run_unit", "model_hash", "input_hash",
           "read_summaries", "take_result", "concat_results", "pixel_images", "method_fit_fn"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that determines a pixel's products (hashed into its manifest).

    Attributes
    ----------
    nside : HEALPix nside (nested, Galactic)
    batch_size : stars per fit call (one compilation serves all calls)
    seed : global seed; each batch's seed is derived from (seed, pixel, start) (:func:`photoinfer.pixels.batch_seed`)
    method : name of the fitting method (recorded; e.g. "nuts", "grid")
    fit_settings : keyword arguments passed to ``fit_fn`` (num_warmup, num_samples, ...)
    grid : (μ, E) image grid
    smooth : Gaussian smoothing of NUTS draw histograms, (σ_μ, σ_E) in bins
    image_bits : 8 (uint8) or 16 (uint16) image quantization
    write_samples : write ``posterior.nc`` (arviz) per pixel
    quicklook : write ``quicklook.png`` per pixel
    """

    nside: int
    batch_size: int = 256
    seed: int = 0
    method: str = "nuts"
    fit_settings: dict = field(default_factory=dict)
    grid: ImageGrid = DEFAULT_GRID
    smooth: tuple = DEFAULT_SMOOTH
    image_bits: int = 8
    write_samples: bool = True
    quicklook: bool = True

    def __post_init__(self):
        nside_to_order(self.nside)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict:
        return {"nside": self.nside, "batch_size": self.batch_size, "seed": self.seed, "method": self.method,
                "fit_settings": dict(sorted(self.fit_settings.items())), "grid": self.grid.to_dict(),
                "smooth": list(map(float, self.smooth)), "image_bits": self.image_bits,
                "write_samples": self.write_samples, "quicklook": self.quicklook}

    def settings_hash(self, fit_fn) -> str:
        d = self.to_dict() | {"fit_fn": f"{getattr(fit_fn, '__module__', '')}.{getattr(fit_fn, '__qualname__', fit_fn)}"}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class RunReport:
    """What a run did: pixel counts, stars, seconds, and per-unit records."""

    n_pixels: int = 0
    n_units: int = 0
    n_stars: int = 0
    pixels_done: int = 0
    pixels_skipped: int = 0
    stars_fit: int = 0
    seconds: float = 0.0
    units: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["units"] = len(self.units)
        return d


# ---------------------------------------------------------------------- hashing
def model_hash(model) -> str:
    """sha256 of the model's parameters, θ normalization and bands."""
    cols = {}

    def walk(prefix, tree):
        if isinstance(tree, dict):
            for k in sorted(tree):
                walk(f"{prefix}/{k}", tree[k])
        else:
            cols[prefix] = np.asarray(tree)
    walk("params", model.params)
    cols["theta_med"] = np.asarray(model.theta_med)
    cols["theta_std"] = np.asarray(model.theta_std)
    cols["bands"] = np.asarray(list(model.bands.names), dtype=object)
    return pp.hash_arrays(cols)


def input_hash(cat: Catalog) -> str:
    """sha256 of a pixel's star rows in the documented catalog columns."""
    from .io.catalogs import catalog_to_columns
    return pp.hash_arrays(catalog_to_columns(cat))


# ---------------------------------------------------------------------- FitResult slicing
def take_result(r: FitResult, idx) -> FitResult:
    """The stars ``idx`` (index array or slice) of a FitResult."""
    n = len(r)

    def per_star(d):
        return {k: (np.asarray(v)[..., idx] if np.ndim(v) and np.shape(v)[-1] == n else v) for k, v in d.items()}
    summary = {k: np.asarray(v)[idx] for k, v in r.summary.items()}
    attrs = dict(r.attrs)
    if "mu_E_images" in attrs:
        attrs["mu_E_images"] = (np.asarray(attrs["mu_E_images"][0])[idx], attrs["mu_E_images"][1])
    return replace(r, source_id=np.asarray(r.source_id)[idx], samples=per_star(r.samples),
                   sample_stats=per_star(r.sample_stats), summary=summary, flags=np.asarray(r.flags)[idx],
                   attrs=attrs)


def concat_results(parts: list[FitResult]) -> FitResult:
    """Concatenate FitResults of the same method and draws along the star axis."""
    if len(parts) == 1:
        return parts[0]
    cat = lambda key, dicts: {k: np.concatenate([np.asarray(d[k]) for d in dicts], axis=-1)  # noqa: E731
                              for k in dicts[0]}
    first = parts[0]
    attrs = dict(first.attrs)
    if "mu_E_images" in attrs:
        attrs["mu_E_images"] = (np.concatenate([p.attrs["mu_E_images"][0] for p in parts]), attrs["mu_E_images"][1])
    return replace(first, source_id=np.concatenate([p.source_id for p in parts]),
                   samples=cat("samples", [p.samples for p in parts]),
                   sample_stats=cat("sample_stats", [p.sample_stats for p in parts]),
                   summary={k: np.concatenate([np.asarray(p.summary[k]) for p in parts]) for k in first.summary},
                   flags=np.concatenate([p.flags for p in parts]), attrs=attrs)


# ---------------------------------------------------------------------- the fit function
def method_fit_fn(model, catalog, *, seed: int, method: str = "grid", image_grid: ImageGrid | None = DEFAULT_GRID,
                  grid_settings: dict | None = None, **kwargs) -> FitResult:
    """:func:`photoinfer.grid.methods.fit_with_method` (grid, nuts or grid+nuts) as a pipeline ``fit_fn``.

    With a grid method and ``image_grid``, the grid's own (μ, E) images (posterior mass per bin,
    from every weighted grid sample) are returned as densities in
    ``attrs["mu_E_images"] = (images, image_grid)``; NUTS draws are binned by :func:`pixel_images`.
    Stars without (l, b) use the position-free prior (the pipeline never mixes them with
    positioned stars in a batch).

    Parameters
    ----------
    method : {"grid", "nuts", "grid+nuts"}
    grid_settings : fields of :class:`photoinfer.grid.posterior.GridSettings` (keep, n_draws, ...)
    kwargs : the other arguments of ``fit_with_method`` (prior, dust, grid, num_warmup, batch_size, ...)
    """
    from .grid.methods import fit_with_method
    from .grid.posterior import GridSettings
    bins = None if image_grid is None or method == "nuts" else image_grid
    gs = GridSettings(**grid_settings) if grid_settings else None
    res, images = fit_with_method(model, catalog, method, seed=seed, images=bins, grid_settings=gs, **kwargs)
    if images is not None:
        res.attrs["mu_E_images"] = (np.asarray(images) / np.float32(image_grid.d_mu * image_grid.d_E), image_grid)
    return res


#: The pipeline passes ``image_grid=config.grid`` to fit functions with this attribute.
method_fit_fn.wants_image_grid = True


# ---------------------------------------------------------------------- images
def pixel_images(result: FitResult, grid: ImageGrid, smooth) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-star (μ, E) density images of a pixel's stars: (images (n, n_mu, n_E), frac_outside (n,), source).

    A fitting method that computes images itself (the grid) puts them in
    ``result.attrs["mu_E_images"] = (images, grid)``; they are used when their grid equals
    ``grid`` (except for stars whose summary ``method`` is "nuts": grid+nuts refits).  Otherwise
    the images are 2-D histograms of the (μ, E) draws of all chains with a
    Gaussian smoothing of ``smooth`` bins (:func:`photoinfer.sightline.images_from_draws`).
    """
    given = result.attrs.get("mu_E_images")
    mu = np.asarray(result.samples["mu"]).reshape(-1, len(result))
    E = np.asarray(result.samples["E"]).reshape(-1, len(result))
    if given is None or given[1] != grid:
        images, frac = images_from_draws(mu, E, grid, smooth)
        return images, frac, f"{result.method}-histogram"
    images, frac = np.array(given[0], np.float32), _frac_outside(mu, E, grid)
    nuts = np.flatnonzero(np.asarray(result.summary.get("method", ())) == "nuts")    # grid+nuts: refit stars
    if len(nuts):
        images[nuts] = images_from_draws(mu[:, nuts], E[:, nuts], grid, smooth)[0]
        return images, frac, "grid,nuts-histogram"
    return images, frac, result.method


def _frac_outside(mu, E, grid: ImageGrid) -> np.ndarray:
    finite = np.isfinite(mu) & np.isfinite(E)
    inside = finite & (mu >= grid.mu_min) & (mu < grid.mu_max) & (E >= grid.E_min) & (E <= grid.E_max)
    n = finite.sum(axis=0)
    return np.where(n > 0, 1.0 - inside.sum(axis=0) / np.maximum(n, 1), 1.0)


# ---------------------------------------------------------------------- one pixel's products
def _summary_table(result: FitResult, pixel: int, frac_outside: np.ndarray) -> dict:
    cols = {}
    for c in SUMMARY_COLUMNS:
        if c in result.summary:
            cols[c] = np.asarray(result.summary[c])
    for c, v in result.summary.items():
        cols.setdefault(c, np.asarray(v))
    cols["source_id"] = np.asarray(result.source_id, np.int64)
    cols["flags"] = np.asarray(result.flags, np.int64)
    if "method" not in cols:
        cols["method"] = np.full(len(result), result.method, dtype=object)
    cols["method"] = np.asarray(cols["method"]).astype(str)
    cols["pixel"] = np.full(len(result), pixel, np.int64)
    cols["image_frac_outside"] = np.asarray(frac_outside, np.float32)
    return cols


def write_pixel(out, pixel: int, cat: Catalog, result: FitResult, config: PipelineConfig, *, in_hash: str,
                mod_hash: str, set_hash: str, seeds: list, seconds_fit: float) -> dict:
    """Write one pixel's products (each atomically), then its manifest; returns the manifest."""
    from .io.tables import write_table
    t0 = time.perf_counter()
    d = pp.pixel_dir(out, config.nside, pixel)
    d.mkdir(parents=True, exist_ok=True)
    pp.clear_manifest(d)
    pp.remove_stale_temporaries(d)
    files = {}
    images, frac, source = pixel_images(result, config.grid, config.smooth)
    q, scale = quantize(images, config.image_bits)
    mass = images.sum(axis=(1, 2), dtype=np.float64)
    w = np.where(mass > 0, 1.0 / np.where(mass > 0, mass, 1.0), 0.0)
    stack = np.tensordot(w, images.astype(np.float64), axes=(0, 0))
    del images
    profile = median_profile(stack, config.grid)

    write_table(_summary_table(result, pixel, frac), d / "summary.parquet")
    files["summary"] = pp.file_record(d / "summary.parquet")
    pp.write_images(d / "images.h5", result.source_id, q, scale, frac, stack, profile, config.grid,
                    image_source=source, smooth=config.smooth, pixel=pixel, nside=config.nside)
    files["images"] = pp.file_record(d / "images.h5")
    if config.write_samples:
        from .posterior import save_inference_data, to_inference_data
        idata = to_inference_data(result, cat)
        with pp.atomic_path(d / "posterior.nc") as tmp:
            save_inference_data(idata, tmp)
        files["posterior"] = pp.file_record(d / "posterior.nc")
    if config.quicklook:
        pp.write_quicklook(d / "quicklook.png", stack, profile, config.grid,
                           f"nside {config.nside} {pixel_name(pixel)}: {len(result)} stars ({config.method})")
        files["quicklook"] = pp.file_record(d / "quicklook.png")
    manifest = {"format": "photoinfer-pixel", "format_version": pp.FORMAT_VERSION, "pixel": int(pixel),
                "nside": config.nside, "order": nside_to_order(config.nside), "frame": "galactic", "scheme": "nested",
                "input_hash": in_hash, "model_hash": mod_hash, "settings_hash": set_hash, "settings": config.to_dict(),
                "n_stars": len(result), "n_flagged": int(np.count_nonzero(result.flags)),
                "draws_per_star": int(np.prod(np.shape(result.samples["mu"])[:-1])), "batch_seeds": seeds,
                "image_source": source, "files": files, "photoinfer_version": __version__,
                "seconds_fit": round(seconds_fit, 4), "seconds_write": round(time.perf_counter() - t0, 4),
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    pp.write_json(manifest, d / pp.MANIFEST)
    return manifest


# ---------------------------------------------------------------------- one unit
def _pad_index(idx: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([idx, np.repeat(idx[:1], size - len(idx))]) if len(idx) < size else idx


def run_unit(unit: Unit, source, model, fit_fn, config: PipelineConfig, out, mod_hash: str, set_hash: str) -> dict:
    """Fit and write the pixels of one unit whose manifests do not match; returns a record.

    Batches holding only finished pixels are not rerun; a batch shared with an unfinished pixel is
    rerun whole (its seed and composition fixed by the plan) so the result is the same as in an
    uninterrupted run.
    """
    t0 = time.perf_counter()
    cat, pix = source.read_pixels(unit.pixels, config.nside)
    rows = {}
    for p in unit.pixels:
        r = np.flatnonzero(pix == p)
        rows[p] = r
    hashes = {p: input_hash(cat.subset(rows[p])) for p in unit.pixels}
    todo = {p for p in unit.pixels
            if not pp.manifest_matches(pp.pixel_dir(out, config.nside, p), hashes[p], mod_hash, set_hash)}
    record = {"unit": unit.key, "pixels": list(unit.pixels), "done": sorted(todo),
              "skipped": sorted(set(unit.pixels) - todo), "stars_fit": 0, "seconds": 0.0, "pid": os.getpid()}
    if not todo:
        record["seconds"] = time.perf_counter() - t0
        return record
    for p in unit.pixels:
        expected = sum(len(s) for b in unit.batches for s in b if s.pixel == p)
        if len(rows[p]) != expected:
            raise RuntimeError(f"pixel {p}: the source gave {len(rows[p])} stars, the plan expects {expected} "
                               f"(did the catalog change during the run?)")
    kwargs = dict(config.fit_settings)
    if getattr(fit_fn, "wants_image_grid", False):     # the method makes (μ, E) images itself
        kwargs.setdefault("image_grid", config.grid)
    parts: dict[int, list] = {p: [] for p in todo}
    seeds: dict[int, list] = {p: [] for p in todo}
    t_fit = time.perf_counter()
    for batch in unit.batches:
        if not any(s.pixel in todo for s in batch):
            continue
        idx = np.concatenate([rows[s.pixel][s.start:s.stop] for s in batch])
        n = len(idx)
        sub = cat.subset(_pad_index(idx, config.batch_size))
        if n < config.batch_size:      # padding: unique ids, and unusable so that no sampler refits it
            sub.source_id[n:] = -1 - np.arange(config.batch_size - n)
            sub.flags[n:] |= int(INFERENCE_UNUSABLE)
        s = batch_seed(config.seed, batch[0])
        res = fit_fn(model, sub, seed=s, **kwargs)
        if len(res) != config.batch_size or not np.array_equal(np.asarray(res.source_id)[:n], cat.source_id[idx]):
            raise RuntimeError(f"{unit.key}: fit function returned {len(res)} stars / other source_ids than the "
                               f"{config.batch_size} it was given")
        record["stars_fit"] += n
        k = 0
        for seg in batch:
            if seg.pixel in todo:
                parts[seg.pixel].append(take_result(res, np.arange(k, k + len(seg))))
                seeds[seg.pixel].append(s)
            k += len(seg)
    seconds_fit = time.perf_counter() - t_fit
    n_todo_stars = sum(len(rows[p]) for p in todo)
    for p in sorted(todo):
        res = concat_results(parts[p])
        if p == NO_PIXEL:
            res = replace(res, flags=np.asarray(res.flags, np.int64) | int(Flag.NO_POSITION))
            if "flags" in res.summary:
                res.summary["flags"] = res.flags
        pcat = cat.subset(rows[p])
        pixel_seconds = seconds_fit * len(rows[p]) / max(n_todo_stars, 1)
        write_pixel(out, p, pcat, res, config, in_hash=hashes[p], mod_hash=mod_hash, set_hash=set_hash,
                    seeds=seeds[p], seconds_fit=pixel_seconds)
    record["seconds"] = time.perf_counter() - t0
    return record


# ---------------------------------------------------------------------- the run
def run_pipeline(model, source, out, fit_fn, config: PipelineConfig, *, pixels=None, scheduler: str | None = None,
                 workers: int = 1, retries: int = 2, merge: bool = True, progress: bool = False) -> RunReport:
    """Fit every pixel (or the units holding ``pixels``) of a catalog and write per-pixel products.

    Parameters
    ----------
    model : StellarModel
    source : Catalog, catalog path, partitioned directory (:mod:`photoinfer.io.partitioned`), or a source object
    out : output directory
    fit_fn : ``fit_fn(model, catalog, *, seed, **config.fit_settings) -> FitResult``, a module-level
        function (it is pickled to Dask workers)
    config : PipelineConfig
    pixels : iterable of pixel ids at ``config.nside`` (−1 = stars without position); None = all
    scheduler : None/"serial" (in this process; with workers > 1 means "processes"), "processes"
        (a Dask LocalCluster of ``workers`` single-threaded worker processes), "threads" (one
        worker process with ``workers`` threads), or a Dask scheduler address ("tcp://host:8786")
    workers : number of Dask workers (processes) or threads
    retries : times Dask resubmits a unit whose worker died
    merge : after the run, write ``OUT/nside{N}/summary.parquet`` with every finished pixel's rows
    progress : show a progress bar (stars in finished units) on stderr

    Returns
    -------
    RunReport
    """
    from .io.partitioned import open_source
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = open_source(source, model.bands)
    counts = src.pixel_counts(config.nside)
    units = plan_units(counts, config.batch_size)
    if pixels is not None:
        want = {int(p) for p in pixels}
        missing = want - set(counts)
        if missing:
            log.warning("no stars in pixel(s) %s at nside %d", sorted(missing)[:10], config.nside)
        units = [u for u in units if want & set(u.pixels)]
    mod_hash, set_hash = model_hash(model), config.settings_hash(fit_fn)
    report = RunReport(n_pixels=sum(len(u.pixels) for u in units), n_units=len(units),
                       n_stars=sum(u.n_stars for u in units))
    log.info("%d stars in %d pixel(s) at nside %d, %d unit(s) of batches of %d", report.n_stars, report.n_pixels,
             config.nside, len(units), config.batch_size)
    pp.write_json({"settings": config.to_dict(), "settings_hash": set_hash, "model_hash": mod_hash,
                   "photoinfer_version": __version__, "n_stars_catalog": len(src),
                   "pixel_counts": {str(k): v for k, v in sorted(counts.items())}},
                  out / f"nside{config.nside}" / "run.json")
    args = (src, model, fit_fn, config, str(out), mod_hash, set_hash)
    from tqdm import tqdm
    sizes = {u.key: u.n_stars for u in units}
    with tqdm(total=report.n_stars, unit="star", disable=not progress) as bar:
        for rec in _execute(units, args, scheduler, workers, retries):
            report.units.append(rec)
            report.pixels_done += len(rec["done"])
            report.pixels_skipped += len(rec["skipped"])
            report.stars_fit += rec["stars_fit"]
            bar.update(sizes[rec["unit"]])
    if merge:
        cols = read_summaries(out, config.nside)
        if cols is not None:
            from .io.tables import write_table
            write_table(cols, out / f"nside{config.nside}" / "summary.parquet")
    report.seconds = time.perf_counter() - t0
    log.info("done: %d pixel(s) fit, %d skipped (finished before), %d stars fit, %.1f s", report.pixels_done,
             report.pixels_skipped, report.stars_fit, report.seconds)
    return report


def _execute(units, args, scheduler, workers, retries):
    """Run the units serially or on Dask; yields each unit's record as it finishes."""
    if (scheduler in (None, "serial", "none")) and workers <= 1:
        for u in units:
            yield run_unit(u, *args)
        return
    from distributed import Client, LocalCluster, as_completed
    cluster = None
    if scheduler in (None, "serial", "none", "processes"):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    elif scheduler == "threads":
        cluster = LocalCluster(n_workers=1, threads_per_worker=workers, processes=False, dashboard_address=None)
    client = Client(cluster) if cluster is not None else Client(scheduler)
    try:
        src, model, *rest = args
        src_f, model_f = client.scatter([src, model], broadcast=True, hash=False)
        futures = [client.submit(run_unit, u, src_f, model_f, *rest, key=f"{u.key}-{i}", retries=retries, pure=False)
                   for i, u in enumerate(units)]
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def read_summaries(out, nside: int, pixels=None) -> dict | None:
    """Concatenate the ``summary.parquet`` of every finished pixel (manifest present) at ``nside``.

    Returns columns sorted by (pixel, input order), or None when no pixel is finished.
    """
    from .io.tables import read_table
    base = Path(out) / f"nside{int(nside)}"
    tables = []
    for d in sorted(base.glob("pix*")) + sorted(base.glob("nopos")):
        m = pp.read_manifest(d)
        if m is None or (pixels is not None and m["pixel"] not in pixels):
            continue
        tables.append((m["pixel"], read_table(d / m["files"]["summary"]["name"])))
    if not tables:
        return None
    tables.sort(key=lambda t: t[0])
    keys = list(tables[0][1])
    return {k: np.concatenate([t[k] for _, t in tables if k in t]) for k in keys}
