"""PyTorch's ReduceLROnPlateau as gradtx's ``reduce_on_plateau`` with its arguments."""

from __future__ import annotations

from gradtx import check
from gradtx.core import GradientTransformation
from gradtx.schedules.plateau import reduce_on_plateau


def reduce_lr_on_plateau(
    lr: float,
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
    eps: float = 1e-8,
    *,
    require_value: bool = True,
) -> GradientTransformation:
    """``ReduceLROnPlateau`` with PyTorch's arguments, as a transform to chain after ``lr``.

    ``chain(gradtx.compat.torch.sgd(lr), reduce_lr_on_plateau(lr, ...))`` scales every
    step by ``lr_now / lr``; update it with ``value=metric``. It is
    ``gradtx.schedules.reduce_on_plateau`` with ``min_scale = min_lr / lr`` and ``eps /
    lr`` (PyTorch compares learning rates, the transform compares scales). The scale
    used by an update already reflects the metric passed with it: pass the metric
    PyTorch's ``scheduler.step(metric)`` received before that optimizer step. For
    PyTorch's usual loop, ``scheduler.step(val_loss)`` after each epoch, build it with
    ``require_value=False`` and pass the epoch's ``value=val_loss`` with the first update
    of the next epoch (the updates without a value keep the state); tested against
    PyTorch 2.13, float64 within 1e-10 over 60 epochs. To continue a PyTorch run, put
    ``gradtx.compat.torch.load_plateau_state(scheduler.state_dict(), lr)`` in this
    transform's place in the state ``load_state_dict`` returns. Scaling the updates is
    PyTorch's changed ``lr`` for every optimizer whose ``lr`` multiplies its step (SGD,
    Adam and the rest), not for Rprop, which reads ``lr`` once as its initial step size
    (PyTorch's plateau then changes nothing: leave it out), nor ASGD, whose step size is
    a nonlinear function of ``lr`` (0.13 and 0.057 off PyTorch over 30 epochs). A
    reduction here lasts: beside PyTorch's ``CosineAnnealingWarmRestarts``, ``CyclicLR``
    or ``OneCycleLR``, which set the rate from their base at every step, PyTorch's
    lasts one step, and ``SequentialLR`` drops it at its next milestone (no gradtx
    equivalent; docs/conventions.md, "Whole recipes").

    Args:
        lr: the optimizer's learning rate, > 0.
        mode: ``'min'`` (the metric should fall) or ``'max'``.
        factor: the rate is multiplied by it at a reduction, in [0, 1).
        patience: bad epochs tolerated; the reduction comes at the next one, an
            integer >= 0.
        threshold: the improvement that counts, >= 0.
        threshold_mode: ``'rel'`` (``best * (1 -+ threshold)``) or ``'abs'``
            (``best -+ threshold``).
        cooldown: epochs after a reduction before bad epochs count again, an integer
            >= 0.
        min_lr: the rate is never reduced below it, >= 0.
        eps: a reduction smaller than eps (in learning rate) is skipped, >= 0.
        require_value: True or False; False lets updates come without ``value`` (they
            keep the state).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> from gradtx.compat import torch as tc
        >>> tx = gtx.chain(tc.sgd(0.1), tc.lr_scheduler.reduce_lr_on_plateau(0.1, patience=0))
        >>> params = jnp.zeros(1)
        >>> state = tx.init(params)
        >>> u, state = tx.update(jnp.ones(1), state, params, value=1.0)
        >>> u, state = tx.update(jnp.ones(1), state, params, value=2.0)
        >>> [round(float(x), 6) for x in u]
        [-0.01]

    Reference: PyTorch's ``torch.optim.lr_scheduler.ReduceLROnPlateau``.
    """
    check.positive("lr", lr)
    check.non_negative("min_lr", min_lr)
    check.non_negative("eps", eps)
    check.boolean("require_value", require_value)
    return reduce_on_plateau(
        factor=factor,
        patience=patience,
        threshold=threshold,
        threshold_mode=threshold_mode,
        cooldown=cooldown,
        min_scale=min_lr / lr,
        mode=mode,
        eps=eps / lr,
        require_value=require_value,
    )
