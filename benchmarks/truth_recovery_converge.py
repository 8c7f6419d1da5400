"""Do two trained models meet when their joint objective is minimized further?  Gauss–Newton steps to convergence.

Usage::

    python benchmarks/truth_recovery_converge.py A.h5 B.h5 --mock-cache benchmarks/results/cache/mock200k_s1.parquet \
        --n 50000 --config '{"latent_theta": "marginal", "gn_steps": 5, "distance_prior": "bayestar", \
        "l2_hidden": 1e-5, "l1_extinction": 1e-3}' --steps 40 --out benchmarks/results/truth_recovery_converge.json

Two models trained on the same data with different seeds (``truth_recovery.py --config '{…, "seed": 2,
"split_seed": 1}' --save-model``) differ in M_G by more than the data's noise.  Whether that is where the
optimization stopped (a slowly converging objective) or which minimum it found (several) decides the remedy.  Each
model is set up as the training loop sets up its first Gauss–Newton call when started from it
(one epoch at learning rate 0, the scale step, the per-star joint fit,
the population prior and the normalizer with the *same* seed for both), and then ``--steps`` Levenberg–Marquardt
steps of :func:`photoinfer.train.gauss_newton.gauss_newton_steps` are taken, ``--chunk`` at a time (each chunk with
a new curvature subsample).  After every chunk: F, each model's ΔM_G = M_G − M_G(truth) rms at the evaluation stars of
``truth_recovery_map.py``, and the pair's noise rms(Δ₁ − Δ₂)/√2.  If the noise falls with the steps, ending training
at its objective's minimum removes it.  Writes ``--out`` and prints each chunk.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs=2, help="two trained model files (truth_recovery.py --save-model)")
    p.add_argument("--mock-cache", required=True, help="the mock they were trained on (truth_recovery.py --mock-cache)")
    p.add_argument("--n", type=int, default=50000, help="its first N stars, as in training (default 50000)")
    p.add_argument("--seed", type=int, default=1, help="the seed of the split, p(θ) fit and normalizer (default 1)")
    p.add_argument("--config", default="{}", metavar="JSON", help="the training's TrainConfig fields")
    p.add_argument("--steps", type=int, default=40, help="Gauss–Newton steps per model (default 40)")
    p.add_argument("--chunk", type=int, default=5, help="steps between evaluations (default 5)")
    p.add_argument("--call", type=int, default=2,
                   help="start at the training loop's CALL-th Gauss–Newton call (default 2: the latents fitted twice)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    import truth_recovery as tr
    from truth_recovery_map import evaluation_theta
    from truth_recovery_noise import gn_call

    from photoinfer.io.catalogs import read_catalog
    from photoinfer.io.models import load_model
    from photoinfer.train import TrainConfig
    from photoinfer.train.gauss_newton import gauss_newton_steps

    truth = load_model(tr.SHARED / "green2020_nn_model.h5")
    cat = read_catalog(a.mock_cache)
    cat = cat.subset(np.arange(a.n)) if len(cat) > a.n else cat
    cfg = TrainConfig(**{"parallax_residual": "parallax", "scale_step": True, **json.loads(a.config),
                         "iterations": 1 + a.call, "epochs": 1, "learning_rate": 0.0, "seed": a.seed, "split_seed": a.seed})
    theta = evaluation_theta(a.mock_cache)
    m_true = np.asarray(truth.predict_y(theta, 0.0))[:, 0]
    rms = lambda v: float(np.sqrt(np.mean(v ** 2)))  # noqa: E731
    runs = []
    for f in a.models:
        model = load_model(f)
        t0 = time.perf_counter()
        params, (z, y, W, z_tilde, Lam_x, ivar), kw = gn_call(cat, cfg, model, a.call)
        kw.pop("n_steps"), kw.pop("seed")
        rec = {"model": f, "setup_seconds": time.perf_counter() - t0, "chunks": []}
        d = []
        for c in range(0, a.steps + 1, a.chunk):
            if c:
                tc = time.perf_counter()
                params, z, h = gauss_newton_steps(params, z, y, W, z_tilde, Lam_x, ivar, n_steps=a.chunk,
                                                  seed=1000 * a.seed + c, **kw)
                F, acc, lam, sec = h[-1]["F_after"] if h else None, sum(x["accepted"] for x in h), \
                    h[-1]["lambda"] if h else None, time.perf_counter() - tc
                print("  steps (decrease, predicted, λ):", [(round(x["F_before"] - x["F_after"], 1), round(x.get("predicted", np.nan), 1), x["lambda"]) for x in h], flush=True)
            else:
                F = acc = lam = sec = None
            dm = np.asarray(model.replace(params=params).predict_y(theta, 0.0))[:, 0] - m_true
            d.append(dm)
            rec["chunks"].append({"steps": c, "F": F, "accepted": acc, "lambda": lam, "seconds": sec,
                                  "M_G_rms": rms(dm), "M_G_mean": float(dm.mean())})
            print(f, rec["chunks"][-1], flush=True)
        rec["d"] = d
        runs.append(rec)
    pairs = []
    for i, (d1, d2) in enumerate(zip(runs[0].pop("d"), runs[1].pop("d"))):
        pairs.append({"steps": runs[0]["chunks"][i]["steps"], "noise": rms(d1 - d2) / float(np.sqrt(2)),
                      "shared": rms((d1 + d2) / 2), "correlation": float(np.corrcoef(d1, d2)[0, 1])})
        print(pairs[-1])
    out = Path(a.out or Path(__file__).resolve().parent / "results" / "truth_recovery_converge.json")
    out.write_text(json.dumps({"command": " ".join(sys.argv), "runs": runs, "pairs": pairs}, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
