"""Live parity on random cases: seeded draws of the options of the PyTorch optimizers and
of Keras' ``ReduceLROnPlateau``, run against the installed libraries (marker ``live``).

test_compat_live.py reruns chosen golden cases; these draw the cases instead (each seed
one optimizer with random flags, or one callback with random arguments and metrics),
for the parts whose combinations the goldens cannot all hold: a PyTorch run continued
from its ``state_dict`` after a random number of steps, complex parameters, and the
callback's arguments and metrics. They run when selected (``pytest -m live``) and are
skipped where PyTorch or Keras is not installed.
"""

from __future__ import annotations

import copy
import os
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx.compat import keras as kc
from gradtx.compat import torch as tc
from gradtx.compat.torch import lr_scheduler

pytestmark = pytest.mark.live

STEPS = 15


def draw_torch_optimizer(r: random.Random) -> tuple[str, dict]:
    """A PyTorch optimizer's name and options, every flag drawn (its compat twin takes
    the same keywords)."""
    name = r.choice(["sgd", "adam", "adamw", "adagrad", "rmsprop", "adadelta", "adamax",
                     "nadam", "radam", "rprop", "asgd"])  # fmt: skip
    wd = r.choice([0.0, 0.0, 1e-2, 0.1])
    options = {"lr": r.choice([1e-3, 1e-2, 0.1]), "maximize": r.random() < 0.3}
    betas = (r.choice([0.5, 0.9]), r.choice([0.9, 0.999]))
    if name == "sgd":
        momentum = r.choice([0.0, 0.5, 0.9])
        nesterov = momentum > 0 and r.random() < 0.5
        dampening = 0.0 if nesterov else r.choice([0.0, 0.1])
        options.update(momentum=momentum, dampening=dampening, weight_decay=wd, nesterov=nesterov)
    elif name in ("adam", "adamw"):
        options.update(betas=(r.choice([0.0, 0.5, 0.9]), betas[1]), eps=r.choice([1e-8, 1e-3]),
                       weight_decay=wd, amsgrad=r.random() < 0.5)  # fmt: skip
        if name == "adam" and r.random() < 0.3:
            options["decoupled_weight_decay"] = True
    elif name == "adagrad":
        options.update(lr_decay=r.choice([0.0, 0.01]), weight_decay=wd,
                       initial_accumulator_value=r.choice([0.0, 0.1]),
                       eps=r.choice([1e-10, 1e-3]))  # fmt: skip
    elif name == "rmsprop":
        options.update(alpha=r.choice([0.9, 0.99]), eps=r.choice([1e-8, 1e-3]), weight_decay=wd,
                       momentum=r.choice([0.0, 0.5]), centered=r.random() < 0.5)  # fmt: skip
    elif name == "adadelta":
        options.update(rho=r.choice([0.9, 0.5]), eps=r.choice([1e-6, 1e-3]), weight_decay=wd)
    elif name == "adamax":
        options.update(betas=betas, eps=r.choice([1e-8, 1e-3]), weight_decay=wd)
    elif name == "nadam":
        options.update(betas=betas, weight_decay=wd, momentum_decay=r.choice([4e-3, 0.0, 0.1]),
                       decoupled_weight_decay=r.random() < 0.5)  # fmt: skip
    elif name == "radam":
        options.update(betas=betas, weight_decay=wd, decoupled_weight_decay=r.random() < 0.5)
    elif name == "rprop":
        options.update(etas=(r.choice([0.3, 0.5]), r.choice([1.2, 1.5])),
                       step_sizes=(r.choice([1e-6, 1e-3]), r.choice([1.0, 50.0])))  # fmt: skip
    else:
        options.update(lambd=r.choice([1e-4, 1e-2]), alpha=r.choice([0.75, 0.5]),
                       t0=r.choice([1e6, 3.0]), weight_decay=wd)  # fmt: skip
    return name, options


def quadratic(rng: np.random.Generator, starts: list[np.ndarray]) -> tuple[list, list]:
    """Gradients ``h (p - c) + noise_t`` of a quadratic, one function per framework:
    ``(torch_gradients(params, t), jax_gradients(params, t))``, complex where ``starts``
    holds complex parameters."""
    import torch

    def like(p):
        draw = rng.normal(size=p.shape)
        return draw + 1j * rng.normal(size=p.shape) if np.iscomplexobj(p) else draw

    h = [rng.uniform(0.5, 2.0, size=p.shape) for p in starts]
    c = [like(p) for p in starts]
    noise = [np.stack([0.1 * like(p) for _ in range(STEPS)]) for p in starts]

    def torch_gradients(params, t):
        return [torch.tensor(h[i]) * (p - torch.tensor(c[i])) + torch.tensor(noise[i][t])
                for i, p in enumerate(params)]  # fmt: skip

    def jax_gradients(params, t):
        return [h[i] * (p - c[i]) + jnp.asarray(noise[i])[t] for i, p in enumerate(params)]

    return torch_gradients, jax_gradients


def run_torch(optimizer, params, gradients, steps, *, scheduler=None, save_at=None):
    """Steps a PyTorch optimizer; returns the state_dict and parameters at ``save_at``."""
    import torch

    saved = None
    for t in range(steps):
        if t == save_at:
            saved = (
                copy.deepcopy(optimizer.state_dict()),
                [p.detach().numpy().copy() for p in params],
            )
        with torch.no_grad():
            for p, g in zip(params, gradients(params, t), strict=True):
                p.grad = g
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return saved


def run_gradtx(tx, params, state, gradients, first_step):
    """The parameters after steps ``first_step, ..., STEPS - 1`` of ``tx``, jitted."""

    @jax.jit
    def step(params, state, t):
        updates, state = tx.update(gradients(params, t), state, params)
        return gtx.apply_updates(params, updates), state

    for t in range(first_step, STEPS):
        params, state = step(params, state, t)
    return [np.asarray(p) for p in params]


@pytest.fixture
def torch_optim():
    """``torch.optim`` with float64 as torch's default dtype for the test: PyTorch keeps
    NAdam's ``mu_product`` and ASGD's ``eta`` and ``mu`` as tensors of the default dtype,
    so under the float32 default a float64 run takes them in float32 (~1e-9 to 1e-8 off
    after 15 steps; docs/conventions.md); the goldens are recorded under float64 too."""
    torch = pytest.importorskip("torch")
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch.optim
    torch.set_default_dtype(default)


OPTIMIZERS = {
    "sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad",
    "rmsprop": "RMSprop", "adadelta": "Adadelta", "adamax": "Adamax", "nadam": "NAdam",
    "radam": "RAdam", "rprop": "Rprop", "asgd": "ASGD",
}  # fmt: skip


@pytest.mark.parametrize("seed", range(24))
def test_live_random_pytorch_run_continues_from_its_state_dict(seed, torch_optim, x64):
    """A random optimizer (and a StepLR on a third of them) saved after 0-14 of 15 steps
    and continued in gradtx ends where PyTorch's run ends."""
    import torch

    r, rng = random.Random(seed), np.random.default_rng(seed)
    name, options = draw_torch_optimizer(r)
    save_at, step_size, gamma = r.choice([0, 1, 2, 5, 9, 14]), r.choice([2, 3, 5]), 0.5
    scheduled = r.random() < 0.3
    starts = [rng.normal(size=(3, 4)), rng.normal(size=4)]
    torch_gradients, jax_gradients = quadratic(rng, starts)
    params = [torch.tensor(p, requires_grad=True) for p in starts]
    optimizer = getattr(torch_optim, OPTIMIZERS[name])(params, **options)
    scheduler = torch_optim.lr_scheduler.StepLR(optimizer, step_size, gamma) if scheduled else None
    saved, saved_params = run_torch(
        optimizer, params, torch_gradients, STEPS, scheduler=scheduler, save_at=save_at
    )
    if scheduled:
        options = dict(options, lr=lr_scheduler.step_lr(options["lr"], step_size, gamma))
    tx = getattr(tc, name)(**options)
    continued = [jnp.asarray(p) for p in saved_params]
    # SGD's state_dict records no step: a schedule's counter is given
    step = save_at if name == "sgd" and scheduled else None
    state = tc.load_state_dict(tx, saved, continued, step=step)
    actual = run_gradtx(tx, continued, state, jax_gradients, save_at)
    for a, p in zip(actual, params, strict=True):
        np.testing.assert_allclose(a, p.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("seed", range(16))
def test_live_random_pytorch_optimizer_on_complex_parameters(seed, torch_optim, x64):
    """A random optimizer on a complex parameter beside a real one: PyTorch's numbers
    (it steps a complex parameter as its real and imaginary parts)."""
    import torch

    r, rng = random.Random(1000 + seed), np.random.default_rng(1000 + seed)
    name, options = draw_torch_optimizer(r)
    starts = [rng.normal(size=4) + 1j * rng.normal(size=4), rng.normal(size=2)]
    torch_gradients, jax_gradients = quadratic(rng, starts)
    params = [torch.tensor(p, requires_grad=True) for p in starts]
    run_torch(
        getattr(torch_optim, OPTIMIZERS[name])(params, **options), params, torch_gradients, STEPS
    )
    tx = getattr(tc, name)(**options)
    start = [jnp.asarray(p) for p in starts]
    actual = run_gradtx(tx, start, tx.init(start), jax_gradients, 0)
    for a, p in zip(actual, params, strict=True):
        np.testing.assert_allclose(a, p.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.fixture(scope="module")
def keras():
    if os.environ.setdefault("KERAS_BACKEND", "jax") != "jax":
        pytest.skip("Keras must run on its JAX backend")
    return pytest.importorskip("keras")


def random_metrics(r: random.Random, rng: np.random.Generator, epochs: int = 50) -> np.ndarray:
    """A random walk, small integers, a noisy decay or rounded noise; a NaN or an inf in
    a fifth of them."""
    kind = r.choice(["walk", "integers", "decay", "rounded"])
    if kind == "walk":
        metrics = np.cumsum(rng.normal(size=epochs))
    elif kind == "integers":
        metrics = rng.integers(0, 4, size=epochs).astype(float)
    elif kind == "decay":
        metrics = 1.0 / (1 + np.arange(epochs)) + 0.01 * rng.normal(size=epochs)
    else:
        metrics = np.round(rng.normal(size=epochs), 1)
    if r.random() < 0.2:
        metrics[r.randrange(epochs)] = np.nan if r.random() < 0.5 else np.inf
    return metrics


class _Model:
    """What Keras' ReduceLROnPlateau reads of a model: its optimizer."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.metrics = []


@pytest.mark.parametrize("seed", range(40))
def test_live_random_keras_plateau_callback_sets_keras_rates(seed, keras):
    """Random arguments (a min_lr above the rate and a negative min_delta included) and
    metrics: the same float32 rate as Keras' callback after every epoch."""
    r, rng = random.Random(seed), np.random.default_rng(seed)
    learning_rate = r.choice([0.1, 1e-3, 1.0, 0.05])
    mode = r.choice(["min", "max", "auto"])
    monitor = r.choice(["val_loss", "loss"] if mode == "auto" else ["val_loss", "val_acc"])
    options = dict(monitor=monitor, mode=mode, factor=r.choice([0.1, 0.5, 0.0, 0.9, 0.3]),
                   patience=r.choice([0, 1, 2, 5]), min_delta=r.choice([0.0, 1e-4, 0.1, -0.1, 1.0]),
                   cooldown=r.choice([0, 1, 3]),
                   min_lr=r.choice([0.0, 0.01, 0.5, 2.0]) * learning_rate)  # fmt: skip
    metrics = random_metrics(r, rng)
    optimizer = keras.optimizers.SGD(learning_rate=learning_rate)
    optimizer.build([keras.Variable(np.zeros(2, np.float32))])
    callback = keras.callbacks.ReduceLROnPlateau(**options, verbose=0)
    callback.set_model(_Model(optimizer))
    callback.on_train_begin()
    opt_state = gtx.schedule_injection(kc.sgd)(learning_rate=learning_rate).init(jnp.zeros(2))
    plateau = kc.reduce_lr_on_plateau(**options)
    state = plateau.init()
    for epoch, metric in enumerate(metrics):
        callback.on_epoch_end(epoch, {monitor: float(metric)})
        opt_state, state = plateau.on_epoch_end(float(metric), opt_state, state)
        rate = float(gtx.get_hyperparams(opt_state)["learning_rate"])
        assert rate == float(np.asarray(optimizer.learning_rate)), (epoch, options)
