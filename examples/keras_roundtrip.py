"""Load the released Green et al. (2021) model, export it to Keras, and compare predictions.

Usage::

    python examples/keras_roundtrip.py [path/to/green2020_nn_model.h5] [--out exported.h5]

The default path is ``../shared/data/green2020/green2020_nn_model.h5`` relative to the repository.
Needs the optional extra: ``pip install "photoinfer[tensorflow]"``; without it the script says
so and exits.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "data" / "green2020" / "green2020_nn_model.h5"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default=str(DEFAULT), help="released Keras HDF5 model")
    ap.add_argument("--out", default=None, help="where to write the exported Keras file (default: a temp dir)")
    ap.add_argument("-n", type=int, default=1000, help="number of random θ")
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from photoinfer.io import keras as pk
    from photoinfer.io.models import load_model

    try:
        keras = pk.import_keras()
    except ImportError as e:
        print(f"skipping: {e}")
        return 0
    print(f"Keras: {keras.__name__} {keras.__version__}")

    path = Path(args.path)
    if not path.exists():
        print(f"released model not found at {path}; pass its path as the first argument")
        return 1

    # 1. the released file read three ways: photoinfer (h5py), Keras itself, and back to photoinfer
    model = load_model(path)                         # h5py import, no TensorFlow
    km_released = pk.load_keras_model(path)          # the authors' Keras model, loaded by Keras
    converted = pk.keras_to_stellar_model(km_released, model.theta_med, model.theta_std)

    rng = np.random.default_rng(0)
    n = args.n
    theta = np.stack([rng.uniform(3500, 8000, n), rng.uniform(0.5, 5, n), rng.uniform(-2, 0.5, n)], -1)
    E = rng.uniform(0, 3, n)
    y = np.asarray(model.predict_y(theta, E))        # A M(θ) + E·A R(θ) [mag]

    def report(label, other):
        d = np.abs(np.asarray(other) - y).max(axis=0)
        print(f"{label:45s} max |Δ| = {d.max():.2e} mag   (worst band {model.bands.names[int(d.argmax())]})")
        return d.max()

    worst = report("released file in Keras vs photoinfer", pk.keras_predict(km_released, model, theta, E))
    worst = max(worst, report("keras_to_stellar_model vs photoinfer", converted.predict_y(theta, E)))

    # 2. export: photoinfer → Keras model → HDF5 file → Keras and photoinfer again
    km = pk.to_keras(model)
    worst = max(worst, report("to_keras vs photoinfer", pk.keras_predict(km, model, theta, E)))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "exported.h5"
        pk.save_keras(model, out)
        worst = max(worst, report("save_keras → load_keras_model", pk.keras_predict(pk.load_keras_model(out), model,
                                                                                     theta, E)))
        worst = max(worst, report("save_keras → load_model (h5py)", load_model(out).predict_y(theta, E)))
        if args.out:
            print(f"wrote {out}")
    print(f"overall max difference: {worst:.2e} mag over {n} θ, E ∈ [0, 3] (float32)")
    return 0 if worst < 1e-5 else 2


if __name__ == "__main__":
    sys.exit(main())
