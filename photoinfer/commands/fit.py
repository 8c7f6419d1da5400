"""``photoinfer fit``: posteriors of (Teff, logg, [M/H], μ, E) for photometry-only stars."""
from __future__ import annotations

from .pipeline_options import PIXELS_DESCRIPTION, add_pixel_arguments

HELP = "sample each star's posterior of Teff, logg, [M/H], distance modulus and reddening from its photometry"
DESCRIPTION = """\
Fit every star of a catalog with the stellar model: the posterior of (Teff, logg, [M/H],
distance modulus mu, reddening E) given its magnitudes, its parallax when there is one (any
S/N, negative included) and a Galactic prior (position-free when the catalog has no l, b).
Each star gets its own NUTS chains (default 4), started in every plausible mode (dwarf and
giant) found on a grid over the model's region of validity.

Writes, in --out:
  summary.parquet  one row per input star: source_id, flags, 16/50/84 % of each parameter
                   and of distance [pc], r-hat, bulk/tail ESS, divergences, the fraction of
                   draws outside the region of validity (stars that could not be fit keep
                   their row, with NaN and their flags)
  posterior.nc     all draws as an arviz InferenceData (NetCDF): posterior dims (chain, draw, star)

examples:
  photoinfer fit --catalog stars.parquet --out fits/
  photoinfer fit --catalog stars.parquet --out fits/ --model green2020_nn_model.h5 --num-samples 500
  photoinfer fit --catalog stars.parquet --out fits/ --prior brutus --no-parallax
read the results:
  python -c "import arviz as az; print(az.from_netcdf('fits/posterior.nc'))"

""" + PIXELS_DESCRIPTION


def add_arguments(p) -> None:
    from . import add_model_argument
    add_model_argument(p)
    p.add_argument("--catalog", required=True, metavar="PATH",
                   help="input catalog (.parquet/.fits/.csv with the documented columns, or the released .h5 sample)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--method", choices=("nuts", "grid"), default="nuts",
                   help="fitting method (default: nuts; grid: only with --nside in this build)")
    p.add_argument("--num-warmup", type=int, default=300, metavar="N", help="warm-up steps per chain (default 300)")
    p.add_argument("--num-samples", type=int, default=250, metavar="N", help="draws kept per chain (default 250)")
    p.add_argument("--num-chains", type=int, default=4, metavar="N", help="chains per star (default 4)")
    p.add_argument("--prior", choices=("bayestar", "brutus"), default="bayestar",
                   help="Galactic prior parameter set (default bayestar)")
    p.add_argument("--dust", choices=("flat", "gaussian"), default="flat",
                   help="prior on E: flat on [0, E_max] (default), or a Gaussian around the catalog's E0 ± sigma_E0")
    p.add_argument("--e-max", type=float, default=None, help="upper bound of E (default 7)")
    p.add_argument("--no-parallax", action="store_true", help="ignore the catalog's parallaxes")
    p.add_argument("--no-position", action="store_true", help="ignore l, b: position-free Galactic prior")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="stars sampled together (default 25; grid with --nside: 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-posterior", action="store_true", help="write only the summary (no posterior.nc)")
    add_pixel_arguments(p)


def run(args) -> int:
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from ..catalog import Flag
    from ..infer.fit import fit_catalog
    from ..io.catalogs import read_catalog
    from ..posterior import save_inference_data, to_inference_data, write_summary
    from . import load_model_arg, log
    for name in ("num_warmup", "num_samples", "num_chains", "batch_size"):
        if (getattr(args, name) or 1) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
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

    res = fit_catalog(model, cat, prior=args.prior, method=args.method, num_warmup=args.num_warmup,
                      num_samples=args.num_samples, num_chains=args.num_chains, seed=args.seed,
                      batch_size=args.batch_size or 25, use_parallax=not args.no_parallax,
                      use_position=not args.no_position, dust=args.dust, E_max=args.e_max, callback=progress)
    bar.close()
    write_summary(res.summary, out / "summary.parquet")
    if not args.no_posterior:
        save_inference_data(to_inference_data(res, cat), out / "posterior.nc")
    flags = res.summary["flags"]
    log.info("wrote %s (%d stars: %d not converged, %d outside validity, %d not fit) in %.0f s",
             out, len(res), np.count_nonzero(flags & Flag.NOT_CONVERGED),
             np.count_nonzero(flags & Flag.OUTSIDE_VALIDITY), np.count_nonzero(flags & Flag.TOO_FEW_BANDS),
             res.attrs["sampling_time_s"])
    return 0
