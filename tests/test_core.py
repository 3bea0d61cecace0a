"""The protocol: chain, named_chain, identity and apply_updates."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx


class CountState(NamedTuple):
    count: jax.Array


def counting_scale(factor: float) -> tuple[gtx.GradientTransformation, list[dict]]:
    """Multiplies by ``factor`` and counts its calls; records the extra args it saw."""
    seen: list[dict] = []

    def init(params):
        del params
        return CountState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra):
        del params
        seen.append(dict(extra))
        return jax.tree.map(lambda u: factor * u, updates), CountState(state.count + 1)

    tx = gtx.GradientTransformation(init, update)
    return tx, seen


def test_gradient_transformation_is_a_named_tuple_of_init_and_update():
    tx = gtx.identity()
    assert tx._fields == ("init", "update")
    init, update = tx
    assert init is tx.init and update is tx.update


def test_identity_returns_updates_unchanged_and_keeps_empty_state():
    tx = gtx.identity()
    params = {"w": jnp.zeros(3), "b": [jnp.zeros(())]}
    state = tx.init(params)
    assert state == gtx.EmptyState()
    grads = {"w": jnp.array([1.0, -2.0, 3.0]), "b": [jnp.array(4.0)]}
    updates, new_state = tx.update(grads, state, params, value=1.0)
    assert updates is grads
    assert new_state == state


def test_chain_applies_transforms_in_order_and_keeps_a_tuple_of_states():
    first, _ = counting_scale(2.0)
    tx = gtx.chain(first, gtx.clip(3.0), gtx.scale(-0.5))
    state = tx.init(jnp.zeros(3))
    assert isinstance(state, tuple) and len(state) == 3
    updates, state = tx.update(jnp.array([1.0, 2.0, -4.0]), state)
    # (2*g) clipped to [-3, 3], then * -0.5: the order matters (clip then scale).
    np.testing.assert_allclose(updates, [-1.0, -1.5, 1.5])
    assert int(state[0].count) == 1
    updates, state = tx.update(jnp.array([1.0, 2.0, -4.0]), state)
    assert int(state[0].count) == 2


def test_chain_passes_extra_keyword_arguments_to_every_transform():
    a, seen_a = counting_scale(1.0)
    b, seen_b = counting_scale(1.0)
    tx = gtx.chain(a, gtx.scale(1.0), b)
    tx.update(jnp.ones(2), tx.init(jnp.zeros(2)), value=jnp.array(3.0))
    assert list(seen_a[0]) == ["value"] and list(seen_b[0]) == ["value"]


def test_chain_drops_extra_arguments_for_transforms_that_take_none():
    def update(updates, state, params=None):  # an Optax-style update without **extra
        return jax.tree.map(lambda u: 3 * u, updates), state

    plain = gtx.GradientTransformation(lambda p: gtx.EmptyState(), update)
    tx = gtx.chain(plain, gtx.identity())
    updates, _ = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)), value=1.0)
    np.testing.assert_allclose(updates, [3.0, 3.0])


def test_empty_chain_is_the_identity():
    tx = gtx.chain()
    state = tx.init(jnp.zeros(2))
    assert state == ()
    updates, _ = tx.update(jnp.array([1.0, 2.0]), state)
    np.testing.assert_allclose(updates, [1.0, 2.0])


def test_chain_rejects_a_state_of_the_wrong_length():
    tx = gtx.chain(gtx.identity(), gtx.identity())
    with pytest.raises(ValueError, match="chain of 2 transforms"):
        tx.update(jnp.ones(2), (gtx.EmptyState(),))


def test_chain_rejects_something_that_is_not_a_transform():
    with pytest.raises(TypeError, match="init and update"):
        gtx.chain(gtx.identity(), 0.1)


def test_named_chain_keys_the_state_by_name_and_matches_the_plain_chain():
    named = gtx.named_chain(("adam", gtx.scale_by_adam()), ("lr", gtx.scale(-0.1)))
    plain = gtx.chain(gtx.scale_by_adam(), gtx.scale(-0.1))
    params = {"w": jnp.zeros(3)}
    named_state, plain_state = named.init(params), plain.init(params)
    assert list(named_state) == ["adam", "lr"]
    grads = {"w": jnp.array([0.5, -1.0, 2.0])}
    # both jitted: un-jitted, the first update runs op by op and the second in a compiled
    # kernel, an ulp apart on jax 0.6.2 (tests/test_performance_equivalence.py)
    named_update, plain_update = jax.jit(named.update), jax.jit(plain.update)
    for _ in range(3):
        named_updates, named_state = named_update(grads, named_state, params)
        plain_updates, plain_state = plain_update(grads, plain_state, params)
        np.testing.assert_array_equal(named_updates["w"], plain_updates["w"])
    np.testing.assert_array_equal(named_state["adam"].mu["w"], plain_state[0].mu["w"])
    assert int(named_state["adam"].count) == 3


def test_named_chain_state_is_readable_by_name_through_jit():
    tx = gtx.named_chain(("adam", gtx.scale_by_adam()), ("lr", gtx.scale(-0.1)))
    state = tx.init(jnp.zeros(2))
    _, state = jax.jit(tx.update)(jnp.ones(2), state)
    assert int(state["adam"].count) == 1


def test_named_chain_rejects_duplicate_and_non_string_names():
    with pytest.raises(ValueError, match=r"unique.*\['a'\]"):
        gtx.named_chain(("a", gtx.identity()), ("a", gtx.identity()))
    with pytest.raises(TypeError, match="name 3"):
        gtx.named_chain((3, gtx.identity()))


def test_named_chain_names_a_missing_entry_of_the_state():
    tx = gtx.named_chain(("clip", gtx.clip(1.0)), ("lr", gtx.scale(-0.1)))
    with pytest.raises(ValueError, match=r"no entry for \['lr'\]"):
        tx.update(jnp.ones(2), {"clip": gtx.EmptyState()})


def test_apply_updates_adds_updates_to_params():
    params = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(0.5)}
    updates = {"w": jnp.array([0.25, -1.0]), "b": jnp.array(-0.5)}
    new = gtx.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], [1.25, 1.0])
    np.testing.assert_allclose(new["b"], 0.0)


def test_apply_updates_takes_python_number_parameters_real_and_complex():
    new = gtx.apply_updates({"f": 1.5, "c": 1.0 + 2.0j}, {"f": 0.25, "c": 0.5 - 1.0j})
    assert float(new["f"]) == 1.75
    assert complex(new["c"]) == 1.5 + 1.0j


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_apply_updates_keeps_each_parameters_dtype(dtype):
    params = {"w": jnp.array([1.0, -1.0], dtype)}
    new = gtx.apply_updates(params, {"w": jnp.array([0.5, 0.25], jnp.float32)})
    assert new["w"].dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(np.asarray(new["w"], np.float32), [1.5, -0.75])


def test_apply_updates_keeps_float64_parameters(x64):
    params = jnp.array([1.0, 2.0], jnp.float64)
    new = gtx.apply_updates(params, jnp.array([1e-12, 0.0], jnp.float32).astype(jnp.float64))
    assert new.dtype == jnp.float64
    assert float(new[0]) == 1.0 + 1e-12


def test_apply_updates_leaves_none_leaves_none():
    params = {"w": jnp.ones(2), "frozen": None, "nested": [None, jnp.zeros(())]}
    updates = {"w": jnp.ones(2), "frozen": None, "nested": [None, jnp.array(2.0)]}
    new = gtx.apply_updates(params, updates)
    assert new["frozen"] is None and new["nested"][0] is None
    np.testing.assert_allclose(new["w"], [2.0, 2.0])
    np.testing.assert_allclose(new["nested"][1], 2.0)


def test_apply_updates_names_the_first_path_where_the_trees_differ():
    with pytest.raises(ValueError, match=r"\['b'\]"):
        gtx.apply_updates({"a": jnp.ones(1), "b": jnp.ones(1)}, {"a": jnp.ones(1)})


@pytest.mark.parametrize("jitted", [False, True])
@pytest.mark.parametrize(
    "param, update, message",
    [
        (jnp.zeros([]), jnp.ones(3), r"the update has shape \[3\], the parameter \[\]"),
        (jnp.zeros(3), jnp.ones((2, 3)), r"the update has shape \[2, 3\], the parameter \[3\]"),
        (jnp.zeros(3), jnp.ones(1), r"the update has shape \[1\], the parameter \[3\]"),
        (jnp.zeros(2), jnp.ones(2, jnp.complex64), r"the update is complex, the parameter real"),
        (
            jnp.zeros(2, jnp.int32),
            jnp.full(2, 0.4),
            r"the update is floating, the parameter an integer",
        ),
        (jnp.zeros(2, jnp.int32), jnp.full(2, 0.75, jnp.bfloat16), r"the update is floating"),
        (jnp.zeros(2), jnp.ones(2, bool), r"the update has dtype bool, the parameter is floating"),
        (jnp.zeros(2), jnp.ones(2, jnp.int32), r"the update has dtype int32, the parameter is"),
    ],
    ids=[
        "vector_on_scalar",
        "matrix_on_vector",
        "broadcast_one",
        "complex_on_real",
        "float_on_int",
        "bfloat16_on_int",  # NumPy's kind of bfloat16 is 'V'
        "bool_on_float",  # a mask passed as the updates: Optax adds it as ones
        "int_on_float",
    ],
)
def test_apply_updates_refuses_what_would_change_or_lose_the_parameter(
    param, update, message, jitted
):
    """Optax broadcasts, truncates and drops the imaginary part silently."""
    apply = jax.jit(gtx.apply_updates) if jitted else gtx.apply_updates
    with pytest.raises(ValueError, match=r"apply_updates: at \['b'\], " + message):
        apply({"a": None, "b": param}, {"a": None, "b": update})


def test_apply_updates_names_an_abstract_update():
    """Un-jitted it was "unsupported operand type(s) for +: ... 'ShapeDtypeStruct'"."""
    params = {"b": jnp.zeros(2)}
    with pytest.raises(TypeError, match=r"^apply_updates: at \['b'\], the update is a jax.Shape"):
        gtx.apply_updates(params, jax.eval_shape(lambda: params))


def test_a_full_training_step_descends_a_quadratic():
    tx = gtx.chain(gtx.scale_by_adam(), gtx.scale_by_learning_rate(0.1))
    params = {"w": jnp.array([1.0, -2.0])}
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state

    params, state = step(params, state)
    np.testing.assert_allclose(params["w"], [0.9, -1.9], rtol=1e-6)
