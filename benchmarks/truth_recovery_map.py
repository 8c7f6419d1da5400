"""Where in θ a trained model's M_G is off: ΔM_G = M_G(fit) − M_G(truth) in (Teff, logg) cells.

Usage::

    python benchmarks/truth_recovery_map.py MODEL.h5 [MODEL2.h5] --mock-cache benchmarks/results/cache/mock200k_s1.parquet

Evaluated at the true θ of 40,000 usable stars of the mock (seeded draw) inside the region of truth_recovery.py
(the θ nodes where the mock's true-θ density is ≥ 1e-2 of its peak): the rms and mean of ΔM_G, then the mean per
cell (star counts in parentheses).  With a second model (e.g. trained on an independent mock), the two are
evaluated at the same θ: ``noise`` = rms(Δ₁ − Δ₂)/√2, ``shared`` = rms((Δ₁ + Δ₂)/2), the bias estimate
√(shared² − noise²/2), and the cells show the mean of the pair (half their difference in parentheses).

``--curvature`` asks whether ΔM_G (of the pair's mean) is a smoothing of the truth: its correlation with two
Laplacians of the true M_G(θ) (central differences), ½ tr(C̄ ∇²M_G) with C̄ the median θ-error covariance of the
mock's usable stars (what an estimator that does not deconvolve the θ errors adds) and ½ tr(D ∇²M_G) with D the
squares of the network's θ standardization (what smoothing in the network's own input coordinates adds), and the
least-squares coefficient of each alone.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TEFF_EDGES = [3500, 4200, 4600, 5000, 5400, 5800, 6200, 7000]
LOGG_EDGES = [0, 2, 2.5, 3, 3.5, 3.9, 4.2, 4.4, 4.6, 5.5]


def evaluation_theta(mock_cache, n_eval=40000, seed=0):
    """(n_eval, 3) true θ of usable stars of the mock inside the truth-recovery region."""
    from truth_recovery import in_region, region_mask

    from photoinfer.catalog import TRAINING_UNUSABLE
    from photoinfer.io.catalogs import read_catalog
    cat = read_catalog(mock_cache)
    th = np.column_stack([cat.extra[k] for k in ("true_teff", "true_logg", "true_feh")])
    usable = cat.usable(TRAINING_UNUSABLE)
    mask, _ = region_mask(th, usable)
    sel = np.flatnonzero(usable & in_region(th, mask))
    pick = np.random.default_rng(seed).choice(len(sel), min(n_eval, len(sel)), replace=False)
    return th[sel[pick]].astype(np.float32)


def cell_table(theta, value, paired=None):
    """Lines of the mean of ``value`` per (logg row, Teff column) cell with ≥ 30 stars."""
    lines = ["logg \\ Teff " + " ".join(f"{a}-{b}".center(15) for a, b in zip(TEFF_EDGES[:-1], TEFF_EDGES[1:]))]
    for g0, g1 in zip(LOGG_EDGES[:-1], LOGG_EDGES[1:]):
        row = []
        for t0, t1 in zip(TEFF_EDGES[:-1], TEFF_EDGES[1:]):
            s = (theta[:, 1] >= g0) & (theta[:, 1] < g1) & (theta[:, 0] >= t0) & (theta[:, 0] < t1)
            extra = f"({s.sum():5d})" if paired is None else f"({paired[s].mean():+.3f})" if s.sum() >= 30 else ""
            row.append((f"{value[s].mean():+.3f}{extra}" if s.sum() >= 30 else "-").center(15))
        lines.append(f"{g0:.1f}-{g1:.1f}".ljust(12) + " ".join(row))
    return lines


def laplacians(truth, theta, cov, steps=(20.0, 0.02, 0.02)):
    """½ tr(C ∇²M_G) at ``theta`` (n, 3) for each (3, 3) matrix C in ``cov``, by central differences of the
    model's M_G with the given steps [K, dex, dex]; (len(cov), n)."""
    f = lambda t: np.asarray(truth.predict_y(t.astype(np.float32), 0.0), np.float64)[:, 0]  # noqa: E731
    th = theta.astype(np.float64)
    m0, h, H = f(th), np.asarray(steps), np.zeros((len(th), 3, 3))
    for i in range(3):
        ei = np.eye(3)[i] * h[i]
        H[:, i, i] = (f(th + ei) - 2 * m0 + f(th - ei)) / h[i] ** 2
        for j in range(i + 1, 3):
            ej = np.eye(3)[j] * h[j]
            H[:, i, j] = H[:, j, i] = (f(th + ei + ej) - f(th + ei - ej) - f(th - ei + ej) + f(th - ei - ej)) / (4 * h[i] * h[j])
    return np.stack([0.5 * np.einsum("ij,nij->n", c, H) for c in cov])


def smoothing(truth, theta, dm, mock_cache):
    """Print the correlation and least-squares coefficient of ΔM_G ``dm`` on the two Laplacians (``--curvature``)."""
    from photoinfer.catalog import TRAINING_UNUSABLE
    from photoinfer.io.catalogs import read_catalog
    cat = read_catalog(mock_cache)
    c_bar = np.median(np.asarray(cat.theta_cov)[cat.usable(TRAINING_UNUSABLE)], axis=0)
    D = np.diag(np.asarray(truth.theta_std, np.float64) ** 2)
    for name, lap in zip(("θ errors ½tr(C̄∇²M_G)", "standardized ½tr(D∇²M_G)"), laplacians(truth, theta, [c_bar, D])):
        coef = float(np.dot(lap, dm) / np.dot(lap, lap))
        print(f"{name}: rms {np.sqrt(np.mean(lap ** 2)):.4f} mag, correlation with ΔM_G {np.corrcoef(lap, dm)[0, 1]:.3f}, "
              f"coefficient {coef:.4f}, rms of ΔM_G − coefficient × it {np.sqrt(np.mean((dm - coef * lap) ** 2)):.4f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="one or two trained model files")
    p.add_argument("--mock-cache", required=True, help="the mock (catalog file) whose region and stars to use")
    p.add_argument("--n-eval", type=int, default=40000)
    p.add_argument("--curvature", action="store_true",
                   help="correlate ΔM_G with the θ-error and the standardized Laplacians of the true M_G(θ)")
    a = p.parse_args(argv)
    import truth_recovery as tr

    from photoinfer.io.models import load_model
    truth = load_model(tr.SHARED / "green2020_nn_model.h5")
    theta = evaluation_theta(a.mock_cache, a.n_eval)
    m_true = np.asarray(truth.predict_y(theta, 0.0))[:, 0]
    d = [np.asarray(load_model(f).predict_y(theta, 0.0))[:, 0] - m_true for f in a.models[:2]]
    rms = lambda v: float(np.sqrt(np.mean(v ** 2)))  # noqa: E731
    for f, di in zip(a.models, d):
        print(f"{f}: ΔM_G rms {rms(di):.4f}, mean {di.mean():+.4f}")
    if a.curvature:
        smoothing(truth, theta, np.mean(d, axis=0), a.mock_cache)
    if len(d) == 1:
        print("\n".join(cell_table(theta, d[0])))
        return
    noise, shared = rms(d[0] - d[1]) / np.sqrt(2), rms((d[0] + d[1]) / 2)
    print(f"correlation {np.corrcoef(d[0], d[1])[0, 1]:.2f}, noise {noise:.4f}, shared {shared:.4f}, "
          f"bias {np.sqrt(max(shared ** 2 - noise ** 2 / 2, 0.0)):.4f}")
    print("\n".join(cell_table(theta, (d[0] + d[1]) / 2, (d[0] - d[1]) / 2)))


if __name__ == "__main__":
    main()
