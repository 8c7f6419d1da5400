"""Stars whose chains sit in separate modes: diagnostics within modes, draws weighted by the modes' masses.

When the initialization finds no dominant mode (:func:`photoinfer.infer.init.initial_points`), chain
c of a star starts in mode c mod n_modes, and each mode m carries a mass w_m (renormalized over the
sampled modes).  After sampling:

- If the chains agree (r̂ over all chains ≤ the threshold), the modes were connected: the pooled
  chains are the posterior, as for any star.
- Otherwise the star is **multimodal**: r̂_m and bulk ESS_m are computed within each mode (over its
  chains only), the star's r̂ is max_m r̂_m (chains that disagree within a mode fail), and its ESS is
  that of the weighted mixture, 1 / Σ_m (w_m² / ESS_m).  The output draws are a systematic
  resample of the pooled draws with weights w_m / (draws in mode m), randomly permuted over
  (chain, draw): equal-weight draws of the mixture (their chain structure is not that of the
  sampler; the summary's r̂/ESS are the within-mode values above).
"""
from __future__ import annotations

import numpy as np

__all__ = ["combine_modes"]


def _systematic(rng, w: np.ndarray, n: int) -> np.ndarray:
    """n indices drawn by systematic resampling with weights w (sum 1)."""
    c = np.cumsum(w)
    c[-1] = 1.0
    return np.searchsorted(c, (rng.random() + np.arange(n)) / n)


def combine_modes(samples: dict, chain_mode: np.ndarray, mode_weight: np.ndarray, seed: int = 0,
                  rhat_threshold: float = 1.01):
    """Within-mode diagnostics and mass-weighted draws for stars whose chains started in several modes.

    Parameters
    ----------
    samples : dict name -> (chain, draw, N)
    chain_mode : (N, chain) int, mode of each chain; mode_weight : (N, chain), its mode's mass (sum over modes 1)
    seed : int
    rhat_threshold : float
        Chains that agree to this r̂ are treated as one mode.

    Returns
    -------
    samples : dict, the draws with multimodal stars resampled (a new dict; others unchanged)
    diag : dict rhat_max, ess_bulk_min, ess_tail_min (N,) (:func:`photoinfer.posterior.diagnostics`,
        within modes for multimodal stars)
    multimodal : (N,) bool
    """
    from ..posterior import diagnostics
    diag = diagnostics(samples)
    chain_mode = np.asarray(chain_mode)
    n_modes = chain_mode.max(axis=1) + 1
    cand = (n_modes > 1) & ~(diag["rhat_max"] <= rhat_threshold)
    out = {k: np.array(v, copy=True) for k, v in samples.items()}
    multimodal = np.zeros(len(n_modes), bool)
    rng = np.random.default_rng(seed)
    C, S = next(iter(samples.values())).shape[:2]
    for k in np.unique(n_modes[cand]):
        idx = np.flatnonzero(cand & (n_modes == k))
        per = []
        for m in range(k):
            chains = np.flatnonzero(chain_mode[idx[0]] == m)       # dealt in turn: the same for every star
            per.append(diagnostics({p: v[chains][:, :, idx] for p, v in samples.items()}))
        w = np.stack([mode_weight[idx, np.flatnonzero(chain_mode[idx[0]] == m)[0]] for m in range(k)])   # (k, n)
        rhat = np.max([d["rhat_max"] for d in per], axis=0)
        for key in ("ess_bulk_min", "ess_tail_min"):
            diag[key][idx] = 1.0 / np.sum([w[m] ** 2 / d[key] for m, d in enumerate(per)], axis=0)
        diag["rhat_max"][idx] = rhat
        multimodal[idx] = True
        counts = np.array([np.sum(chain_mode[idx[0]] == m) for m in range(k)])
        for j, i in enumerate(idx):
            dw = np.repeat(w[chain_mode[i], j] / counts[chain_mode[i]] / S, S)          # (C·S,) chain-major
            pick = rng.permutation(_systematic(rng, dw / dw.sum(), C * S))
            for p in out:
                out[p][:, :, i] = samples[p][:, :, i].reshape(-1)[pick].reshape(C, S)
    return out, diag, multimodal
