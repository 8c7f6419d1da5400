"""Is the Laplace approximation of a star's parallax likelihood biased?  A one-dimensional model (docs/training.md, Eq. P4).

Usage::

    python benchmarks/parallax_integral_toy.py [--n 200000] [--seed 1] [--out benchmarks/results/parallax_integral_toy.json]

Each star's true absolute magnitude scatters by √v about the population's M (what its other data, θ̂ and the
photometry, allow), its apparent magnitude m is exact, and its parallax ϖ̂ = 10^(2 − μ/5) + σ_ϖ ε with μ = m − M_i and
σ_ϖ fixed by a parallax S/N at the star's expected distance.  M is estimated by maximizing Σ_i ln ∫ N(ϖ̂_i; ϖ(μ), σ_ϖ)
N(μ; m_i − M, v) dμ computed (a) exactly (61-point Gauss–Hermite) and (b) by the Laplace approximation at the mode
with the Gauss–Newton curvature at the mode (what the training's marginal estimator does, with the parallax's
weight at the current μ, Eq. P3).  Prints, per (v, S/N), the estimates' offsets from the true M and v/2K, K = 5/ln 10.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

K = 5.0 / np.log(10.0)


def draw(rng, v, snr, n, M=3.0):
    """(m, ϖ̂, σ_ϖ) of n stars, μ of the population centre uniform in [9, 12] mag."""
    mu_c = rng.uniform(9.0, 12.0, n)
    m = mu_c + M
    mu = m - (M + np.sqrt(v) * rng.normal(size=n))
    sig = 10.0 ** (2.0 - mu_c / 5.0) / snr
    return m, 10.0 ** (2.0 - mu / 5.0) + sig * rng.normal(size=n), sig


def neg2_exact(M, m, plx, sig, v, nodes=61):
    t, w = np.polynomial.hermite_e.hermegauss(nodes)
    mu = (m - M)[:, None] + np.sqrt(v) * t[None]
    ll = -0.5 * ((plx[:, None] - 10.0 ** (2.0 - mu / 5.0)) / sig[:, None]) ** 2
    mx = ll.max(1)
    return -2.0 * np.sum(mx + np.log(np.sum(w * np.exp(ll - mx[:, None]), 1) / np.sqrt(2 * np.pi)))


def neg2_laplace(M, m, plx, sig, v, steps=30):
    mp = m - M
    mu = mp.copy()
    for _ in range(steps):  # Gauss–Newton to the mode of r² + (μ − m + M)²/v
        p = 10.0 ** (2.0 - mu / 5.0)
        r, J = (plx - p) / sig, p / (K * sig)
        mu = mu - (r * J + (mu - mp) / v) / (J * J + 1.0 / v)
    p = 10.0 ** (2.0 - mu / 5.0)
    r, J = (plx - p) / sig, p / (K * sig)
    return np.sum(r * r + (mu - mp) ** 2 / v + np.log((J * J + 1.0 / v) * v))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200000, help="stars per case (default 200000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "parallax_integral_toy.json"))
    a = p.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    rows = []
    for v in (0.01, 0.05, 0.1, 0.2):
        for snr in (3, 5, 10, 20):
            m, plx, sig = draw(rng, v, snr, a.n)
            row = {"v": v, "snr": snr, "v_over_2K": v / (2 * K)}
            for name, f in (("exact", neg2_exact), ("laplace", neg2_laplace)):
                res = minimize_scalar(lambda M: f(M, m, plx, sig, v), bounds=(2.5, 3.5), method="bounded",
                                      options={"xatol": 1e-5})
                row[name] = float(res.x - 3.0)
            rows.append(row)
            print(f"v = {v:4.2f} mag², S/N {snr:2d}: exact {row['exact']:+.4f}, Laplace {row['laplace']:+.4f}, "
                  f"v/2K {row['v_over_2K']:.4f}")
    Path(a.out).write_text(json.dumps({"command": "python benchmarks/parallax_integral_toy.py " + " ".join(argv or []),
                                       "n": a.n, "seed": a.seed, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
