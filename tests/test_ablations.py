"""Ablations: a block swapped or moved in a chain gives the variant the papers describe.

Every composition of the "Ablations" table in ``docs/optimizers.md`` runs for 50 steps on
the gradients of a quadratic plus fixed noise, which depend on the params (so the blocks
that read the params, weight decay, L1, lookahead, are checked inside the loop), against
a plain NumPy loop of the published equations in float64 (``tests/reference/classic.py``
blocks, composed here in the order the chain puts them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from tests import trajectory
from tests.reference import classic

STEPS = 50
LR, WD, B1, B2, EPS = 0.05, 0.1, 0.8, 0.95, 1e-6
N = 16  # a 4-vector "b" and a 3x4 matrix "w", flattened in that (the tree's) order

_rng = np.random.default_rng(0)
CURVATURE = _rng.uniform(0.2, 3.0, N)
TARGET = _rng.normal(size=N)
NOISE = _rng.normal(size=(STEPS, N)) * np.linspace(2.0, 0.2, STEPS)[:, None]
PARAMS0 = _rng.normal(size=N)


def _tree(flat):
    """The flat vector as the tree the chains see: {"b": (4,), "w": (3, 4)}."""
    return {"b": flat[..., :4], "w": flat[..., 4:].reshape(flat.shape[:-1] + (3, 4))}


def _gradient(p, t):
    return CURVATURE * p - TARGET + NOISE[t]


def _clipped(g, max_norm):
    norm = np.sqrt(np.sum(g * g))
    return g if norm < max_norm else g / norm * max_norm


def _noise_stream(eta, gamma, seed):
    """What ``add_noise`` adds at each step: the one value here not from the equations
    (its random stream), read off the block run alone on zero updates."""
    tx = gtx.add_noise(eta, gamma, seed)
    with jax.enable_x64(True):  # float64 draws, as in the float64 run
        zeros = _tree(jnp.zeros(N, jnp.float64))
        state, draws = tx.init(zeros), []
        for _ in range(STEPS):
            noise, state = tx.update(zeros, state)
            draws.append(trajectory.flatten(noise, time_axis=False))
    return np.stack(draws)


def _descend(direction):
    """The reference trajectory: ``p <- direction(p, g, t)``, t counting from 1."""
    p, trajectory_ = PARAMS0.copy(), []
    for t in range(STEPS):
        p = direction(p, _gradient(p, t), t + 1)
        trajectory_.append(p)
    return np.stack(trajectory_)


def _preconditioned(block, l2=0.0, decoupled=0.0):
    """p <- p - lr (block(g + l2 p) + decoupled p): L2 before the block, decay after."""
    return lambda p, g, t: p - LR * (block.step(g + l2 * p) + decoupled * p)


def _then_momentum(block, momentum, nesterov, lr_first):
    """A preconditioner then heavy-ball momentum, the learning rate before the buffer
    (TF1/Keras: the buffer holds -lr d) or after it (PyTorch, Optax): the same map at a
    constant learning rate."""
    buffer = classic.HeavyBall(N, momentum, nesterov)

    def direction(p, g, t):
        d = block.step(g)
        return p + buffer.step(-LR * d) if lr_first else p - LR * buffer.step(d)

    return direction


def _clip_then(block):
    return lambda p, g, t: p - LR * block.step(_clipped(g, 1.0))


def _then_clip(block):
    return lambda p, g, t: p - LR * _clipped(block.step(g), 1.0)


def _l1_subgradient_then(block, l1):
    return lambda p, g, t: p - LR * block.step(g + l1 * np.sign(p))


def _then_proximal_l1(block, l1):
    """The proximal gradient step (ISTA) with the block's direction: soft-thresholding
    at lr * l1 after the step."""

    def direction(p, g, t):
        q = p - LR * block.step(g)
        return np.sign(q) * np.maximum(np.abs(q) - LR * l1, 0.0)

    return direction


def _lookahead(inner, sync_period, slow_step_size):
    """Zhang et al. (2019), Algorithm 1: the user holds the fast weights."""
    slow = PARAMS0.copy()

    def direction(p, g, t):
        nonlocal slow
        fast = inner(p, g, t)
        if t % sync_period == 0:
            slow = slow + slow_step_size * (fast - slow)
            fast = slow.copy()
        return fast

    return direction


def _noisy(order, noise):
    def direction(p, g, t):
        if order == "noise, clip":
            g = _clipped(g + noise[t - 1], 1.0)
        else:
            g = _clipped(g, 1.0) + noise[t - 1]
        return p - LR * g

    return direction


def _adam():
    return classic.Adam(N, B1, B2, EPS)


# name -> (the chain, the reference's step built fresh for one run)
ABLATIONS = {
    "adam + L2": (
        lambda: gtx.chain(
            gtx.add_decayed_weights(WD),
            gtx.scale_by_adam(B1, B2, EPS),
            gtx.scale_by_learning_rate(LR),
        ),
        lambda: _preconditioned(_adam(), l2=WD),
    ),
    "adamw": (
        lambda: gtx.chain(
            gtx.scale_by_adam(B1, B2, EPS),
            gtx.add_decayed_weights(WD),
            gtx.scale_by_learning_rate(LR),
        ),
        lambda: _preconditioned(_adam(), decoupled=WD),
    ),
    "amsgrad + decoupled decay": (
        lambda: gtx.chain(
            gtx.amsgrad_max(B1, B2, EPS),
            gtx.add_decayed_weights(WD),
            gtx.scale_by_learning_rate(LR),
        ),
        lambda: _preconditioned(classic.AMSGrad(N, B1, B2, EPS), decoupled=WD),
    ),
    "amsgrad + L2": (
        lambda: gtx.chain(
            gtx.add_decayed_weights(WD),
            gtx.amsgrad_max(B1, B2, EPS),
            gtx.scale_by_learning_rate(LR),
        ),
        lambda: _preconditioned(classic.AMSGrad(N, B1, B2, EPS), l2=WD),
    ),
    "nadam + decoupled decay": (
        lambda: gtx.chain(
            gtx.scale_by_adam(B1, B2, EPS, nesterov=True),
            gtx.add_decayed_weights(WD),
            gtx.scale_by_learning_rate(LR),
        ),
        lambda: _preconditioned(classic.Adam(N, B1, B2, EPS, nesterov=True), decoupled=WD),
    ),
    "adamax + decoupled decay": (
        lambda: gtx.chain(
            gtx.scale_by_adamax(B1, B2, EPS),
            gtx.add_decayed_weights(WD),
            gtx.scale_by_learning_rate(LR),
        ),
        lambda: _preconditioned(classic.AdaMax(N, B1, B2, EPS), decoupled=WD),
    ),
    # b2 = 0.95: rho_t passes 5 at step 6, and its series runs to the switch at 0.5
    "radam + decoupled decay": (
        lambda: gtx.chain(
            gtx.scale_by_radam(B1, B2, EPS),
            gtx.add_decayed_weights(WD),
            gtx.scale_by_learning_rate(LR),
        ),
        lambda: _preconditioned(classic.RAdam(N, B1, B2, EPS), decoupled=WD),
    ),
    "adam, eps inside the square root": (
        lambda: gtx.chain(
            gtx.scale_by_adam(B1, B2, 0.0, eps_root=1e-3), gtx.scale_by_learning_rate(LR)
        ),
        lambda: _preconditioned(classic.Adam(N, B1, B2, 0.0, eps_root=1e-3)),
    ),
    "centered rmsprop + nesterov, lr inside the buffer": (
        lambda: gtx.chain(
            gtx.scale_by_rms(0.9, 1e-3, centered=True),
            gtx.scale_by_learning_rate(LR),
            gtx.nesterov_lookahead(0.7),
        ),
        lambda: _then_momentum(classic.RMSProp(N, 0.9, 1e-3, centered=True), 0.7, True, True),
    ),
    "rmsprop + nesterov, lr after the buffer": (
        lambda: gtx.chain(
            gtx.scale_by_rms(0.9, 1e-3, eps_in_sqrt=False),
            gtx.nesterov_lookahead(0.7),
            gtx.scale_by_learning_rate(LR),
        ),
        lambda: _then_momentum(classic.RMSProp(N, 0.9, 1e-3, eps_in_sqrt=False), 0.7, True, False),
    ),
    "adagrad + momentum": (
        lambda: gtx.chain(gtx.scale_by_rss(), gtx.trace(0.9), gtx.scale_by_learning_rate(LR)),
        lambda: _then_momentum(classic.Adagrad(N), 0.9, False, False),
    ),
    "adadelta + nesterov momentum": (
        lambda: gtx.chain(
            gtx.scale_by_adadelta(), gtx.nesterov_lookahead(0.9), gtx.scale_by_learning_rate(LR)
        ),
        lambda: _then_momentum(classic.Adadelta(N), 0.9, True, False),
    ),
    "clip, then adam": (
        lambda: gtx.chain(
            gtx.clip_by_global_norm(1.0),
            gtx.scale_by_adam(B1, B2, EPS),
            gtx.scale_by_learning_rate(LR),
        ),
        lambda: _clip_then(_adam()),
    ),
    "adam, then clip": (
        lambda: gtx.chain(
            gtx.scale_by_adam(B1, B2, EPS),
            gtx.clip_by_global_norm(1.0),
            gtx.scale_by_learning_rate(LR),
        ),
        lambda: _then_clip(_adam()),
    ),
    "L1 subgradient + adam": (
        lambda: gtx.chain(
            gtx.add_l1(0.3), gtx.scale_by_adam(B1, B2, EPS), gtx.scale_by_learning_rate(LR)
        ),
        lambda: _l1_subgradient_then(_adam(), 0.3),
    ),
    "adam + proximal L1": (
        lambda: gtx.chain(
            gtx.scale_by_adam(B1, B2, EPS),
            gtx.scale_by_learning_rate(LR),
            gtx.proximal_l1(LR * 0.3),
        ),
        lambda: _then_proximal_l1(_adam(), 0.3),
    ),
    "lookahead(adamw)": (
        lambda: gtx.lookahead(
            gtx.chain(
                gtx.scale_by_adam(B1, B2, EPS),
                gtx.add_decayed_weights(WD),
                gtx.scale_by_learning_rate(LR),
            ),
            sync_period=5,
            slow_step_size=0.5,
        ),
        lambda: _lookahead(_preconditioned(_adam(), decoupled=WD), 5, 0.5),
    ),
    "noise, then clip": (
        lambda: gtx.chain(
            gtx.add_noise(0.3, 0.55, seed=3),
            gtx.clip_by_global_norm(1.0),
            gtx.scale_by_learning_rate(LR),
        ),
        lambda: _noisy("noise, clip", _noise_stream(0.3, 0.55, 3)),
    ),
    "clip, then noise": (
        lambda: gtx.chain(
            gtx.clip_by_global_norm(1.0),
            gtx.add_noise(0.3, 0.55, seed=3),
            gtx.scale_by_learning_rate(LR),
        ),
        lambda: _noisy("clip, noise", _noise_stream(0.3, 0.55, 3)),
    ),
}


def _run_all(transforms):
    """Every chain on its own params, the gradients taken at its params, one scan."""
    curvature, target, noise = (_tree(jnp.asarray(x)) for x in (CURVATURE, TARGET, NOISE))

    def step(carry, t):
        new_carry, outputs = {}, {}
        for name, tx in transforms.items():
            params, state = carry[name]
            gradients = jax.tree.map(
                lambda c, p, y, n: c * p - y + n[t], curvature, params, target, noise
            )
            updates, state = tx.update(gradients, state, params)
            params = gtx.apply_updates(params, updates)
            new_carry[name], outputs[name] = (params, state), params
        return new_carry, outputs

    @jax.jit
    def loop(params):
        carry = {name: (params, tx.init(params)) for name, tx in transforms.items()}
        return jax.lax.scan(step, carry, jnp.arange(STEPS))[1]

    return loop(_tree(jnp.asarray(PARAMS0)))


@pytest.fixture(scope="module")
def float64_trajectories():
    with jax.enable_x64(True):
        runs = _run_all({name: make_tx() for name, (make_tx, _) in ABLATIONS.items()})
        return {name: trajectory.flatten(params) for name, params in runs.items()}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_follows_the_published_equations_in_float64(name, float64_trajectories):
    _, make_reference = ABLATIONS[name]
    expected = _descend(make_reference())
    trajectory.assert_close(float64_trajectories[name], expected, rtol=1e-10)


def test_proximal_l1_reaches_exact_zeros_in_the_ablation(float64_trajectories):
    assert np.sum(float64_trajectories["adam + proximal L1"][-1] == 0) > 0


def test_scale_by_adam_then_nesterov_lookahead_is_not_nadam(float64_trajectories):
    """Chaining nesterov_lookahead after scale_by_adam puts a second (heavy-ball) momentum
    on Adam's direction; NAdam is scale_by_adam(nesterov=True). The docs say so."""
    with jax.enable_x64(True):
        stacked = gtx.chain(
            gtx.scale_by_adam(B1, B2, EPS),
            gtx.nesterov_lookahead(B1),
            gtx.scale_by_learning_rate(LR),
        )
        runs = _run_all({"stacked": stacked})
    nadam = _descend(_preconditioned(classic.Adam(N, B1, B2, EPS, nesterov=True)))
    assert np.max(np.abs(trajectory.flatten(runs["stacked"]) - nadam)) > 0.1


def _torch_trajectory(torch, make_optimizer):
    """PyTorch's optimizer in float64 on the same closed loop."""
    params = torch.tensor(PARAMS0.copy(), dtype=torch.float64, requires_grad=True)
    optimizer = make_optimizer([params])
    trajectory_ = []
    for t in range(STEPS):
        params.grad = torch.tensor(_gradient(params.detach().numpy(), t))
        optimizer.step()
        trajectory_.append(params.detach().numpy().copy())
    return np.stack(trajectory_)


def test_ablations_with_a_pytorch_counterpart_give_its_numbers():
    """Decoupled decay: PyTorch shrinks p by lr * wd first (AdamW,
    ``decoupled_weight_decay=True``), the same map as ``add_decayed_weights`` after the
    preconditioner; its ``weight_decay`` elsewhere is L2, the block before it."""
    torch = pytest.importorskip("torch")
    betas, lr = (B1, B2), gtx.scale_by_learning_rate(LR)
    pairs = {
        "adam + L2": (
            gtx.chain(gtx.add_decayed_weights(WD), gtx.scale_by_adam(B1, B2, EPS), lr),
            lambda p: torch.optim.Adam(p, LR, betas, EPS, WD),
        ),
        "adamw": (
            gtx.chain(gtx.scale_by_adam(B1, B2, EPS), gtx.add_decayed_weights(WD), lr),
            lambda p: torch.optim.AdamW(p, LR, betas, EPS, WD),
        ),
        "adamw amsgrad": (
            gtx.chain(
                gtx.amsgrad_max(B1, B2, EPS, correct_after_max=True),
                gtx.add_decayed_weights(WD),
                lr,
            ),
            lambda p: torch.optim.AdamW(p, LR, betas, EPS, WD, amsgrad=True),
        ),
        "radam": (
            gtx.chain(
                gtx.scale_by_radam(
                    B1, B2, EPS, strict_threshold=True, eps_before_bias_correction=True
                ),
                gtx.add_decayed_weights(WD),
                lr,
            ),
            lambda p: torch.optim.RAdam(p, LR, betas, EPS, WD, decoupled_weight_decay=True),
        ),
        "nadam": (
            gtx.chain(
                gtx.scale_by_nadam_schedule(B1, B2, EPS, momentum_decay=4e-3),
                gtx.add_decayed_weights(WD),
                lr,
            ),
            lambda p: torch.optim.NAdam(p, LR, betas, EPS, WD, 4e-3, decoupled_weight_decay=True),
        ),
        "centered rmsprop + momentum": (
            gtx.chain(
                gtx.scale_by_rms(0.9, 1e-3, eps_in_sqrt=False, centered=True), gtx.trace(0.7), lr
            ),
            lambda p: torch.optim.RMSprop(p, LR, 0.9, 1e-3, momentum=0.7, centered=True),
        ),
    }
    with jax.enable_x64(True):
        runs = _run_all({name: tx for name, (tx, _) in pairs.items()})
    # PyTorch keeps its step counts and NAdam's mu product in the default dtype
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        expected = {name: _torch_trajectory(torch, make) for name, (_, make) in pairs.items()}
    finally:
        torch.set_default_dtype(default_dtype)
    for name in pairs:
        trajectory.assert_close(trajectory.flatten(runs[name]), expected[name], rtol=1e-10)
