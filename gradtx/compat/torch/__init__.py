"""PyTorch's optimizers as gradtx chains: ``torch.optim`` argument names, defaults and numbers.

Each function returns a ``named_chain`` of gradtx blocks that reproduces
``torch.optim.<Name>`` step for step (checked against PyTorch 2.13 on recorded
trajectories: float64 within 1e-10, float32 within 1e-5). The chain shows PyTorch's
conventions: ``weight_decay`` is L2 (the decay term is added to the gradient, first in
the chain) except in ``adamw`` and with ``decoupled_weight_decay=True`` (after the
preconditioner); ``maximize`` negates the gradient before anything else; the learning
rate multiplies the step last, outside every buffer; a complex parameter is optimized
as its real and imaginary parts (PyTorch's ``view_as_real``: Adam's second moment per
part, not of ``|g|^2`` as in ``gradtx.adam`` and Optax). ``lr`` is a number (a 0-d
PyTorch tensor, as PyTorch takes it, is read as a Python float; PyTorch computes some
step sizes in a float32 tensor's dtype, see docs/conventions.md) or a gradtx
schedule: its value at step t (t from 0) is the learning rate of the t-th
``optimizer.step()``, as with a scheduler stepped after each optimizer step (see
``gradtx.compat.torch.lr_scheduler``).

These are plain chains, not ``schedule_injection`` optimizers: PyTorch computes with its
hyperparameters as Python doubles, and injecting them would round them to float32.
Wrap one in ``gradtx.schedule_injection`` if you need ``get_hyperparams``.

``load_state_dict`` turns a PyTorch optimizer ``state_dict()`` into the matching gradtx
state, so a run started in PyTorch continues here on the same trajectory.

The optimizers are in ``adam_family`` and ``classic``, what their chains share in
``chains``, ``clip_grad_norm`` in ``clip_grad``, the schedulers in ``lr_scheduler`` and
the state conversion in ``state_dict``.
"""

from gradtx.compat.torch import lr_scheduler
from gradtx.compat.torch.adam_family import adam, adamax, adamw, nadam, radam
from gradtx.compat.torch.classic import adadelta, adagrad, asgd, rmsprop, rprop, sgd
from gradtx.compat.torch.clip_grad import clip_grad_norm
from gradtx.compat.torch.state_dict import load_plateau_state, load_state_dict

__all__ = [
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "asgd",
    "clip_grad_norm",
    "load_plateau_state",
    "load_state_dict",
    "lr_scheduler",
    "nadam",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
]
