"""lookahead (Zhang et al. 2019) and the parameter averages ema_params / average_params."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
from gradtx.compat import keras as kc
from tests.compilations import bytes_and_copies, compiled_step
from tests.reference import research_transforms as ref

CURVATURE = np.array([1.0, 3.0, 0.5])


def _grad(w):
    return CURVATURE * w


def _run(tx, w0, steps):
    """Trains on the quadratic 0.5 * sum(h w^2); returns the params and states of each step."""
    params = jnp.asarray(w0)
    state = tx.init(params)
    step = jax.jit(tx.update)
    all_params, states = [], []
    for _ in range(steps):
        updates, state = step(jnp.asarray(_grad(np.asarray(params))), state, params)
        params = gtx.apply_updates(params, updates)
        all_params.append(np.asarray(params))
        states.append(state)
    return np.array(all_params), states


@pytest.mark.parametrize("alpha", [0.5, 0.25])  # 0.5 alone: slow and fast swap unseen
def test_lookahead_equals_the_hand_computed_reference(alpha, x64):
    w0 = np.array([1.0, -2.0, 0.5])
    tx = gtx.lookahead(gtx.scale_by_learning_rate(0.1), sync_period=3, slow_step_size=alpha)
    fast, states = _run(tx, w0, 10)
    ref_fast, ref_slow = ref.lookahead_sgd(_grad, w0, 10, 0.1, sync_period=3, alpha=alpha)
    np.testing.assert_allclose(fast, ref_fast, rtol=1e-12)
    slow = np.array([np.asarray(s.slow_params) for s in states])
    np.testing.assert_allclose(slow, ref_slow, rtol=1e-12)


def _ulp(x, dtype):
    """One unit in the last place of ``dtype`` at |x| (normal numbers)."""
    finfo = jnp.finfo(dtype)
    exponent = np.floor(np.log2(np.maximum(np.abs(x), float(finfo.tiny))))
    return 2.0 ** (exponent - finfo.nmant)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lookahead_params_are_the_slow_weights_up_to_two_ulps_right_after_each_sync(dtype):
    # The sync update is theta - params, added back to the params in their dtype: two
    # roundings, so not always bit for bit, but within two ulps of the larger magnitude.
    scales = np.logspace(-3, 2, 2000)
    params = (jax.random.normal(jax.random.PRNGKey(0), (2000,)) * scales).astype(dtype)
    tx = gtx.lookahead(gtx.sgd(0.37), sync_period=2, slow_step_size=0.3)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(1, 7):
        grads = jnp.sin(params.astype(jnp.float32) * t).astype(dtype)
        old = np.asarray(params, np.float64)
        updates, state = step(grads, state, params)
        params = gtx.apply_updates(params, updates)
        fast = np.asarray(params, np.float64)
        slow = np.asarray(state.slow_params, np.float64)
        if t % 2 == 1:  # a fast step: the params leave the slow weights
            assert np.max(np.abs(fast - slow)) > 0.1  # steps of 0.37 * sin(...)
        else:
            bound = 2 * _ulp(np.maximum(np.abs(old), np.abs(slow)), dtype)
            assert np.all(np.abs(fast - slow) <= bound)


def test_lookahead_counts_modulo_the_sync_period_so_it_syncs_without_end():
    """A saturating int32 total would stop the syncs after 2**31 - 1 steps (a prime, so
    never again a multiple of sync_period); the state counts steps since the last sync."""
    tx = gtx.lookahead(gtx.scale(-1.0), sync_period=3, slow_step_size=0.5)
    params = jnp.zeros(1)
    state = tx.init(params)
    step = jax.jit(tx.update)
    seen = []
    for _ in range(9):
        updates, state = step(jnp.ones(1), state, params)
        params = gtx.apply_updates(params, updates)
        seen.append(int(state.steps_since_sync))
        assert state.steps_since_sync.dtype == jnp.int32
    assert seen == [1, 2, 0] * 3
    # from any phase, the slow weights move after the steps left to the next sync
    for phase in range(3):
        state = state._replace(steps_since_sync=jnp.asarray(phase, jnp.int32))
        slow, steps = state.slow_params, 0
        while bool(jnp.all(state.slow_params == slow)) and steps < 10:
            updates, state = step(jnp.ones(1), state, params)
            params = gtx.apply_updates(params, updates)
            steps += 1
        assert steps == 3 - phase


def test_the_defaults_are_the_documented_sync_period_slow_step_size_and_decay():
    w0 = np.array([1.0, -2.0, 0.5])
    inner = gtx.scale_by_learning_rate(0.1)
    for default, documented in [
        (gtx.lookahead(inner), gtx.lookahead(inner, sync_period=6, slow_step_size=0.5)),
        (
            gtx.chain(inner, gtx.ema_params()),
            gtx.chain(inner, gtx.ema_params(0.999, debias=True)),
        ),
    ]:
        params, states = _run(default, w0, 7)  # a sync at the sixth step
        expected_params, expected_states = _run(documented, w0, 7)
        np.testing.assert_array_equal(params, expected_params)
        for leaf, expected in zip(
            jax.tree.leaves(states), jax.tree.leaves(expected_states), strict=True
        ):
            np.testing.assert_array_equal(leaf, expected)


def test_lookahead_keeps_the_inner_state_across_syncs():
    tx = gtx.lookahead(gtx.adam(0.1), sync_period=2)
    _, states = _run(tx, np.ones(3, np.float32), 4)
    assert int(gtx.tree_get(states[-1], "count", path="inner_state[0].count")) == 4


def _lookahead_momentum_reference(w0, steps, lr, mu, k, alpha, reset):
    """Zhang et al.'s Algorithm 1 around heavy-ball SGD (b = mu b + g, w -= lr b) in
    float64; ``reset``: the buffer starts again from 0 after each sync."""
    fast, slow, buffer, out = w0.astype(np.float64), w0.astype(np.float64), 0.0, []
    for t in range(1, steps + 1):
        buffer = mu * buffer + _grad(fast)
        fast = fast - lr * buffer
        if t % k == 0:
            slow = slow + alpha * (fast - slow)
            fast = slow.copy()
            if reset:
                buffer = 0.0
        out.append(fast)
    return np.array(out)


@pytest.mark.parametrize("reset", [False, True])
def test_lookahead_resets_the_inner_state_at_each_sync_when_asked(reset, x64):
    """reset_state (the paper's "reset", Optax's option): the momentum buffer restarts
    at every sync; kept, it carries over (the default)."""
    w0 = np.array([1.0, -2.0, 0.5])
    inner = gtx.chain(gtx.trace(0.9), gtx.scale_by_learning_rate(0.1))  # Python floats
    tx = gtx.lookahead(inner, 3, 0.5, reset_state=reset)
    params, states = _run(tx, w0, 10)
    expected = _lookahead_momentum_reference(w0, 10, 0.1, 0.9, 3, 0.5, reset)
    np.testing.assert_allclose(params, expected, rtol=1e-12)
    other = _lookahead_momentum_reference(w0, 10, 0.1, 0.9, 3, 0.5, not reset)
    assert np.max(np.abs(expected[3:] - other[3:])) > 1e-2  # the option matters here
    trace = gtx.tree_get(states[5], "trace")  # right after the second sync
    assert np.all(np.asarray(trace) == 0) == reset


def test_lookahead_with_reset_state_matches_optaxs_jitted_and_eagerly():
    """Adam inside, synced every 2 steps, against optax.lookahead(reset_state=True)
    (float32: the two libraries' Adam differ in rounding only)."""
    rng = np.random.default_rng(3)
    params0 = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.ones(2)}
    noise = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params0)
             for _ in range(7)]  # fmt: skip
    grad = lambda p, n: jax.tree.map(lambda x, e: 0.5 * x + e, p, n)  # noqa: E731
    optax_tx = optax.lookahead(optax.adam(0.1), 2, 0.5, reset_state=True)
    theirs = optax.LookaheadParams.init_synced(params0)
    optax_state, expected = optax_tx.init(theirs), []
    for n in noise:
        updates, optax_state = optax_tx.update(grad(theirs.fast, n), optax_state, theirs)
        theirs = optax.apply_updates(theirs, updates)
        expected.append(theirs.fast)
    tx = gtx.lookahead(gtx.adam(0.1), 2, 0.5, reset_state=True)
    for update in (jax.jit(tx.update), tx.update):
        params, state = params0, tx.init(params0)
        for n, want in zip(noise, expected, strict=True):
            updates, state = update(grad(params, n), state, params)
            params = gtx.apply_updates(params, updates)
            for key in params:
                np.testing.assert_allclose(params[key], want[key], rtol=2e-5, atol=2e-6)


def test_a_jitted_donated_lookahead_step_copies_nothing_and_moves_less_than_optaxs():
    """Under jit the sync is a lax.cond: a fast step neither reads nor writes the slow
    weights. It was a select, which XLA fused into the parameter update while the select
    overwrote the slow weights in place, so it copied buffers first (Adam: 84 bytes/param
    with copies, as optax.lookahead; 76 and none now)."""
    params = {"w": jnp.ones((256, 256)), "b": jnp.ones(256)}
    grads = jax.tree.map(lambda p: 0.5 * p, params)
    n = sum(x.size for x in jax.tree.leaves(params))
    ours = compiled_step(gtx.lookahead(gtx.adam(0.1), 2, 0.5), gtx.apply_updates, params, grads)
    theirs = compiled_step(
        optax.lookahead(optax.adam(0.1), 2, 0.5),
        optax.apply_updates,
        optax.LookaheadParams.init_synced(params),
        grads,
    )
    (our_bytes, our_copies), (their_bytes, _) = bytes_and_copies(ours), bytes_and_copies(theirs)
    assert our_copies == 0
    assert our_bytes / n <= their_bytes / n - 7.5, (our_bytes / n, their_bytes / n)


def test_lookahead_needs_params_and_validates_its_arguments():
    tx = gtx.lookahead(gtx.scale(-0.1))
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(jnp.ones(1), tx.init(jnp.zeros(1)))
    with pytest.raises(ValueError, match="sync_period"):
        gtx.lookahead(gtx.scale(-0.1), sync_period=0)
    with pytest.raises(ValueError, match="slow_step_size"):
        gtx.lookahead(gtx.scale(-0.1), slow_step_size=1.5)
    with pytest.raises(TypeError, match="reset_state must be True or False, got 'yes'"):
        gtx.lookahead(gtx.scale(-0.1), reset_state="yes")


@pytest.mark.parametrize("debias", [True, False])
def test_ema_params_is_the_moving_average_of_the_iterates(x64, debias):
    w0 = np.array([1.0, -2.0, 0.5])
    tx = gtx.chain(gtx.scale_by_learning_rate(0.2), gtx.ema_params(0.9, debias=debias))
    iterates, states = _run(tx, w0, 8)
    expected = ref.ema_of_iterates(iterates, w0, 0.9, debias)
    got = np.array([np.asarray(gtx.tree_get(s, "ema")) for s in states])
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("decay", [0.999, 0.9999, 0.99999])
def test_debiased_ema_params_starts_at_the_first_iterate_in_float32(decay):
    # (1 - decay) in double over 1 - float32(decay) weighted the first iterate by
    # 1.0000129 (0.999) to 0.99864 (0.99999): the initial params leaked into the average
    tx = gtx.ema_params(decay)
    params = jnp.zeros(3, jnp.float32)
    _, state = tx.update(jnp.array([1.0, -2.0, 0.25]), tx.init(params), params)
    np.testing.assert_array_equal(state.ema, [1.0, -2.0, 0.25])


def test_ema_params_passes_the_updates_through():
    tx = gtx.chain(gtx.scale(-0.1), gtx.ema_params(0.9))
    params = jnp.ones(2)
    updates, _ = tx.update(jnp.ones(2), tx.init(params), params)
    np.testing.assert_allclose(updates, [-0.1, -0.1])


def test_average_params_is_the_mean_of_the_iterates_after_start_step(x64):
    w0 = np.array([1.0, -2.0, 0.5])
    tx = gtx.chain(gtx.scale_by_learning_rate(0.2), gtx.average_params(start_step=3))
    iterates, states = _run(tx, w0, 8)
    got = np.array([np.asarray(s[1].average) for s in states])
    np.testing.assert_allclose(got[:3], iterates[:3], rtol=1e-12)  # follows the params
    for t in range(3, 8):
        np.testing.assert_allclose(got[t], iterates[3 : t + 1].mean(axis=0), rtol=1e-12)


def test_averages_need_params():
    for tx in (gtx.ema_params(0.9), gtx.average_params()):
        with pytest.raises(ValueError, match="needs the parameters"):
            tx.update(jnp.ones(1), tx.init(jnp.zeros(1)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_parameter_averages_of_half_precision_params_are_kept_in_float32(dtype):
    """Params climbing by exactly representable steps of 1/64 for 250 steps: a bfloat16
    EMA (decay 0.999) froze at 1.60 and a bfloat16 running mean at 1.02 where the
    averages of the iterates are 3.89 and 3.52; kept in float32 they are exact within
    float32 rounding (and an explicit dtype= is still honoured)."""
    steps, step_size = 250, 1 / 64
    iterates = step_size * np.arange(1, steps + 1, dtype=np.float64)
    for tx, expected in [
        (
            gtx.ema_params(0.999),
            ref.ema_of_iterates(iterates[:, None], np.zeros(1), 0.999, True)[-1],
        ),
        (gtx.average_params(), np.mean(iterates)),
    ]:
        params = jnp.zeros(1, dtype)
        state = tx.init(params)
        leaf = jax.tree.leaves(state)[-1]
        assert leaf.dtype == jnp.float32
        update = jnp.full(1, step_size, dtype)

        @jax.jit
        def step(p, s, tx=tx, update=update):
            return gtx.apply_updates(p, update), tx.update(update, s, p)[1]

        for _ in range(steps):
            params, state = step(params, state)
        np.testing.assert_allclose(np.asarray(jax.tree.leaves(state)[-1]), expected, rtol=1e-5)
    assert gtx.ema_params(dtype=jnp.bfloat16).init(jnp.zeros(1)).ema.dtype == jnp.bfloat16


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    "make",
    [
        lambda: gtx.ema_params(0.9, dtype=jnp.bfloat16),
        lambda: gtx.average_params(dtype=jnp.bfloat16),
    ],
    ids=["ema_params", "average_params"],
)
def test_an_average_in_a_chosen_narrower_dtype_stays_in_it_after_updates(make, jit):
    tx = make()
    params = jnp.array([1.0, 2.0])
    state = tx.init(params)
    _, state = (jax.jit(tx.update) if jit else tx.update)(jnp.ones(2), state, params)
    average = jax.tree.leaves(state)[-1]
    assert average.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(average, np.float32), [2.0, 3.0])  # the iterate


@pytest.mark.parametrize(
    "make",
    [
        lambda: gtx.lookahead(gtx.adam(0.1)),
        lambda: gtx.chain(gtx.adam(0.1), gtx.ema_params(0.9)),
        lambda: gtx.chain(gtx.sgd(0.1), gtx.average_params()),
        lambda: kc.sgd(0.1, use_ema=True),
    ],
)
def test_a_state_with_copies_of_the_params_can_be_donated_with_them(make):
    # An eager init kept the params' own buffers (astype to the same dtype is the
    # identity): jit(step, donate_argnums=(0, 1)) then failed with "donate the same
    # buffer twice" (a segfault with several processes).
    tx = make()
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    state = tx.init(params)
    pointers = {x.unsafe_buffer_pointer() for x in jax.tree.leaves(params)}
    assert not pointers & {x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)}

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state

    grads = jax.tree.map(jnp.ones_like, params)
    params, state = step(params, state, grads)
    params, state = step(params, state, grads)
    assert float(params["w"][0, 0]) < 1.0


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_parameter_averages_average_the_params_apply_updates_gives(dtype):
    """p_t is the params after the step, in their own dtype: float16 and bfloat16
    iterates were averaged before their rounding (the float32 sum p + u), up to half an
    ulp of the params off the iterates the model held (99% of the averages off here);
    and in float16 that second addition cost a step a parameter-sized temporary. In
    bfloat16 XLA may keep an update unrounded inside a loop (its excess precision): a
    few averages stay off by that rounding."""
    rng = np.random.default_rng(3)
    params = jnp.asarray(rng.normal(size=(64, 64)), dtype)
    gradients = [jnp.asarray(rng.normal(size=(64, 64)), dtype) for _ in range(6)]
    tx = gtx.chain(gtx.sgd(0.01), gtx.ema_params(0.5, debias=False), gtx.average_params())

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state

    ema = np.asarray(params, np.float64)
    state, iterates = tx.init(params), []
    for grads in gradients:
        params, state = jax.jit(step)(params, state, grads)
        iterates.append(np.asarray(params, np.float64))
        ema = 0.5 * ema + 0.5 * iterates[-1]
    for got, expected in [
        (gtx.tree_get(state, "ema"), ema),
        (gtx.tree_get(state, "average"), np.mean(iterates, axis=0)),
    ]:
        off = ~np.isclose(got, expected, rtol=1e-6, atol=1e-7)
        assert off.mean() <= (0.002 if dtype == jnp.bfloat16 else 0), off.mean()
        np.testing.assert_allclose(got, expected, rtol=4e-3)
    if dtype == jnp.float16:
        compiled = compiled_step(tx, gtx.apply_updates, params, gradients[0])
        assert compiled.memory_analysis().temp_size_in_bytes < params.nbytes / 2


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_lookahead_syncs_the_fast_weights_the_params_would_hold(dtype):
    """The last fast step of a sync is theta = p + u as apply_updates gives it: float16
    and bfloat16 fast weights were synced before their rounding (the float32 sum p + u),
    21% of the slow weights an ulp off the paper's (and Optax's f + u) here. The
    reference rounds theta to the params' dtype, then takes the slow step in float32."""
    rng = np.random.default_rng(5)
    params = jnp.asarray(rng.normal(size=(64, 64)), dtype)
    steps = [jnp.asarray(0.05 * rng.normal(size=(64, 64)), dtype) for _ in range(4)]
    tx = gtx.lookahead(gtx.identity(), sync_period=2, slow_step_size=0.5)

    @jax.jit
    def step(params, state, updates):
        updates, state = tx.update(updates, state, params)
        return gtx.apply_updates(params, updates), state

    state = tx.init(params)
    for t, u in enumerate(steps):
        slow = np.asarray(state.slow_params, np.float32)
        fast = (params.astype(np.float32) + u.astype(np.float32)).astype(dtype)
        params, state = step(params, state, u)
        if t % 2 == 1:
            expected = slow + np.float32(0.5) * (np.asarray(fast, np.float32) - slow)
            np.testing.assert_array_equal(
                np.asarray(state.slow_params, np.float32),
                np.asarray(jnp.asarray(expected).astype(dtype), np.float32),
            )
