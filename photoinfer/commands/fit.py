"""``photoinfer fit``: posteriors of (Teff, logg, [M/H], μ, E) for photometry-only stars."""
from __future__ import annotations

from .pipeline_options import PIXELS_DESCRIPTION, add_pixel_arguments, check_pixel_options, grid_settings

HELP = "sample each star's posterior of Teff, logg, [M/H], distance modulus and reddening from its photometry"
DESCRIPTION = """\
Fit every star of a catalog with the stellar model: the posterior of (Teff, logg, [M/H],
distance modulus mu, reddening E) given its magnitudes, its parallax when there is one (any
S/N, negative included) and a Galactic prior (position-free when the catalog has no l, b).
Methods (--method):
  nuts       each star gets its own NUTS chains (default 4), started in every mode (dwarf and
             giant) that the grid posterior finds, and after every NUTS step offered a jump to
             a point proposed from the grid's draws (accepted by Metropolis-Hastings), so that
             chains move between modes (docs/inference.md, "The grid guide"; --no-guide: plain
             NUTS started from its own coarse candidate grid)
  grid       brute-force grid posterior (a theta grid over the stellar prior's support, mu and
             E solved in closed form, theta continuous within each cell, parallax and priors
             weighed exactly): far faster than NUTS (docs/grid.md)
  grid+nuts  the grid for every star, then NUTS only where the grid's effective sample size is
             below --min-grid-ess (or for every star with --exact), started and guided by the
             grid as for nuts (the default)

Writes, in --out:
  summary.parquet  one row per input star: source_id, flags, 16/50/84 % of each parameter
                   and of distance [pc], r-hat, bulk/tail ESS, divergences, the fraction of
                   draws outside the region of validity (stars that could not be fit keep
                   their row, with NaN and their flags)
  posterior.nc     all draws as an arviz InferenceData (NetCDF): posterior dims (chain, draw, star)
  images.h5        with --images (grid methods): per-star (mu, E) posterior images, dataset
                   "images" (star, mu, E) float32 normalized per star, with source_id and bin edges
The summary's "method" column says which method produced each star's draws.

examples:
  photoinfer fit --catalog stars.parquet --out fits/
  photoinfer fit --catalog stars.parquet --out fits/ --model green2020_nn_model.h5 --num-samples 500
  photoinfer fit --catalog stars.parquet --out fits/ --prior brutus --no-parallax
  photoinfer fit --catalog stars.parquet --out fits/ --method grid --images
  photoinfer fit --catalog stars.parquet --out fits/ --method grid+nuts --min-grid-ess 300
read the results:
  python -c "import arviz as az; print(az.from_netcdf('fits/posterior.nc'))"

""" + PIXELS_DESCRIPTION


def add_arguments(p) -> None:
    from . import add_model_argument
    add_model_argument(p)
    p.add_argument("--catalog", required=True, metavar="PATH",
                   help="input catalog (.parquet/.fits/.csv with the documented columns, or the released .h5 sample)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--method", choices=("nuts", "grid", "grid+nuts"), default="grid+nuts",
                   help="fitting method (default: grid+nuts; see above)")
    p.add_argument("--grid", default="coarse", choices=("fine", "coarse"),
                   help="theta grid of the grid methods: the proposal of a continuous-theta posterior, so "
                        "coarse (100 K, 0.1, 0.2 dex) is exact too; fine (50 K, 0.05, 0.1) gives more "
                        "effective samples per star at ~4x the cost (default coarse)")
    p.add_argument("--min-grid-ess", type=float, default=200.0, metavar="X",
                   help="grid+nuts: run NUTS where the grid's effective sample size is below X (default 200)")
    p.add_argument("--exact", action="store_true", help="grid+nuts: run NUTS for every star (seeded by the grid)")
    p.add_argument("--images", action="store_true",
                   help="grid methods: also write images.h5, per-star (mu, E) posterior images "
                        "(mu 4-19 in 120 bins, E 0-7 in 700: 336 kB per star)")
    p.add_argument("--num-warmup", type=int, default=300, metavar="N", help="warm-up steps per chain (default 300)")
    p.add_argument("--num-samples", type=int, default=250, metavar="N", help="draws kept per chain (default 250)")
    p.add_argument("--num-chains", type=int, default=4, metavar="N", help="chains per star (default 4)")
    p.add_argument("--no-refine", action="store_true",
                   help="NUTS: no further rounds for stars that miss r-hat <= 1.01 or ESS >= 200 (by default they are "
                        "sampled again, up to twice, each round with twice the warm-up, twice the steps thinned by "
                        "2, target acceptance 0.95)")
    p.add_argument("--no-guide", action="store_true",
                   help="NUTS: no jumps proposed from the grid's draws (and, with --method nuts, no grid at all: "
                        "chains start from NUTS's own candidate grid)")
    p.add_argument("--prior", choices=("bayestar", "brutus"), default="bayestar",
                   help="Galactic prior parameter set (default bayestar)")
    p.add_argument("--dust", choices=("flat", "gaussian"), default="flat",
                   help="prior on E: flat on [0, E_max] (default), or a Gaussian around the catalog's E0 ± sigma_E0")
    p.add_argument("--e-max", type=float, default=None, help="upper bound of E (default 7)")
    p.add_argument("--no-parallax", action="store_true", help="ignore the catalog's parallaxes")
    p.add_argument("--no-position", action="store_true", help="ignore l, b: position-free Galactic prior")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="stars sampled together (default 25; with --nside, stars per fit call: 256 for grid and "
                        "grid+nuts)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-posterior", action="store_true", help="write only the summary (no posterior.nc)")
    add_pixel_arguments(p)


def run(args) -> int:
    import time
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from ..catalog import Flag
    from ..grid.methods import fit_with_method
    from ..infer.fit import REFINE_ROUNDS
    from ..io.catalogs import read_catalog
    from ..posterior import save_inference_data, to_inference_data, write_summary
    from . import load_model_arg, log
    for name in ("num_warmup", "num_samples", "num_chains", "batch_size"):
        if (getattr(args, name) or 1) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    check_pixel_options(args)
    model = load_model_arg(args)
    if args.nside is not None:                     # the HEALPix pixel pipeline
        from .pipeline_options import run_pixels
        return run_pixels(args, model)
    cat = read_catalog(args.catalog, bands=model.bands)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log.info("%s: %d stars", cat.name, len(cat))
    bar = tqdm(total=len(cat), unit="star", disable=args.quiet)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    bins = None
    if args.images:
        from ..sightline import ImageGrid
        bins = ImageGrid()
    t0 = time.perf_counter()
    res, images = fit_with_method(model, cat, args.method, prior=args.prior, num_warmup=args.num_warmup,
                                  num_samples=args.num_samples, num_chains=args.num_chains, seed=args.seed,
                                  batch_size=args.batch_size or 25, use_parallax=not args.no_parallax,
                                  use_position=not args.no_position, dust=args.dust, E_max=args.e_max,
                                  callback=progress, grid=args.grid, min_grid_ess=args.min_grid_ess,
                                  exact=args.exact, images=bins, grid_settings=grid_settings(args),
                                  refine=0 if args.no_refine else REFINE_ROUNDS, guide=not args.no_guide)
    bar.n = bar.total  # the grid reports no intermediate progress: show it complete
    bar.close()
    write_summary(res.summary, out / "summary.parquet")
    if images is not None:
        _write_images(out / "images.h5", images, res.source_id, bins)
    if not args.no_posterior:
        save_inference_data(to_inference_data(res, cat), out / "posterior.nc")
    flags = res.summary["flags"]
    log.info("wrote %s (%d stars: %d not converged, %d outside validity, %d not fit) in %.0f s",
             out, len(res), np.count_nonzero(flags & Flag.NOT_CONVERGED),
             np.count_nonzero(flags & Flag.OUTSIDE_VALIDITY), np.count_nonzero(flags & Flag.TOO_FEW_BANDS),
             time.perf_counter() - t0)
    return 0


def _write_images(path, images, source_id, bins) -> None:
    """images.h5 (atomic): dataset images (N, nμ, nE), source_id (N,), mu_edges, E_edges."""
    import os

    import h5py
    import numpy as np
    tmp = str(path) + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.create_dataset("images", data=images, compression="gzip", compression_opts=4, chunks=(1,) + images.shape[1:])
        f.create_dataset("source_id", data=np.asarray(source_id, np.int64))
        f.create_dataset("mu_edges", data=np.linspace(bins.mu_min, bins.mu_max, bins.n_mu + 1))
        f.create_dataset("E_edges", data=np.linspace(bins.E_min, bins.E_max, bins.n_E + 1))
        f.attrs["normalization"] = "posterior mass per bin, summing to 1 per star (0 when not fit)"
    os.replace(tmp, path)
