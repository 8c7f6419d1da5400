"""``photoinfer predict``: the model's magnitude and colours for one θ and reddening."""
from __future__ import annotations

HELP = "print the model's absolute magnitude and colours for given Teff, logg, [M/H] (and reddening)"
DESCRIPTION = """\
Print A(M(θ) + E·R(θ)) for one star: the absolute magnitude in the reference band
(the first band, Gaia G by default), then each colour X−G, with E·R added when --ebv
is given.  Units: mag.  At E = 1 the difference to E = 0 is the extinction vector A·R.

examples:
  photoinfer predict --teff 5780 --logg 4.44 --feh 0
  photoinfer predict --model green2020_nn_model.h5 --teff 5780 --logg 4.44 --feh 0 --ebv 1 --json
"""


def add_arguments(p) -> None:
    from . import add_model_argument
    add_model_argument(p)
    p.add_argument("--teff", type=float, required=True, help="effective temperature [K]")
    p.add_argument("--logg", type=float, required=True, help="surface gravity log10(g / cm s^-2) [dex]")
    p.add_argument("--feh", type=float, required=True, help="metallicity [M/H] [dex]")
    p.add_argument("--ebv", type=float, default=0.0,
                   help="reddening E in the model's units (SFD/Bayestar19 E(B-V)-like); default 0")
    p.add_argument("--json", action="store_true", help="print one JSON object: label -> value [mag]")


def run(args) -> int:
    import numpy as np

    from . import load_model_arg, log, print_json
    model = load_model_arg(args)
    theta = np.array([args.teff, args.logg, args.feh])
    if not np.all(np.isfinite(theta)) or not np.isfinite(args.ebv):
        raise ValueError("--teff, --logg, --feh and --ebv must be finite numbers")
    if model.validity is not None:
        dens = float(model.validity.min_density(theta))
        if dens < 1e-2:
            log.warning("θ = %s is outside the model's region of validity (training density %.2g of peak < 1e-2): "
                        "the prediction is unreliable", theta.tolist(), dens)
    y = np.asarray(model.predict_y(theta, args.ebv), np.float64)
    labels = model.bands.y_labels()
    if args.json:
        print_json(dict(zip(labels, y.tolist())))
    else:
        width = max(len(s) for s in labels)
        for lab, v in zip(labels, y):
            print(f"{lab:<{width}}  {v:9.4f}")
    return 0
