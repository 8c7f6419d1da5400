"""Compare the M_G errors of trained models on a truth-recovery mock: how large, and how alike?

Usage::

    python benchmarks/truth_recovery_compare.py --mock benchmarks/results/cache/mock200k_s1.parquet \\
        --stars 50000:90000 m1.h5 m2.h5 ...

For each model (saved by ``truth_recovery.py --save-model``): ΔM_G = M_G,model − M_G,truth (the released model)
at the true θ of the usable stars in the slice ``--stars`` of the mock inside the region of truth_recovery.py
(the mock's true-θ density ≥ 1e-2 of its peak): rms and mean.  For each pair: the correlation of their ΔM_G,
``noise_rms`` = rms(ΔM_G,a − ΔM_G,b)/√2 (one run's noise, if the two runs are independent draws of it) and
the rms of their mean (what they share).  Prints a JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    import truth_recovery as tr

    from photoinfer.catalog import TRAINING_UNUSABLE
    from photoinfer.io.catalogs import read_catalog
    from photoinfer.io.models import load_model
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mock", required=True, help="a mock written by truth_recovery.py --mock-cache")
    p.add_argument("--stars", default="50000:90000", help="slice START:STOP of the mock's stars (default 50000:90000)")
    p.add_argument("models", nargs="+", help="model files")
    a = p.parse_args(argv)
    truth = load_model(tr.SHARED / "green2020_nn_model.h5")
    lo, hi = (int(v) for v in a.stars.split(":"))
    cat = read_catalog(a.mock)
    cat = cat.subset(np.arange(lo, min(hi, len(cat))))
    th = np.column_stack([cat.extra[k] for k in ("true_teff", "true_logg", "true_feh")])[cat.usable(TRAINING_UNUSABLE)]
    th = th[tr.in_region(th, tr.region_mask(th, np.ones(len(th), bool))[0])].astype(np.float32)
    m0 = np.asarray(truth.predict_y(th, 0.0), float)[:, 0]
    d = {m: np.asarray(load_model(m).predict_y(th, 0.0), float)[:, 0] - m0 for m in a.models}
    res = {"stars": len(th), "models": {m: {"rms": float(np.sqrt(np.mean(v ** 2))), "mean": float(v.mean())} for m, v in d.items()},
           "pairs": [{"a": x, "b": y, "correlation": float(np.corrcoef(d[x], d[y])[0, 1]),
                      "noise_rms": float(np.sqrt(np.mean((d[x] - d[y]) ** 2) / 2)),
                      "rms_mean": float(np.sqrt(np.mean(((d[x] + d[y]) / 2) ** 2)))}
                     for i, x in enumerate(a.models) for y in a.models[i + 1:]]}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
