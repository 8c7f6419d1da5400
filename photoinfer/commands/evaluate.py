"""``photoinfer evaluate``: per-star χ² of a model over a catalog with spectroscopic θ."""
from __future__ import annotations

HELP = "χ² of a model over a catalog of stars with spectroscopy, parallax and photometry"
DESCRIPTION = """\
For every star with measured θ = (Teff, logg, [M/H]) compute χ² of its observed magnitude
and colours under the model, with the covariance that propagates photometric, parallax,
reddening and θ errors through the model's Jacobian (Green et al. 2021 §2).  Prints the
number of stars and the mean χ²/B (B = number of bands), overall and by the source of the
reddening prior (r_source / ebv_source).

--update-reddening first replaces each star's reddening prior with its closed-form
posterior given the photometry (paper Eqs. 8-9).

Stars that cannot be evaluated (no reference band, bad θ covariance, no reddening prior)
keep their row in --out with chi2 = NaN and their flags.

examples:
  photoinfer evaluate --catalog stars.parquet
  photoinfer evaluate --model green2020_nn_model.h5 --catalog green2020_sample_8k.h5 --update-reddening --json
"""


def add_arguments(p) -> None:
    from . import add_model_argument
    add_model_argument(p)
    p.add_argument("--catalog", required=True, metavar="PATH",
                   help="catalog file: .parquet, .fits, .csv (columns: docs/catalogs.md) or the released .h5 sample")
    p.add_argument("--update-reddening", action="store_true", help="use each star's updated reddening (paper Eqs. 8-9)")
    p.add_argument("--out", metavar="PATH", help="write per-star results (source_id, chi2, n_obs, E, sigma_E, flags) "
                                                  "to this .parquet or .csv file")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object with n_stars, chi2_per_band, by_r_source {source: {n, chi2_per_band}}")


def run(args) -> int:
    from ..evaluate import evaluate
    from ..io.catalogs import read_catalog
    from ..io.tables import write_table
    from . import load_model_arg, log, print_json
    model = load_model_arg(args)
    cat = read_catalog(args.catalog, model.bands)
    log.info("catalog: %s, %d stars", args.catalog, len(cat))
    ev = evaluate(model, cat, update=args.update_reddening)
    summary = ev.summary()
    if args.out:
        write_table(ev.table(), args.out)
        log.info("per-star results written to %s", args.out)
    if args.json:
        print_json(summary)
        return 0
    what = "updated reddening" if args.update_reddening else "prior reddening"
    print(f"{summary['n_stars']} stars ({summary['n_used']} evaluated), at the {what}")
    print(f"{'r_source':<10} {'n':>7} {'mean chi2/B':>12} {'median':>8}")
    print(f"{'all':<10} {summary['n_used']:>7} {summary['chi2_per_band']:>12.3f} {summary['median_chi2_per_band']:>8.3f}")
    for src, s in summary["by_r_source"].items():
        print(f"{src or '(none)':<10} {s['n']:>7} {s['chi2_per_band']:>12.3f} {s['median_chi2_per_band']:>8.3f}")
    return 0
