"""The named optimizers: each a short chain of building blocks, hyperparameters injected.

Every optimizer here is written as the plain chain that defines it and wrapped by
``schedule_injection``, so that each float hyperparameter may be a constant or a
schedule and ``get_hyperparams(state)["learning_rate"]`` works on all of them.
Arguments, defaults and numbers follow Optax's functions of the same name.
"""

from __future__ import annotations

from typing import Any

from gradtx.core import GradientTransformation, ScalarOrSchedule, chain
from gradtx.schedules.injection import schedule_injection
from gradtx.transforms.adaptive import scale_by_adam
from gradtx.transforms.scaling import scale_by_learning_rate


@schedule_injection
def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    mu_dtype: Any = None,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Adam (Kingma & Ba, 2015): ``scale_by_adam`` then ``-learning_rate``.

    ::

        m_t = b1 m_{t-1} + (1 - b1) g;   v_t = b2 v_{t-1} + (1 - b2) g^2
        p  <- p - lr * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t) + eps_root) + eps)

    Same numbers as ``optax.adam`` and as ``torch.optim.Adam`` without weight decay
    (PyTorch's ``weight_decay`` is L2: use ``gradtx.compat.torch.adam``). Keras adds
    eps to the raw ``sqrt(v_t)``: use ``gradtx.compat.keras.adam``.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: first-moment decay in [0, 1).
        b2: second-moment decay in [0, 1).
        eps: added outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the first moment (None: the parameter dtype).
        nesterov: NAdam's Nesterov momentum (see ``nadam``).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.adam(0.1)
        >>> params = {"w": jnp.array([1.0, -1.0])}
        >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
        >>> gtx.apply_updates(params, updates)["w"].tolist()
        [0.8999999761581421, -0.8999999761581421]

    Reference: Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization".
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )
