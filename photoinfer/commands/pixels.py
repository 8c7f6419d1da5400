"""``photoinfer pixels``: fit a catalog HEALPix pixel by HEALPix pixel, resumably, optionally on Dask."""
from __future__ import annotations

HELP = "fit a catalog per HEALPix pixel (resumable; Dask) and write per-pixel products for dust mapping"
DESCRIPTION = """\
Split the stars into nested HEALPix pixels of Galactic (l, b) at --nside, fit them in
fixed-size batches (one compilation serves all), and write for every pixel, under
OUT/nside{NSIDE}/pix{ID:07d}/ (stars without a position: OUT/nside{NSIDE}/nopos/):

  summary.parquet  one row per star (percentiles, diagnostics, flags, pixel)
  images.h5        per-star (mu, E) posterior images on the --image-grid (uint8, per-star scale)
  posterior.nc     the draws as arviz InferenceData (--samples)
  quicklook.png    stacked (mu, E) image with the median E(mu) profile
  manifest.json    written last: hashes of the input rows, model and settings

A rerun skips every pixel whose manifest matches and redoes the others, so a killed run is
simply started again.  Results do not depend on the order, the workers or restarts: each
batch's seed derives from (--seed, pixel, position).  See docs/pipeline.md.

--catalog takes a catalog file (read whole) or a directory written by 'photoinfer partition'
(read pixel by pixel: catalogs larger than memory).

examples:
  photoinfer pixels --catalog stars.parquet --out run1 --nside 64 --method grid
  photoinfer pixels --catalog parts/ --out run1 --nside 64 --pixels 1024,1025 --workers 2
  photoinfer pixels --catalog parts/ --out run1 --nside 64 --scheduler tcp://head:8786
"""


def add_pixel_arguments(p) -> None:
    """The pixel options (shared with ``photoinfer fit --nside``)."""
    g = p.add_argument_group("HEALPix pipeline")
    g.add_argument("--nside", type=int, metavar="N", help="HEALPix nside (power of two) of the pixels (nested, Galactic)")
    g.add_argument("--pixels", metavar="LIST", default=None,
                   help="only these pixel ids at --nside, comma-separated (-1: stars without position); default all")
    g.add_argument("--scheduler", default=None, metavar="threads|processes|ADDRESS",
                   help="Dask: 'processes' (a local cluster of --workers processes; the default when --workers > 1), "
                        "'threads' (one process, --workers threads), or a scheduler address tcp://host:port")
    g.add_argument("--workers", type=int, default=1, metavar="K", help="Dask workers (default 1: run in this process)")
    g.add_argument("--batch-size", type=int, default=256, metavar="B", help="stars per fit call (default 256)")
    g.add_argument("--retries", type=int, default=2, help="times Dask resubmits a pixel group whose worker died")
    g.add_argument("--image-grid", default="4,19,120,0,7,700", metavar="MU0,MU1,NMU,E0,E1,NE",
                   help="(mu, E) image grid (default Bayestar's: mu 4-19 in 120 bins, E 0-7 in 700)")
    g.add_argument("--image-bits", type=int, choices=(8, 16), default=8, help="image quantization (default uint8)")
    g.add_argument("--samples", action=__import__("argparse").BooleanOptionalAction, default=True,
                   help="write posterior.nc (arviz) per pixel (default on)")
    g.add_argument("--quicklook", action=__import__("argparse").BooleanOptionalAction, default=True,
                   help="write quicklook.png per pixel (default on)")


def add_arguments(p) -> None:
    from . import add_model_argument
    add_model_argument(p)
    p.add_argument("--catalog", required=True, metavar="PATH", help="catalog file or partitioned directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--method", choices=("grid", "nuts"), default="grid", help="fitting method (default grid)")
    p.add_argument("--seed", type=int, default=0, help="global seed (default 0)")
    p.add_argument("--prior", default="bayestar", help="Galactic prior: bayestar, brutus or none (default bayestar)")
    p.add_argument("--spacing", default="fine", help="grid method: theta grid preset fine|coarse (default fine)")
    p.add_argument("--num-draws", type=int, default=1000, help="grid method: draws per star (default 1000)")
    p.add_argument("--num-warmup", type=int, default=500, help="nuts: warm-up steps (default 500)")
    p.add_argument("--num-samples", type=int, default=500, help="nuts: draws per chain (default 500)")
    p.add_argument("--num-chains", type=int, default=4, help="nuts: chains per star (default 4)")
    add_pixel_arguments(p)


def fit_function(args):
    """(fit_fn, fit_settings) for ``--method``."""
    if args.method == "grid":
        from ..pipeline import grid_fit_fn
        return grid_fit_fn, {"spacing": args.spacing, "prior": args.prior, "n_draws": args.num_draws}
    try:
        from ..infer import fit_catalog
    except ImportError:
        raise ValueError("--method nuts needs photoinfer.infer.fit_catalog, not in this build") from None
    return fit_catalog, {"num_warmup": args.num_warmup, "num_samples": args.num_samples,
                         "num_chains": args.num_chains, "prior": args.prior}


def run_pixels(args, model, fit_fn, fit_settings) -> int:
    """Run the pipeline from parsed arguments (also called by ``photoinfer fit --nside``)."""
    from ..pipeline import PipelineConfig, run_pipeline
    from ..sightline import ImageGrid
    from . import log, print_json
    if args.nside is None:
        raise ValueError("--nside is required for the HEALPix pipeline")
    pixels = None
    if args.pixels:
        try:
            pixels = [int(x) for x in args.pixels.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--pixels expects comma-separated integers, got {args.pixels!r}") from None
    if args.samples:
        try:
            import photoinfer.posterior  # noqa: F401
        except ImportError:
            raise ValueError("--samples needs photoinfer.posterior (arviz output), not in this build; "
                             "use --no-samples") from None
    config = PipelineConfig(nside=args.nside, batch_size=args.batch_size, seed=args.seed, method=args.method,
                            fit_settings=fit_settings, grid=ImageGrid.parse(args.image_grid),
                            image_bits=args.image_bits, write_samples=args.samples, quicklook=args.quicklook)
    report = run_pipeline(model, args.catalog, args.out, fit_fn, config, pixels=pixels, scheduler=args.scheduler,
                          workers=args.workers, retries=args.retries)
    log.info("outputs in %s/nside%d/", args.out, args.nside)
    print_json(report.to_dict())
    return 0


def run(args) -> int:
    from . import load_model_arg
    model = load_model_arg(args)
    fit_fn, settings = fit_function(args)
    return run_pixels(args, model, fit_fn, settings)
