"""The profiled joint objective (``latent_theta="profile"``, photoinfer/train/profile.py) of models on a
truth-recovery mock: is a trained model at the objective's minimum, or is the truth lower?

Usage::

    python benchmarks/truth_recovery_objective.py --mock /tmp/mock200k_s1.parquet truth m1.h5 m2.h5

For each model ("truth" = the released model): every star's (θ, E) fitted by 10 Levenberg–Marquardt
steps from (θ̂, E₀) (:func:`photoinfer.train.latent.joint_fit_all`, the paper's y₁), then the mean
profiled loss per band (no regularization) over the first ``--n`` usable stars whose cut χ² is < 5.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def objective(model, data):
    import jax
    import jax.numpy as jnp

    from photoinfer.train.latent import joint_fit_all
    from photoinfer.train.profile import profile_aux, profile_batch_loss
    med, std = jnp.asarray(model.theta_med, jnp.float32), jnp.asarray(model.theta_std, jnp.float32)
    th, E, _, W, red, _ = joint_fit_all(model.params, med, std, data, np.asarray(data.theta), np.asarray(data.E0), 10)
    ok = red < 5
    xh, lam, E0, iv = profile_aux(data, model.theta_med, model.theta_std)
    x = jnp.asarray((th - np.asarray(model.theta_med)) / np.asarray(model.theta_std), jnp.float32)
    B = data.y_hat.shape[1]
    _, per_band = jax.jit(lambda p: profile_batch_loss(p, x, jnp.asarray(E), data.y_hat, jnp.asarray(W),
                                                       jnp.asarray(ok, jnp.float32), xh, lam, E0, iv,
                                                       jnp.zeros((len(E), 3), jnp.float32), B, 0.0, 0.0))(model.params)
    return float(per_band), float(1 - ok.mean())


def main(argv=None):
    import truth_recovery as tr

    from photoinfer.catalog import TRAINING_UNUSABLE
    from photoinfer.evaluate import star_data
    from photoinfer.io.catalogs import read_catalog
    from photoinfer.io.models import load_model
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mock", required=True, help="a mock written by truth_recovery.py --mock-cache")
    p.add_argument("--n", type=int, default=60000, help="usable stars used (default 60000)")
    p.add_argument("models", nargs="+", help="model files, or 'truth'")
    a = p.parse_args(argv)
    cat = read_catalog(a.mock)
    data = star_data(cat.subset(np.flatnonzero(cat.usable(TRAINING_UNUSABLE))[:a.n]))
    for m in a.models:
        model = load_model(tr.SHARED / "green2020_nn_model.h5") if m == "truth" else load_model(m)
        val, cut = objective(model, data)
        print(f"{m}: profiled objective per band {val:.4f} (stars with cut chi2 >= 5 left out: {cut:.4f})")


if __name__ == "__main__":
    main()
