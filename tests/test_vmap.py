"""``jax.vmap`` over optimizers: ensembles (params with a leading member axis) and
hyperparameter sweeps (an optimizer built from a traced value, or a batch of states
with one value per member).

A vmapped run is compared member by member with separate runs. The numbers agree within
float32 rounding, not bitwise: vmap changes the shapes XLA fuses (a batched ``a * b + c``
may be rounded once instead of twice), by a few ulps here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
import gradtx.compat.keras as keras_compat
import gradtx.compat.keras.callbacks as keras_callbacks
import gradtx.compat.torch as torch_compat

MEMBERS = 3
STEPS = 3


def _params(member):
    w, b = jax.random.split(jax.random.PRNGKey(member))
    return {"w": jax.random.normal(w, (2, 2)), "b": jax.random.normal(b, (2,))}


def _grads(member, step):
    w, b = jax.random.split(jax.random.PRNGKey(100 + 10 * member + step))
    return {"w": jax.random.normal(w, (2, 2)), "b": jax.random.normal(b, (2,))}


def _stack(*trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _member(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _run(tx, params, state, grads):
    """(params, state) after the steps of ``grads`` (leaves with a leading step axis)."""

    def step(carry, g):
        params, state = carry
        updates, state = tx.update(g, state, params)
        return (gtx.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, state), grads)[0]


def _assert_members_close(batched, separate):
    for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(separate), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


ENSEMBLES = {
    "adam": lambda: gtx.adam(0.1),
    "sgd_nesterov": lambda: gtx.sgd(0.1, momentum=0.9, nesterov=True),
    "clip_by_global_norm": lambda: gtx.chain(gtx.clip_by_global_norm(0.5), gtx.adam(0.1)),
    "apply_if_finite": lambda: gtx.apply_if_finite(gtx.adam(0.1), 1),
    "multi_steps": lambda: gtx.multi_steps(gtx.adam(0.1), 2),
    "lookahead": lambda: gtx.lookahead(gtx.adam(0.1), sync_period=2),
    "flatten": lambda: gtx.flatten(gtx.adam(0.1)),
    "quantized_state": lambda: gtx.quantized_state(gtx.adam(0.1)),
    "partition": lambda: gtx.partition(
        {"a": gtx.adam(0.1), "b": gtx.sgd(0.1)}, {r"\['w'\]": "a", r".*": "b"}
    ),
    "torch_adam": lambda: torch_compat.adam(0.1, weight_decay=0.01),
    "keras_adam_ema": lambda: keras_compat.adam(
        0.1, global_clipnorm=0.5, use_ema=True, ema_overwrite_frequency=2
    ),
}


@pytest.mark.parametrize("name", ENSEMBLES)
def test_a_vmapped_ensemble_matches_separate_runs_member_by_member(name):
    """Members start at different steps (member i has made i updates), and member 1
    gets a NaN gradient: no member's numbers may depend on another's (a global norm,
    a skipped step, an accumulation or sync phase are each member's own)."""
    tx = ENSEMBLES[name]()
    grads = [_stack(*[_grads(i, t) for t in range(STEPS)]) for i in range(MEMBERS)]
    grads[1]["b"] = grads[1]["b"].at[1, 0].set(jnp.nan)

    params = _stack(*[_params(i) for i in range(MEMBERS)])
    head_grads = _stack(*[_grads(MEMBERS, t) for t in range(MEMBERS - 1)])

    def head(args):  # member i makes i updates first
        params, made = args

        def step(t, carry):
            return _run(tx, *carry, jax.tree.map(lambda x: x[t][None], head_grads))

        return jax.lax.fori_loop(0, made, step, (params, tx.init(params)))

    @jax.jit
    def separate_and_vmapped(grads):
        starts = jax.lax.map(head, (params, jnp.arange(MEMBERS)))
        # lax.map runs the members one by one, unbatched: B separate runs
        separate = jax.lax.map(lambda args: _run(tx, *args), (*starts, grads))
        vmapped = jax.vmap(lambda *args: _run(tx, *args))(*starts, grads)
        return separate, vmapped

    separate, vmapped = separate_and_vmapped(_stack(*grads))
    _assert_members_close(vmapped, separate)
    for leaf in jax.tree.leaves(vmapped[0]):  # member 1's NaN reached no other member
        assert np.all(np.isfinite(leaf[::2]))


def test_swats_members_in_different_phases_each_take_their_own():
    """SWATS' phase is a lax.cond, a select under vmap: member 1 in SGD's phase while the
    others are in Adam's."""
    tx = gtx.swats(0.1)
    states = [tx.init(_params(i)) for i in range(MEMBERS)]
    states[1] = states[1]._replace(
        switched=jnp.asarray(True), switch_step=jnp.asarray(1), sgd_learning_rate=jnp.asarray(0.3)
    )
    grads = [_stack(*[_grads(i, t) for t in range(STEPS)]) for i in range(MEMBERS)]

    @jax.jit
    def separate_and_vmapped(states, grads):
        params = [_params(i) for i in range(MEMBERS)]
        separate = [_run(tx, *args) for args in zip(params, states, grads, strict=True)]
        vmapped = jax.vmap(lambda *args: _run(tx, *args))(
            _stack(*params), _stack(*states), _stack(*grads)
        )
        return _stack(*separate), vmapped

    separate, vmapped = separate_and_vmapped(states, grads)
    _assert_members_close(vmapped, separate)
    assert vmapped[1].switched.tolist() == [False, True, False]


@pytest.mark.parametrize("name", ["adam", "multi_steps", "flatten", "clip_by_global_norm"])
def test_an_eager_vmapped_update_matches_the_jitted_one(name):
    """Un-jitted, the per-leaf kernels see batch tracers (batched state and params) next
    to concrete arrays (gradients shared by every member: in_axes=None)."""
    tx = ENSEMBLES[name]()
    params = _stack(*[_params(i) for i in range(MEMBERS)])
    step = jax.vmap(
        lambda g, s, p: (lambda u, s: (gtx.apply_updates(p, u), s))(*tx.update(g, s, p)),
        in_axes=(None, 0, 0),
    )
    eager = jitted = (params, jax.vmap(tx.init)(params))
    jitted_step = jax.jit(step)
    for t in range(STEPS):
        eager = step(_grads(0, t), eager[1], eager[0])
        jitted = jitted_step(_grads(0, t), jitted[1], jitted[0])
    _assert_members_close(eager, jitted)


SWEEPS = {
    "adam_learning_rate": (lambda v: gtx.adam(v), [0.01, 0.05, 0.2]),
    "adamw_weight_decay": (lambda v: gtx.adamw(0.1, weight_decay=v), [0.0, 0.1, 0.5]),
    "sgd_momentum": (lambda v: gtx.sgd(0.1, momentum=v), [0.1, 0.5, 0.9]),
    "lookahead_slow_step": (
        lambda v: gtx.lookahead(gtx.sgd(0.1), sync_period=2, slow_step_size=v),
        [0.3, 0.5, 0.8],
    ),
    "torch_sgd_learning_rate": (lambda v: torch_compat.sgd(v, momentum=0.9), [0.01, 0.05, 0.2]),
    "keras_adamw_learning_rate": (lambda v: keras_compat.adamw(v), [0.01, 0.05, 0.2]),
}


@pytest.mark.parametrize("name", SWEEPS)
def test_an_optimizer_built_from_a_traced_hyperparameter_matches_runs_with_each_value(name):
    build, values = SWEEPS[name]
    params = _params(0)
    grads = _stack(*[_grads(0, t) for t in range(STEPS)])

    def run(value):
        tx = build(value)
        return _run(tx, params, tx.init(params), grads)[0]

    @jax.jit
    def swept():
        return jax.vmap(run)(jnp.asarray(values))

    separate = _stack(*[jax.jit(lambda v=v: run(v))() for v in values])
    _assert_members_close(swept(), separate)


def test_nested_vmap_over_learning_rates_and_members_matches_separate_runs():
    learning_rates = jnp.array([0.01, 0.1])
    params = _stack(*[_params(i) for i in range(MEMBERS)])
    grads = _stack(*[_stack(*[_grads(i, t) for t in range(STEPS)]) for i in range(MEMBERS)])

    def run(learning_rate, params, grads):
        tx = gtx.adamw(learning_rate, weight_decay=0.1)
        return _run(tx, params, tx.init(params), grads)[0]

    @jax.jit
    def both():
        members = jax.vmap(run, in_axes=(None, 0, 0))
        swept = jax.vmap(members, in_axes=(0, None, None))(learning_rates, params, grads)
        separate = [
            [run(lr, _member(params, i), _member(grads, i)) for i in range(MEMBERS)]
            for lr in (0.01, 0.1)
        ]
        return swept, _stack(*[_stack(*row) for row in separate])

    swept, separate = both()
    _assert_members_close(swept, separate)


def test_a_learning_rate_per_member_set_in_a_batch_of_states_matches_runs_with_each():
    learning_rates = [0.01, 0.05, 0.2]
    params = _stack(*[_params(i) for i in range(MEMBERS)])
    grads = _stack(*[_stack(*[_grads(i, t) for t in range(STEPS)]) for i in range(MEMBERS)])
    tx = gtx.adam(1.0)

    @jax.jit
    def both():
        states = jax.vmap(tx.init)(params)
        states = jax.vmap(lambda s, lr: gtx.set_hyperparams(s, learning_rate=lr))(
            states, jnp.asarray(learning_rates)
        )
        vmapped = jax.vmap(lambda *args: _run(tx, *args))(params, states, grads)[0]
        separate = []
        for i, lr in enumerate(learning_rates):
            alone = gtx.adam(lr)
            p = _member(params, i)
            separate.append(_run(alone, p, alone.init(p), _member(grads, i))[0])
        return vmapped, _stack(*separate)

    vmapped, separate = both()
    _assert_members_close(vmapped, separate)


def test_set_hyperparams_on_a_batch_of_states_refuses_one_value_for_the_batch():
    """It replaced the batch's [3] learning rates by one scalar: the state's shapes
    changed, and the next vmapped step failed inside JAX ("rank should be at least 1")."""
    tx = gtx.chain(gtx.adam(0.1), gtx.sgd(0.1))
    states = jax.vmap(lambda _: tx.init(jnp.zeros(2)))(jnp.arange(MEMBERS))
    with pytest.raises(ValueError, match=r"learning_rate is stored with shape \[3\].*jax\.vmap"):
        gtx.set_hyperparams(states, learning_rate=0.05)
    with pytest.raises(ValueError, match=r"shape \[3\] at \[1\]"):
        gtx.set_hyperparams(states, path="[1]", learning_rate=0.05)


@pytest.mark.parametrize(
    "make",
    [
        lambda: gtx.multi_steps(gtx.adam(0.1), 2),
        lambda: gtx.swats(0.1),
        lambda: gtx.apply_if_finite(gtx.sgd(0.1), 2),
        lambda: keras_compat.adam(0.1, use_ema=True),
        lambda: torch_compat.adam(0.1),
        lambda: gtx.adam(0.1),
    ],
    ids=["multi_steps", "swats", "apply_if_finite", "keras_adam", "torch_adam", "adam"],
)
def test_an_update_outside_vmap_of_a_batch_of_states_says_so(make):
    """A batch of states (or pmap replicas) handed to an un-vmapped update raised a
    broadcasting error from deep in the update ("Incompatible shapes for broadcasting:
    shapes=[(8, 3), (8,)]" in multi_steps and swats) or a shape error naming nothing (an
    injected optimizer: "b1 must be a scalar (a number or a 0-d array), got Array([0.9,
    ...])", the batch unnamed); a counter with a leading axis now says what it is."""
    tx = make()
    params = {"w": jnp.ones((8, 3))}
    states = jax.vmap(tx.init)(params)
    with pytest.raises(ValueError, match=r"counter of the state has shape \(8,\).*jax\.vmap"):
        tx.update(params, states, params)


def test_reduce_on_plateau_takes_a_metric_per_member():
    tx = gtx.chain(gtx.sgd(1.0), gtx.reduce_on_plateau(factor=0.5, patience=0))
    metrics = jnp.array([[1.0, 0.5, 0.6], [1.0, 2.0, 3.0], [1.0, 0.9, 0.8]])  # [member, step]
    params = jnp.zeros((MEMBERS, 1))

    @jax.jit
    def scales():
        def member(params, metrics):
            def step(state, metric):
                _, state = tx.update(jnp.ones(1), state, params, value=metric)
                return state, None

            return jax.lax.scan(step, tx.init(params), metrics)[0][1].scale

        return jax.vmap(member)(params, metrics)

    # member 0: one bad metric (0.6), member 1: two, member 2: none
    np.testing.assert_array_equal(scales(), [0.5, 0.25, 1.0])


def test_add_noise_vmapped_over_seeds_gives_each_member_the_key_of_its_seed():
    """A traced seed was refused ("seed must be a non-negative integer, got
    VmapTracer"), where optax.add_noise takes it."""
    params = jnp.zeros(3)
    keys = jax.vmap(lambda seed: gtx.add_noise(0.1, seed=seed).init(params).rng_key)(
        jnp.arange(MEMBERS)
    )
    for seed, key in enumerate(keys):
        np.testing.assert_array_equal(key, jax.random.PRNGKey(seed))
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        jax.vmap(lambda seed: gtx.add_noise(seed=seed))(jnp.ones(MEMBERS))


def test_keras_reduce_lr_on_plateau_refuses_a_batch_of_states():
    """It failed inside float() ("Only scalar arrays can be converted"), also for a
    batch of one."""
    opt_state = jax.vmap(lambda _: gtx.sgd(0.1).init(jnp.zeros(1)))(jnp.arange(MEMBERS))
    plateau = keras_callbacks.reduce_lr_on_plateau()
    with pytest.raises(ValueError, match=r"learning_rate with shape \[3\], a batch of states"):
        plateau.on_epoch_end(1.0, opt_state, plateau.init())
