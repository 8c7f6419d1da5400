"""``photoinfer fit --nside N``: the options and the glue of the HEALPix pixel pipeline (not a command itself).

:func:`add_pixel_arguments` adds the pipeline's options to ``photoinfer fit``; with ``--nside``,
``fit`` calls :func:`run_pixels`, which turns the parsed arguments into a fit function
(:func:`fit_function`) and a :class:`~photoinfer.pipeline.PipelineConfig`.  See docs/pipeline.md.
"""
from __future__ import annotations

import argparse

#: Text appended to ``photoinfer fit --help``.
PIXELS_DESCRIPTION = """\
with --nside N (the HEALPix pixel pipeline, for dust mapping and catalogs of any size):
  split the stars into nested HEALPix pixels of Galactic (l, b), fit them in fixed-size batches
  (one compilation serves all) and write, under OUT/nside{N}/pix{ID:07d}/ (stars without a
  position: OUT/nside{N}/nopos/), per pixel:
    summary.parquet  one row per star (as above, plus pixel, image_frac_outside)
    images.h5        per-star (mu, E) posterior images on --image-grid (always; uint8, per-star scale)
    posterior.nc     the draws (arviz; not with --no-posterior)
    quicklook.png    stacked (mu, E) image with the median E(mu) profile
    manifest.json    written last: hashes of the input rows, model and settings
  and OUT/nside{N}/summary.parquet (all pixels) at the end.  A rerun skips every pixel whose
  manifest matches and redoes the others: a killed run is simply started again, with the same
  results (each batch's seed derives from --seed, the pixel and the position).  --catalog may be
  a directory written by 'photoinfer partition' (read pixel by pixel: larger than memory).

pixel pipeline examples:
  photoinfer fit --catalog stars.parquet --out run1 --nside 64 --method grid
  photoinfer fit --catalog parts/ --out run1 --nside 64 --pixels 1024,1025 --workers 2
  photoinfer fit --catalog parts/ --out run1 --nside 64 --method nuts --scheduler tcp://head:8786
"""

#: Stars per fit call by method when --batch-size is not given (NUTS: also its vmapped batch, at most 25).
DEFAULT_BATCH = {"nuts": 25, "grid": 256, "grid+nuts": 256}


def add_pixel_arguments(p) -> None:
    """The pixel pipeline's options and the grid's --num-draws / --keep (groups of ``photoinfer fit``)."""
    g = p.add_argument_group("HEALPix pixel pipeline (with --nside)")
    g.add_argument("--nside", type=int, metavar="N", default=None,
                   help="fit pixel by pixel: HEALPix nside (power of two) of nested Galactic pixels")
    g.add_argument("--pixels", metavar="LIST", default=None,
                   help="only these pixel ids at --nside, comma-separated (-1: stars without position); default all")
    g.add_argument("--scheduler", default=None, metavar="threads|processes|ADDRESS",
                   help="Dask: 'processes' (a local cluster of --workers processes; the default when --workers > 1), "
                        "'threads' (one process, --workers threads), or a scheduler address tcp://host:port")
    g.add_argument("--workers", type=int, default=1, metavar="K", help="Dask workers (default 1: run in this process)")
    g.add_argument("--retries", type=int, default=2, help="times Dask resubmits a pixel group whose worker died")
    g.add_argument("--image-grid", default="4,19,120,0,7,700", metavar="MU0,MU1,NMU,E0,E1,NE",
                   help="(mu, E) image grid (default Bayestar's: mu 4-19 in 120 bins, E 0-7 in 700)")
    g.add_argument("--image-bits", type=int, choices=(8, 16), default=8, help="image quantization (default uint8)")
    g.add_argument("--quicklook", action=argparse.BooleanOptionalAction, default=True,
                   help="write quicklook.png per pixel (default on)")
    g = p.add_argument_group("grid methods")
    g.add_argument("--num-draws", type=int, default=None, metavar="N",
                   help="grid methods: posterior draws per star (default 1000)")
    g.add_argument("--keep", type=int, default=None, metavar="K",
                   help="grid methods: grid points drawn per star from the Laplace weights (default 1024)")


def grid_settings(args):
    """GridSettings from --num-draws / --keep (None: the defaults)."""
    from ..grid.posterior import GridSettings
    kw = grid_settings_dict(args)
    return GridSettings(**kw) if kw else None


def grid_settings_dict(args) -> dict:
    """The GridSettings fields given on the command line."""
    return {k: v for k, v in (("n_draws", args.num_draws), ("keep", args.keep)) if v is not None}


def fit_function(args) -> tuple:
    """(fit_fn, fit_settings): the pipeline calls ``fit_fn(model, batch, seed=s, **fit_settings)``."""
    from ..infer.fit import REFINE_ROUNDS
    from ..pipeline import method_fit_fn
    settings = {"method": args.method, "prior": args.prior, "dust": args.dust, "E_max": args.e_max,
                "use_parallax": not args.no_parallax, "use_position": not args.no_position}
    if args.method != "grid":
        settings |= {"num_warmup": args.num_warmup, "num_samples": args.num_samples, "num_chains": args.num_chains,
                     "batch_size": min(args.batch_size or DEFAULT_BATCH["nuts"], DEFAULT_BATCH["nuts"]),
                     "refine": 0 if args.no_refine else REFINE_ROUNDS, "guide": not args.no_guide}
    if args.method != "nuts" or not args.no_guide:
        settings |= {"grid": args.grid, "grid_settings": grid_settings_dict(args)}
    if args.method == "grid+nuts":
        settings |= {"min_grid_ess": args.min_grid_ess, "exact": args.exact}
    return method_fit_fn, settings


def check_pixel_options(args) -> None:
    """ValueError for a bad --nside / --workers, or a pipeline-only option without --nside (before any work)."""
    if args.nside is not None:
        from ..pixels import nside_to_order
        nside_to_order(args.nside)
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    given = [o for o, v in (("--pixels", args.pixels), ("--scheduler", args.scheduler),
                            ("--workers", args.workers != 1)) if v]
    if args.nside is None and given:
        raise ValueError(f"{', '.join(given)} need --nside (the HEALPix pixel pipeline)")


def parse_pixels(text: str | None) -> list[int] | None:
    """``"1,2,-1"`` → [1, 2, -1]; None/"" → None (all pixels)."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--pixels expects comma-separated integers, got {text!r}") from None


def pipeline_setup(args) -> tuple:
    """(fit_fn, PipelineConfig) from ``photoinfer fit``'s parsed arguments."""
    from ..pipeline import PipelineConfig
    from ..sightline import ImageGrid
    fit_fn, fit_settings = fit_function(args)
    config = PipelineConfig(nside=args.nside, batch_size=args.batch_size or DEFAULT_BATCH[args.method], seed=args.seed,
                            method=args.method, fit_settings=fit_settings, grid=ImageGrid.parse(args.image_grid),
                            image_bits=args.image_bits, write_samples=not args.no_posterior, quicklook=args.quicklook)
    return fit_fn, config


def run_pixels(args, model) -> int:
    """Run the pipeline from ``photoinfer fit``'s parsed arguments (``args.nside`` set)."""
    from ..pipeline import run_pipeline
    from . import log, print_json
    check_pixel_options(args)
    fit_fn, config = pipeline_setup(args)
    report = run_pipeline(model, args.catalog, args.out, fit_fn, config, pixels=parse_pixels(args.pixels),
                          scheduler=args.scheduler, workers=args.workers, retries=args.retries, progress=not args.quiet)
    log.info("outputs in %s/nside%d/", args.out, args.nside)
    print_json(report.to_dict())
    return 0
