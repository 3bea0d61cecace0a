"""PyTorch's learning-rate schedulers as gradtx schedules (``torch.optim.lr_scheduler``).

Each function returns a schedule ``step -> lr`` whose value at step t (t from 0) is the
learning rate PyTorch uses for the t-th ``optimizer.step()`` when ``scheduler.step()``
follows every optimizer step (PyTorch applies the value at 0 in the scheduler's
constructor). Pass it as ``lr`` to a ``gradtx.compat.torch`` optimizer, or to any gradtx
optimizer. PyTorch computes most schedulers by a recursion on the previous lr; these are
the closed forms of the same sequences (equal up to rounding, checked against PyTorch
2.13 on recorded sequences).

The values are computed in the default float dtype (float64 when ``jax_enable_x64`` is
on, as PyTorch's Python doubles), so float64 runs match PyTorch to 1e-10; the schedules
of ``gradtx.schedules`` return float32. The periodic ones (``cyclic_lr``,
``cyclic_momentum``, ``cosine_annealing_lr``) take the position in the period from the
integer step, so float32 keeps its precision up to step 2**31 - 1.

The step is clamped into ``[0, 2**31 - 1]`` as in ``gradtx.schedules``: past it (a Python
int, or int64 under x64) is where the int32 counters stop, and a negative step, which
PyTorch never takes, is step 0 rather than an extrapolation.

The schedulers are in ``decay`` (step, exponential, linear, constant, polynomial,
sequential), ``cosine``, ``cyclical`` (cyclic and one-cycle) and ``plateau``.
"""

from gradtx.compat.torch.lr_scheduler.cosine import (
    cosine_annealing_lr,
    cosine_annealing_warm_restarts,
)
from gradtx.compat.torch.lr_scheduler.cyclical import (
    cyclic_lr,
    cyclic_momentum,
    one_cycle_lr,
    one_cycle_momentum,
)
from gradtx.compat.torch.lr_scheduler.decay import (
    constant_lr,
    exponential_lr,
    linear_lr,
    multistep_lr,
    polynomial_lr,
    sequential_lr,
    step_lr,
)
from gradtx.compat.torch.lr_scheduler.plateau import reduce_lr_on_plateau

__all__ = [
    "constant_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "cyclic_lr",
    "cyclic_momentum",
    "exponential_lr",
    "linear_lr",
    "multistep_lr",
    "one_cycle_lr",
    "one_cycle_momentum",
    "polynomial_lr",
    "reduce_lr_on_plateau",
    "sequential_lr",
    "step_lr",
]
