"""Fixed-size, padded batches: one compilation serves every batch of a jitted per-star function."""
from __future__ import annotations

import jax
import numpy as np

__all__ = ["map_batched", "pad_to"]


def pad_to(a: np.ndarray, size: int) -> np.ndarray:
    """Pad the leading axis of ``a`` to ``size`` by repeating its first row (valid values, masked later)."""
    a = np.asarray(a)
    if len(a) == size:
        return a
    return np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)], axis=0)


def map_batched(fn, args, batch_size: int = 8192):
    """Apply a jitted function of stacked per-star arrays over N stars in fixed-size batches.

    Parameters
    ----------
    fn : callable
        Takes a pytree of arrays with leading axis ``batch_size`` and returns a pytree with the
        same leading axis (typically ``jax.jit(jax.vmap(per_star))``).
    args : pytree of arrays with leading axis N
    batch_size : int
        The last batch is padded to this size, so ``fn`` compiles once (N < batch_size uses N).

    Returns
    -------
    pytree of numpy arrays with leading axis N
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    n = len(leaves[0])
    if n == 0:
        raise ValueError("map_batched: no stars")
    size = min(batch_size, n)
    outs = []
    for start in range(0, n, size):
        chunk = [pad_to(np.asarray(x[start:start + size]), size) for x in leaves]
        res = fn(jax.tree_util.tree_unflatten(treedef, chunk))
        k = min(size, n - start)
        outs.append(jax.tree_util.tree_map(lambda r: np.asarray(r)[:k], res))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *outs)
