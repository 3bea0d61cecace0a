"""Differentiating through the optimizer: meta-gradients of a loss after a few unrolled
steps with respect to a hyperparameter (Baydin et al., 2018, "Online Learning Rate
Adaptation with Hypergradient Descent"; learned learning rates, ``vmap``ped sweeps).

Each test unrolls a few steps on a least-squares problem in float64 and checks
``jax.grad`` (and ``jax.jvp``) of the final loss against a central finite difference or
against Optax's gradient, where the math is the same, all of it in one ``jax.jit`` per
test that takes the hyperparameter's values as arguments (``measure``). The
hyperparameters are float32 numbers (0.875, 2**-10, ...), so that the float32 copies the
state keeps are exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
import gradtx.compat.keras as kc
import gradtx.compat.torch as tc

STEPS = 3


def problem(hidden_dead: bool = False):
    """(params, loss) of a least-squares fit on 8 points; with ``hidden_dead``, a ReLU
    layer of four units, one of them dead (its gradients are exactly 0 at every step)."""
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(8, 3))), jnp.asarray(rng.normal(size=(8, 2)))
    if hidden_dead:
        params = {
            "w1": jnp.asarray(rng.normal(size=(3, 4))),
            "b1": jnp.asarray([0.1, 0.0, -100.0, 0.2]),
            "w2": jnp.asarray(rng.normal(size=(4, 2)) * 0.5),
        }

        def loss(p):
            return jnp.mean((jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)

    else:
        params = {"w": jnp.asarray(rng.normal(size=(3, 2)) * 0.5), "b": jnp.zeros(2)}

        def loss(p):
            return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    return params, loss


def final_loss(make, hidden_dead: bool = False, *, tx=None):
    """h -> the loss after STEPS updates of the optimizer ``make(h)`` (or of ``tx``, its
    state's hyperparameters set by ``make(state, h)``)."""
    params, loss = problem(hidden_dead)

    def run(h):
        optimizer = make(h) if tx is None else tx
        state = optimizer.init(params) if tx is None else make(tx.init(params), h)

        p = params
        for _ in range(STEPS):  # unrolled: XLA compiles it 3x faster than a lax.scan
            updates, state = optimizer.update(jax.grad(loss)(p), state, p)
            p = gtx.apply_updates(p, updates)
        return loss(p)

    return run


def measure(fn, h):
    """``fn(h, lo, hi)`` in one ``jax.jit``, h and its neighbours lo, hi = h -+ d (d = 2**-20
    relative: float32 numbers too) passed as float64 arguments. Not closed over: XLA
    computes a function of constants while compiling, with its constant folder instead of
    the compiled program the tests are about (and the folder of jaxlib 0.5.3 to 0.8.1
    puts a transposed array's elements in the wrong order where it is passed to a nested
    ``jax.jit``, as gradtx's per-leaf functions are: gradients 2.5 times off)."""
    d = 2.0 ** (np.floor(np.log2(h)) - 20)
    return tuple(map(float, jax.jit(fn)(*map(jnp.float64, (h, h - d, h + d)))))


def central_difference(f, lo, hi):
    """(f(hi) - f(lo)) / (hi - lo): the derivative of ``f`` midway."""
    return (f(hi) - f(lo)) / (hi - lo)


@pytest.mark.parametrize(
    "name, make, h",
    [
        ("adam b2", lambda lib, h: lib.adam(0.0625, b1=0.875, b2=h, eps=2.0**-10), 0.9921875),
        ("sgd momentum", lambda lib, h: lib.sgd(0.0625, momentum=h), 0.75),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_traced_float64_hyperparameter_has_optax_s_meta_gradient(x64, name, make, h):
    """A hyperparameter closed over as a traced float64 value is computed with in
    float64: rounded to float32 first, its reverse-mode gradient was float32-accurate
    (Adam's b2: 1e-5 relative off Optax's and off the finite difference)."""
    gradtx_loss = final_loss(lambda h: make(gtx, h))
    optax_loss = final_loss(lambda h: make(optax, h))
    gradient, optax_gradient, difference = measure(
        lambda h, lo, hi: (
            jax.grad(gradtx_loss)(h),
            jax.grad(optax_loss)(h),
            central_difference(gradtx_loss, lo, hi),
        ),
        h,
    )
    assert gradient == pytest.approx(optax_gradient, rel=1e-10)
    assert gradient == pytest.approx(difference, rel=1e-7)


@pytest.mark.parametrize(
    "make",
    [
        lambda h: gtx.schedule_injection(gtx.scale_by_nadam_schedule)(b1=h),
        lambda h: gtx.schedule_injection(gtx.swats)(b1=h),
        lambda h: gtx.scale_by_nadam_schedule(b1=h),
        lambda h: gtx.swats(b1=h),
        lambda h: kc.nadam(beta_1=h),
    ],
    ids=[
        "nadam_schedule_b1",
        "swats_b1",
        "plain_nadam_schedule_b1",
        "plain_swats_b1",
        "keras_nadam",
    ],
)
def test_a_traced_float64_hyperparameter_leaves_a_float32_state_float32(x64, make):
    """With float32 parameters a traced float64 value is computed with in float32, as a
    value read from the state is: a transform multiplying its state by it uncast (Nadam's
    mu_product, SWATS' projection) would turn a float32 state leaf float64, which a
    ``lax.scan`` over the steps refuses."""
    params = {"w": jnp.zeros((3, 2), jnp.float32), "b": jnp.zeros(2, jnp.float32)}

    def run(h):
        tx = make(h)

        def step(state, _):
            return tx.update(jax.tree.map(jnp.ones_like, params), state, params)[1], None

        return tx.init(params), jax.lax.scan(step, tx.init(params), length=2)[0]

    initial, final = jax.eval_shape(run, jnp.float64(0.875))
    assert jax.tree.map(lambda x: x.dtype, final) == jax.tree.map(lambda x: x.dtype, initial)


@pytest.mark.parametrize(
    "make, h",
    [
        (lambda h: gtx.rmsprop(0.0625, decay=h, centered=True, momentum=0.75), 0.875),
        (lambda h: gtx.adadelta(rho=h, weight_decay=0.125), 0.875),
        (lambda h: gtx.adamax(0.0625, b2=h), 0.9921875),
    ],
    ids=["rmsprop_decay", "adadelta_rho", "adamax_b2"],
)
def test_reverse_and_forward_meta_gradients_match_the_finite_difference(x64, make, h):
    f = final_loss(make)
    gradient, tangent, difference = measure(
        lambda h, lo, hi: (
            jax.grad(f)(h),
            jax.jvp(f, (h,), (jnp.ones_like(h),))[1],
            central_difference(f, lo, hi),
        ),
        h,
    )
    assert gradient == pytest.approx(difference, rel=1e-7)
    assert tangent == pytest.approx(difference, rel=1e-7)


def test_a_hyperparameter_set_in_the_state_has_a_float32_accurate_meta_gradient(x64):
    """set_hyperparams keeps the float32 copy the state holds (the checkpoint format):
    its gradient is finite and right to float32 accuracy, not to float64's."""
    tx = gtx.adam(0.0625, b1=0.875, b2=0.9921875)
    f = final_loss(lambda state, h: gtx.set_hyperparams(state, b2=h), tx=tx)
    gradient, difference = measure(
        lambda h, lo, hi: (jax.grad(f)(h), central_difference(f, lo, hi)), 0.9921875
    )
    assert gradient == pytest.approx(difference, rel=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda h: tc.adagrad(lr=h),
        lambda h: gtx.adagrad(h, initial_accumulator_value=0.0, eps=0.0),
    ],
    ids=["torch_adagrad", "adagrad_without_eps"],
)
def test_adagrad_meta_gradient_is_finite_where_a_unit_never_had_a_gradient(x64, make):
    """Where every gradient so far was 0 the sum is 0 and no step is taken; the guarded
    branch's sqrt(0) made the meta-gradient NaN (0 cotangent times an inf derivative)."""
    f = final_loss(make, hidden_dead=True)
    gradient, difference = measure(
        lambda h, lo, hi: (jax.grad(f)(h), central_difference(f, lo, hi)), 0.0625
    )
    assert np.isfinite(gradient)
    assert gradient == pytest.approx(difference, rel=1e-6)


def test_a_vmapped_sweep_over_learning_rates_equals_separate_runs(x64):
    f = jax.value_and_grad(final_loss(lambda h: gtx.adamw(h, b2=0.9921875, weight_decay=0.125)))
    rates = jnp.asarray([2.0**-6, 2.0**-5, 2.0**-4, 2.0**-3])
    swept, separate = jax.jit(lambda rates: (jax.vmap(f)(rates), jax.lax.map(f, rates)))(rates)
    np.testing.assert_allclose(swept, separate, rtol=1e-12)
