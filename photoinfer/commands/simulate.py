"""``photoinfer simulate``: a mock catalog with known truth."""
from __future__ import annotations

HELP = "draw a mock catalog (photometry, parallaxes, reddening priors, θ) with known truth"
DESCRIPTION = """\
Draw N stars from a Galactic model and a stellar model and observe them like the real
Green et al. sample: θ = (Teff, logg, [M/H]) from the model's training density, sky
positions uniform (or in HEALPix pixels / a cone), distances from the Galactic prior
along each sightline, reddening from a smooth dust disk with clouds (or a dust screen),
magnitudes m = M(θ) + μ + E·R(θ) with the real sample's errors, limits and missing-band
patterns, Gaia-like parallaxes, a reddening prior (E0, sigma_E0; ebv_source = "sim") and
a θ measurement (unless --photometry-only).  The reddening prior is by default a map with a
Berkson error (the true E scatters around E0 by sigma_E0, truncated at E >= 0: what training
and inference assume a prior means); --reddening-prior-error classical instead keeps the dust
value as the truth and adds the error to E0 (the default with --dust-screen).  Truth is written in columns true_teff,
true_logg, true_feh, true_mu, true_E, true_parallax and true_mag_<band>.  Magnitudes are
in the model's system (unWISE in AB) with the 0.02 mag floor included.  The output
format follows the extension (.parquet, .fits, .csv).  See docs/simulate.md.

examples:
  photoinfer simulate --model green2020_nn_model.h5 --n 10000 --out mock.parquet --seed 1
  photoinfer simulate --n 1000 --out mock_phot.parquet --photometry-only
  photoinfer simulate --n 500 --out pix.parquet --healpix 16 1234 --dust-screen 10 0.8
  photoinfer simulate --n 500 --out cone.fits --cone 120 30 2 --prior brutus
"""


def add_arguments(p) -> None:
    from . import add_model_argument
    add_model_argument(p)
    p.add_argument("--n", type=int, required=True, help="number of stars")
    p.add_argument("--out", required=True, metavar="PATH", help="output catalog (.parquet, .fits or .csv)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the catalog is a deterministic function of "
                                                       "it; default 0)")
    p.add_argument("--photometry-only", action="store_true",
                   help="no θ measurement (teff/logg/feh columns NaN: photometry-only stars)")
    p.add_argument("--prior", default="bayestar", choices=("bayestar", "brutus"),
                   help="Galactic model the distances are drawn from (default bayestar)")
    sky = p.add_mutually_exclusive_group()
    sky.add_argument("--healpix", nargs="+", type=int, metavar="N",
                     help="NSIDE PIX [PIX ...]: draw positions uniformly within these HEALPix pixels (NESTED, "
                          "Galactic); default: the whole sky")
    sky.add_argument("--cone", nargs=3, type=float, metavar=("L", "B", "RADIUS"),
                     help="draw positions uniformly within a circle [deg, Galactic]")
    p.add_argument("--dust-screen", nargs="+", type=float, metavar="X",
                   help="MU E [FOREGROUND]: a dust screen of reddening E at distance modulus MU (plus a foreground "
                        "rising to FOREGROUND, default 0.02, at the screen) instead of the smooth dust model")
    p.add_argument("--reddening-prior-error", choices=("berkson", "classical"), default=None,
                   help="berkson: E0 is the map and the true E = E0 + sigma_E0 x N(0, 1) truncated at 0 (default "
                        "with the dust model); classical: the true E is the dust value and E0 = E + sigma_E0 x "
                        "N(0, 1) (default with --dust-screen).  See docs/simulate.md")
    p.add_argument("--mu-range", nargs=2, type=float, default=(4.0, 19.0), metavar=("MIN", "MAX"),
                   help="distance-modulus range [mag] (default 4 19)")
    p.add_argument("--reference", metavar="PATH",
                   help="a real catalog (e.g. green2020_sample_8k.h5) to resample reddening-prior errors and θ "
                        "covariances from, instead of the fits built into photoinfer")


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from . import load_model_arg, log
    from ..io.catalogs import FORMATS, read_catalog
    from ..mock_errors import DEFAULT_ERROR_MODEL
    from ..simulate import Cone, HealpixRegion, simulate_catalog, write_catalog

    out = Path(args.out)
    if not any(out.name.lower().endswith(e) for e in FORMATS if e not in (".h5", ".hdf5")):
        raise ValueError(f"--out {out}: use a .parquet, .fits or .csv file name")
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    sky = None
    if args.healpix:
        if len(args.healpix) < 2:
            raise ValueError("--healpix needs NSIDE and at least one pixel")
        sky = HealpixRegion(args.healpix[0], tuple(args.healpix[1:]))
    elif args.cone:
        sky = Cone(*args.cone)
    if args.dust_screen is not None and len(args.dust_screen) not in (2, 3):
        raise ValueError("--dust-screen takes MU E [FOREGROUND]")
    em = DEFAULT_ERROR_MODEL
    if args.reference:
        em = em.with_reference(read_catalog(args.reference))
    model = load_model_arg(args)
    cat = simulate_catalog(model, args.n, args.seed, photometry_only=args.photometry_only, error_model=em,
                           prior=args.prior, sky=sky, dust_screen=args.dust_screen, mu_range=tuple(args.mu_range),
                           reddening_prior_error=args.reddening_prior_error, name=out.name)
    write_catalog(cat, out)
    obs = cat.observed
    log.info("wrote %d stars to %s (median %.1f observed bands; %d with a parallax; truth in true_* columns)",
             len(cat), out, float(np.median(obs.sum(axis=1))), int(np.isfinite(cat.parallax).sum()))
    return 0
