"""Figures (matplotlib, imported lazily; the Agg backend is used when none is set).

Each function takes numbers (from :mod:`photoinfer.train.validation` / :mod:`photoinfer.train.report`)
and returns a :class:`matplotlib.figure.Figure`; :func:`save_training_figures` writes the training
report's PNGs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["loss_curves", "zscore_trends", "cmd_comparison", "extinction_variation", "validity_maps",
           "save_training_figures"]


def _figure(nrows, ncols, figsize, **kw):
    """A figure and its axes without pyplot (no global backend state; works headless)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def loss_curves(history):
    """Training and validation loss per epoch (log scale), iteration boundaries marked, and the cut fraction."""
    fig, (ax, ax2) = _figure(1, 2, figsize=(11, 4))
    ep = history.epochs
    t = np.arange(len(ep))
    ax.plot(t, [r["train_loss"] for r in ep], label="train")
    ax.plot(t, [r["val_loss"] for r in ep], label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("epoch (all iterations)")
    ax.set_ylabel("loss (χ²/B + regularization)")
    n_ep = history.config.get("epochs", 1)
    for k in range(1, len(history.iterations)):
        ax.axvline(k * n_ep - 0.5, color="0.85", lw=0.5, zorder=0)
    ax.legend()
    it = history.iterations
    ax2.plot([r["iteration"] for r in it], [100 * r["frac_cut"] for r in it], "o-", label="training stars cut [%]")
    ax2.plot([r["iteration"] for r in it], [r["threshold"] for r in it], "s-", label="threshold (reduced χ²)")
    ax2.set_yscale("log")
    ax2.set_xlabel("iteration")
    ax2.legend()
    fig.tight_layout()
    return fig


def zscore_trends(zscore_bins: dict, components: list):
    """Median and 16/84 % of each component's z-score against θ and E (paper Figs. 7–8)."""
    cols = list(zscore_bins)
    nb = len(components)
    fig, axes = _figure(nb, len(cols), figsize=(3.2 * len(cols), 1.3 * nb), sharex="col", sharey=True,
                             squeeze=False)
    for j, label in enumerate(cols):
        centres, q, _ = zscore_bins[label]
        for b in range(nb):
            a = axes[b, j]
            a.fill_between(centres, q[0, :, b], q[2, :, b], alpha=0.3)
            a.plot(centres, q[1, :, b], lw=1.2)
            for v in (-1, 0, 1):
                a.axhline(v, color="k", lw=0.5, ls=":" if v else "-")
            a.set_ylim(-3, 3)
            if j == 0:
                a.set_ylabel(components[b], fontsize=7)
        axes[-1, j].set_xlabel(label)
    fig.suptitle("z-scores of held-out stars: median and 16–84 %")
    fig.tight_layout()
    return fig


def cmd_comparison(cmd: dict):
    """Colour–magnitude diagrams: observed (dereddened with the fitted E) versus the model's de-noised,
    zero-extinction A·M(θ̂) (paper Fig. 5)."""
    fig, axes = _figure(1, 2, figsize=(9, 5), sharex=True, sharey=True)
    for a, key, title in ((axes[0], "observed", "observed, dereddened"), (axes[1], "model", "model A·M(θ̂)")):
        p = cmd[key]
        a.scatter(p[:, 0], p[:, 1], s=1, alpha=0.4, rasterized=True)
        a.set_title(title)
        a.set_xlabel("BP − RP")
    axes[0].set_ylabel("M_G")
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def extinction_variation(teff, dR, bands):
    """δR/R against Teff per band (paper Fig. 10)."""
    nb = len(bands)
    ncol = 4
    nrow = -(-nb // ncol)
    fig, axes = _figure(nrow, ncol, figsize=(12, 2.2 * nrow), sharex=True, squeeze=False)
    for b in range(nrow * ncol):
        a = axes.flat[b]
        if b >= nb:
            a.axis("off")
            continue
        a.scatter(teff, 100 * dR[:, b], s=1, alpha=0.3, rasterized=True)
        a.set_title(bands[b], fontsize=9)
        a.axhline(0, color="k", lw=0.5)
    for a in axes[-1]:
        a.set_xlabel("Teff [K]")
    for a in axes[:, 0]:
        a.set_ylabel("δR/R [%]")
    fig.tight_layout()
    return fig


def validity_maps(grid):
    """Each density map of a :class:`~photoinfer.model.ValidityGrid`, maximum over [M/H], in (Teff, logg);
    the 1e-2 contour marks the region of validity."""
    K = len(grid.labels)
    ncol = 5
    nrow = -(-K // ncol)
    fig, axes = _figure(nrow, ncol, figsize=(3 * ncol, 2.6 * nrow), sharex=True, sharey=True, squeeze=False)
    ext = (grid.teff[0], grid.teff[-1], grid.logg[0], grid.logg[-1])
    for k in range(nrow * ncol):
        a = axes.flat[k]
        if k >= K:
            a.axis("off")
            continue
        img = np.asarray(grid.density[k], float).max(axis=2).T
        a.imshow(np.log10(np.maximum(img, 1e-4)), origin="lower", extent=ext, aspect="auto", vmin=-4, vmax=0)
        a.contour(grid.teff, grid.logg, img, levels=[1e-2], colors="w", linewidths=0.7)
        a.set_title(grid.labels[k], fontsize=9)
    for a in axes[-1]:
        a.set_xlabel("Teff [K]")
    for a in axes[:, 0]:
        a.set_ylabel("logg")
    fig.suptitle("training-star density (log10, peak 1), max over [M/H]; white: 1e-2")
    fig.tight_layout()
    return fig


def save_training_figures(figs: dict, prefix) -> list[Path]:
    """Write the training report's figures as ``<prefix>.<name>.png``; returns the paths."""
    prefix = Path(prefix)
    made = {"loss": loss_curves(figs["history"]),
            "zscores": zscore_trends(figs["zscore_bins"], figs["components"]),
            "cmd": cmd_comparison(figs["cmd"]),
            "extinction_variation": extinction_variation(*figs["dR"])}
    if figs.get("validity") is not None:
        made["validity"] = validity_maps(figs["validity"])
    paths = []
    for name, fig in made.items():
        p = prefix.with_name(f"{prefix.name}.{name}.png")
        fig.savefig(p, dpi=80)
        paths.append(p)
    return paths
