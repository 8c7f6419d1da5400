"""ln p(μ) along a sightline for the Bayestar and brutus Galactic models (and the sky average).

Usage::

    python examples/priors_along_sightline.py [--l 120] [--b 30] [--plot out.png]

Prints, for μ from 4 to 19 mag, the normalized ln p(μ | l, b) of METHOD §8 for both parameter
sets, the position-free (sky-averaged) prior, and the halo fraction. With ``--plot`` and
matplotlib installed, also draws them.
"""
from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

from photoinfer import priors


def normalized(lp, mu):
    """Normalize ln p over the μ grid (trapezoid), so that curves can be compared."""
    lp = np.asarray(lp, np.float64)
    p = np.exp(lp - lp.max())
    return lp - lp.max() - np.log(np.trapezoid(p, mu))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--l", type=float, default=120.0, help="Galactic longitude [deg]")
    ap.add_argument("--b", type=float, default=30.0, help="Galactic latitude [deg]")
    ap.add_argument("--plot", default=None, help="write a figure to this path (needs matplotlib)")
    args = ap.parse_args(argv)

    mu = np.linspace(4.0, 19.0, 301)
    rows = {}
    for name in ("bayestar", "brutus"):
        p = priors.galactic_params(name)
        rows[name] = normalized(priors.log_prior_mu(jnp.asarray(mu), args.l, args.b, p), mu)
        rows[name + " (sky)"] = normalized(priors.log_prior_mu_sky(jnp.asarray(mu), p), mu)
        rows[name + " f_halo"] = np.asarray(priors.component_fractions(jnp.asarray(mu), args.l, args.b, p))[:, 2]

    print(f"ln p(mu) along (l, b) = ({args.l:g}, {args.b:g}) deg, normalized over mu in [4, 19]")
    cols = list(rows)
    print("   mu  " + "  ".join(f"{c:>16s}" for c in cols))
    for i in range(0, len(mu), 20):
        print(f"{mu[i]:5.2f}  " + "  ".join(f"{rows[c][i]:16.4f}" for c in cols))
    for name in ("bayestar", "brutus"):
        print(f"{name}: ln p(mu) peaks at mu = {mu[np.argmax(rows[name])]:.2f}")

    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed; no figure")
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in cols:
            if "f_halo" not in c:
                ax.plot(mu, rows[c], label=c, ls="--" if "sky" in c else "-")
        ax.set_xlabel("distance modulus μ [mag]")
        ax.set_ylabel("ln p(μ)")
        ax.set_ylim(-15, 1)
        ax.set_title(f"(l, b) = ({args.l:g}°, {args.b:g}°)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
