"""Training checkpoints: one ``state.npz`` in a directory, replaced atomically after every iteration.

Layout of ``<dir>/state.npz``::

    params/<layer>/<kernel|bias>       network parameters
    opt/<i>                            optimizer-state leaves in tree order (Adam with injected lr)
    theta_med, theta_std (3,)          θ normalization
    E, var_E (N,), included (N,)       per-star reddening and the outlier-cut mask
    mu_lin (N,)                        (only with parallax_residual="parallax") the linearization point
    theta_fit (N, 3)                   (only with latent_theta) every star's fitted θ
    meta                               JSON: format, iteration, config, catalog fingerprint,
                                       shuffle-RNG state, history

An interrupted ``photoinfer train`` started again with the same command loads it and continues
after the last completed iteration.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import numpy as np

from ..catalog import Catalog
from ..train.loop import TrainConfig, TrainState, make_optimizer

__all__ = ["save_checkpoint", "load_checkpoint", "catalog_fingerprint", "check_compatible", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "state.npz"
FORMAT = "photoinfer-train-checkpoint"


def catalog_fingerprint(cat: Catalog) -> str:
    """SHA-256 of the catalog's identity and training inputs (ids, photometry, θ, parallax, E prior)."""
    h = hashlib.sha256()
    for a in (cat.source_id, cat.mag, cat.mag_err, cat.theta, cat.theta_cov, cat.parallax, cat.parallax_err, cat.E0,
              cat.sigma_E0):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save_checkpoint(directory, state: TrainState, config: TrainConfig, fingerprint: str, extra: dict | None = None) -> Path:
    """Write ``state`` to ``directory/state.npz`` atomically (temporary file, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"params/{name}/{k}": np.asarray(v) for name, layer in state.params.items() for k, v in layer.items()}
    for i, leaf in enumerate(jax.tree_util.tree_leaves(state.opt_state)):
        arrays[f"opt/{i}"] = np.asarray(leaf)
    meta = {"format": FORMAT, "iteration": int(state.iteration), "config": config.to_dict(), "catalog": fingerprint,
            "rng_state": state.rng_state, "history": state.history, **(extra or {})}
    arrays.update(theta_med=np.asarray(state.theta_med), theta_std=np.asarray(state.theta_std),
                  E=np.asarray(state.E), var_E=np.asarray(state.var_E), included=np.asarray(state.included),
                  meta=np.array(json.dumps(meta, default=_json_default)))
    if state.mu_lin is not None:
        arrays["mu_lin"] = np.asarray(state.mu_lin)
    if state.theta_fit is not None:
        arrays["theta_fit"] = np.asarray(state.theta_fit)
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, directory / CHECKPOINT_FILE)
    return directory / CHECKPOINT_FILE


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o)}")


def load_checkpoint(directory) -> tuple[TrainState, dict]:
    """Read a checkpoint; returns the state and its ``meta`` dict (config, catalog fingerprint...).

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file, if it is missing or not a photoinfer training checkpoint.
    """
    path = Path(directory) / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a photoinfer training checkpoint")
        params = {}
        for key in z.files:
            if key.startswith("params/"):
                _, name, k = key.split("/")
                params.setdefault(name, {})[k] = jax.numpy.asarray(z[key])
        template = make_optimizer(meta["config"]["learning_rate"]).init(params)
        treedef = jax.tree_util.tree_structure(template)
        n_leaves = treedef.num_leaves
        leaves = [jax.numpy.asarray(z[f"opt/{i}"]) for i in range(n_leaves)]
        opt_state = jax.tree_util.tree_unflatten(treedef, leaves)
        state = TrainState(meta["iteration"], params, opt_state, z["theta_med"], z["theta_std"], z["E"], z["var_E"],
                           z["included"].astype(bool), _rng_state(meta["rng_state"]), meta["history"],
                           z["mu_lin"] if "mu_lin" in z.files else None,
                           z["theta_fit"] if "theta_fit" in z.files else None)
    return state, meta


def _rng_state(d: dict) -> dict:
    # JSON turns the PCG64 state's big integers into ints already; nothing else to convert
    return d


def check_compatible(meta: dict, config: TrainConfig, fingerprint: str, path) -> None:
    """Raise ValueError (naming the setting) if a checkpoint cannot continue under ``config`` on this catalog."""
    if meta["catalog"] != fingerprint:
        raise ValueError(f"the checkpoint {path} was made from a different catalog; delete it or use --restart")
    new = config.to_dict()
    for key in TrainConfig.RESUME_KEYS:
        old = meta["config"].get(key, getattr(TrainConfig, key, None))  # (a setting newer than the checkpoint:
        if old != new[key]:                                             # it was made with the default)
            raise ValueError(f"the checkpoint {path} was made with {key} = {old}, this run has "
                             f"{new[key]}; use the same settings, or --restart to start over")
