"""Full-batch L-BFGS polish of the network (an option of training).

The paper's schedule (Adam, batch 1024, 20 × 25 epochs, learning rate 1e-3·exp(−0.2k)) stops short of
the minimum of its own loss on a large catalog: the released model, the truth of a mock, scores a
lower χ² than the model trained on it (docs/benchmarks.md, truth recovery).  With
``TrainConfig.polish_steps`` > 0, the last ``polish_iterations`` iterations follow their epochs with
that many L-BFGS steps (:func:`optax.lbfgs`, zoom line search) on the *whole* training loss — every
training star that passes the cut, at the iteration's fixed W and E — so the network ends at the
loss's minimum for that iteration's C_y rather than where the stochastic steps left it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["lbfgs_polish"]


def _make(n_bands: int, l2: float, l1: float, steps: int, loss_fn):
    from .loop import batch_loss
    loss_fn = loss_fn or batch_loss

    @jax.jit
    def run(params, x, E, y, W, aux):
        w = jnp.ones(x.shape[0], x.dtype)
        f = lambda p: loss_fn(p, x, E, y, W, w, *aux, n_bands, l2, l1)[0]  # noqa: E731
        opt = optax.lbfgs()
        vg = optax.value_and_grad_from_state(f)

        def step(carry, _):
            p, s = carry
            value, grad = vg(p, state=s)
            upd, s = opt.update(grad, s, p, value=value, grad=grad, value_fn=f)
            return (optax.apply_updates(p, upd), s), value

        (params, _), values = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
        return params, values, f(params)

    return run


_CACHE = {}


def lbfgs_polish(params, x, E, y, W, n_bands: int, l2: float, l1: float, steps: int, loss_fn=None, aux=()):
    """``steps`` L-BFGS steps on the full-batch training loss (``loss_fn``, default
    :func:`~photoinfer.train.loop.batch_loss`, over all the given stars, each weight 1).

    Parameters
    ----------
    x : (n, 3) standardized θ; E : (n,); y : (n, B); W : (n, B, B) — the training stars only
    loss_fn, aux : a loss with the signature of ``batch_loss`` taking the per-star arrays ``aux``
        after the weights (:func:`~photoinfer.train.profile.profile_batch_loss`)

    Returns
    -------
    params, losses : (steps,) the loss before each step, final_loss : ()
    """
    key = (n_bands, float(l2), float(l1), int(steps), loss_fn)
    fn = _CACHE.setdefault(key, _make(*key))
    return fn(params, x, E, y, W, tuple(aux))
