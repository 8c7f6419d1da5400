"""Does averaging the network over the last iterations remove the training's own scatter?

Usage::

    python benchmarks/truth_recovery_iterates.py A.h5 A.npy B.h5 B.npy --mock-cache benchmarks/results/cache/mock200k_s1.parquet

A.h5 / B.h5: two models trained on the same data with different training seeds, A.npy / B.npy their networks after
every iteration (``truth_recovery.py --save-model A.h5 --save-iterates A.npy``).  For k = 1 (the trained model)
… ``--last``, the weights averaged over the last k iterations (as stochastic weight averaging; consecutive
iterations' networks are close, so their average is a network between them) are evaluated like
``truth_recovery_map.py``: ΔM_G = M_G − M_G(truth) at the true θ of its 40,000 evaluation stars, each model's rms and
the pair's noise rms(Δ₁ − Δ₂)/√2 and shared part rms((Δ₁ + Δ₂)/2).  If the endpoint's scatter is the iterations'
wander about the minimum, the noise falls with k; if it is a slow drift, averaging lags and the bias grows.  The same
for the two networks after each of the last ``--last`` iterations (no average): does the pair converge?
Prints one line per k and writes ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs=4, metavar="FILE", help="A.h5 A.npy B.h5 B.npy")
    p.add_argument("--mock-cache", required=True, help="the mock (catalog file) whose region and stars to use")
    p.add_argument("--last", type=int, default=8, help="average over up to this many last iterations (default 8)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    import truth_recovery as tr
    from jax.flatten_util import ravel_pytree
    from truth_recovery_map import evaluation_theta

    from photoinfer.io.models import load_model
    truth = load_model(tr.SHARED / "green2020_nn_model.h5")
    theta = evaluation_theta(a.mock_cache)
    m_true = np.asarray(truth.predict_y(theta, 0.0))[:, 0]
    rms = lambda v: float(np.sqrt(np.mean(v ** 2)))  # noqa: E731
    runs = []
    for model_file, iter_file in zip(a.files[::2], a.files[1::2]):
        model = load_model(model_file)
        w, unravel = ravel_pytree(model.params)
        its = np.load(iter_file)
        if not np.allclose(its[-1], np.asarray(w), atol=1e-6):
            raise ValueError(f"{iter_file}: its last iterate is not the network of {model_file}")
        m_g = lambda wv: np.asarray(model.replace(params=unravel(wv.astype(np.float32))).predict_y(  # noqa: E731
            theta, 0.0))[:, 0] - m_true
        last = min(a.last, len(its))
        runs.append(([m_g(its[-k:].mean(0)) for k in range(1, last + 1)], [m_g(w) for w in its[-last:]]))

    def pair(d1, d2, **key):
        return {**key, "M_G_rms": [rms(d1), rms(d2)], "M_G_mean": [float(d1.mean()), float(d2.mean())],
                "noise": rms(d1 - d2) / float(np.sqrt(2)), "shared": rms((d1 + d2) / 2),
                "correlation": float(np.corrcoef(d1, d2)[0, 1])}
    averaged = [pair(d1, d2, k=k) for k, (d1, d2) in enumerate(zip(runs[0][0], runs[1][0]), start=1)]
    n_it = len(runs[0][1])
    by_iteration = [pair(d1, d2, iterations_before_the_end=n_it - 1 - i)
                    for i, (d1, d2) in enumerate(zip(runs[0][1], runs[1][1]))]
    for r in by_iteration + averaged:
        print(r)
    out = Path(a.out or Path(__file__).resolve().parent / "results" / "truth_recovery_iterates.json")
    out.write_text(json.dumps({"command": " ".join(sys.argv), "averaged_over_last_k": averaged,
                               "by_iteration": by_iteration}, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
