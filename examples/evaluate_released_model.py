"""Evaluate a stellar model on stars with spectroscopy: χ² per reddening-prior source, before and after
the closed-form reddening update (Green et al. 2021 Eqs. 8-9).

    python examples/evaluate_released_model.py --n 500
    python examples/evaluate_released_model.py --model ../shared/data/green2020/green2020_nn_model.h5 \
        --catalog ../shared/data/green2020/green2020_sample_8k.h5
"""
import argparse
from pathlib import Path

import numpy as np

from photoinfer.evaluate import evaluate
from photoinfer.io.catalogs import read_catalog
from photoinfer.io.models import load_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "green2020"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHARED / "green2020_nn_model.h5"))
    p.add_argument("--catalog", default=str(SHARED / "green2020_sample_8k.h5"))
    p.add_argument("--n", type=int, default=None, help="use only the first N stars")
    args = p.parse_args(argv)
    model = load_model(args.model)
    cat = read_catalog(args.catalog, model.bands)
    if args.n:
        cat = cat.subset(np.arange(min(args.n, len(cat))))
    theta = np.array([5780.0, 4.44, 0.0])
    print("Sun-like star, A(M + R):", np.round(np.asarray(model.predict_y(theta, 1.0)), 4))
    for update in (False, True):
        s = evaluate(model, cat, update=update).summary()
        groups = ", ".join(f"{k} {v['chi2_per_band']:.3f} (n={v['n']})" for k, v in s["by_r_source"].items())
        print(f"{'after' if update else 'before'} the reddening update: chi2/B = {s['chi2_per_band']:.3f}; {groups}")
    return s


if __name__ == "__main__":
    main()
