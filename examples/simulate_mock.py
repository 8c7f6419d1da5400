"""Draw a mock catalog with known truth, write it, and check it against the truth.

usage: python examples/simulate_mock.py [N_STARS] [OUT.parquet] [MODEL]

Defaults: 2000 stars, mock.parquet in a temporary folder, the model shipped with photoinfer
(pass the released model file, green2020_nn_model.h5, as MODEL while none is shipped).
"""
import sys
import tempfile
from pathlib import Path

import numpy as np

from photoinfer.io.catalogs import read_catalog
from photoinfer.io.models import load_model
from photoinfer.simulate import simulate_catalog, write_catalog


def main(n: int = 2000, out: str | None = None, model_path: str | None = None) -> None:
    model = load_model(model_path)
    cat = simulate_catalog(model, n, 42)
    out = Path(out or Path(tempfile.mkdtemp()) / "mock.parquet")
    write_catalog(cat, out)
    back = read_catalog(out)
    t = back.extra
    obs = back.observed
    z = (back.mag - np.stack([t[f"true_mag_{k}"] for k in back.bands.keys], axis=1)) / back.mag_err
    print(f"{len(back)} stars written to {out}")
    print("observed fraction per band: " + " ".join(f"{b}:{f:.2f}" for b, f in zip(back.bands.names, obs.mean(0))))
    print(f"photometric z-scores: mean {np.nanmean(z):+.3f}, std {np.nanstd(z):.3f} (expect 0, 1)")
    print(f"true mu: median {np.median(t['true_mu']):.2f}; true E: median {np.median(t['true_E']):.3f}, "
          f"max {np.max(t['true_E']):.2f}")
    zp = (back.parallax - t["true_parallax"]) / back.parallax_err
    print(f"parallax z-scores: mean {np.nanmean(zp):+.3f}, std {np.nanstd(zp):.3f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 2000, args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else None)
