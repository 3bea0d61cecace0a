"""flatten: one concatenated vector gives the same result as the per-leaf transform."""

from __future__ import annotations

import importlib

import jax
import jax.export
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx

# the module (gradtx.wrappers.flatten is the function of the same name)
flatten_module = importlib.import_module("gradtx.wrappers.flatten")


def _tree(rng):
    return {
        "a": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
        "b": [
            jnp.asarray(rng.normal(size=4), jnp.float32),
            jnp.asarray(rng.normal(size=()), jnp.float32),
        ],
    }


def test_flatten_gives_the_same_trajectory_as_the_unflattened_transform(rng):
    inner = gtx.chain(gtx.scale_by_adam(), gtx.add_decayed_weights(0.1), gtx.scale(-0.1))
    plain, flat = inner, gtx.flatten(inner)
    params = flat_params = _tree(rng)
    state, flat_state = plain.init(params), flat.init(flat_params)
    plain_step, flat_step = jax.jit(plain.update), jax.jit(flat.update)
    for _ in range(3):
        grads = _tree(rng)
        updates, state = plain_step(grads, state, params)
        flat_updates, flat_state = flat_step(grads, flat_state, flat_params)
        params = gtx.apply_updates(params, updates)
        flat_params = gtx.apply_updates(flat_params, flat_updates)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(flat_params), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_flatten_state_is_one_vector_and_leaf_dtypes_come_back():
    tx = gtx.flatten(gtx.scale_by_adam())
    params = {"half": jnp.zeros((2, 2), jnp.bfloat16), "full": jnp.zeros(3, jnp.float32)}
    state = tx.init(params)
    assert state.mu.shape == (7,) and state.mu.dtype == jnp.float32
    grads = {"half": jnp.ones((2, 2), jnp.bfloat16), "full": -jnp.ones(3, jnp.float32)}
    updates, _ = tx.update(grads, state)
    assert updates["half"].dtype == jnp.bfloat16 and updates["half"].shape == (2, 2)
    np.testing.assert_allclose(updates["full"], -np.ones(3), rtol=1e-5)


def test_a_weakly_typed_float32_leaf_keeps_its_precision_beside_bfloat16_leaves():
    # jnp.asarray(1.0001) is a weak float32: promoted with bfloat16 arrays it became
    # bfloat16 (1.0), where its dtype is float32 (as optax.flatten still does)
    params = {"a": jnp.ones(4, jnp.bfloat16), "b": jnp.asarray(1.0001)}
    tx = gtx.flatten(gtx.identity())
    updates, _ = tx.update(params, tx.init(params))
    assert updates["b"].dtype == jnp.float32 and float(updates["b"]) == np.float32(1.0001)


def _mixed_tree(rng):
    shapes = [(3, 4), (3, 4), (5,), (), (2, 1, 3), (3, 4)]
    dtypes = [jnp.float32, jnp.bfloat16, jnp.float32, jnp.float32, jnp.float16, jnp.float32]
    return [jnp.asarray(rng.normal(size=s), d) for s, d in zip(shapes, dtypes, strict=True)]


@pytest.mark.parametrize("static_starts", [False, True])
def test_eager_flatten_equals_the_per_leaf_transform(rng, monkeypatch, static_starts):
    # eager updates slice the vector at start offsets passed as arguments; past int32
    # (vectors of 2**31 elements) at constant ones, forced here by lowering the limit.
    # The vector is float32 (the promoted dtype), so the reference is the per-leaf
    # transform on float32 copies, each result cast back to its leaf's dtype.
    if static_starts:
        monkeypatch.setattr(flatten_module, "_OFFSETS_MAX", 0)
    inner = gtx.chain(gtx.scale_by_adam(), gtx.add_decayed_weights(0.1))
    tx = gtx.flatten(inner)
    params = _mixed_tree(rng)
    as_f32 = lambda tree: [x.astype(jnp.float32) for x in tree]  # noqa: E731
    state, plain_state = tx.init(params), inner.init(as_f32(params))
    for _ in range(3):
        grads = _mixed_tree(rng)
        updates, state = tx.update(grads, state, params)
        expected, plain_state = inner.update(as_f32(grads), plain_state, as_f32(params))
        for u, e, g in zip(updates, expected, grads, strict=True):
            assert u.shape == g.shape and u.dtype == g.dtype
            tolerance = 1e-6 if g.dtype == jnp.float32 else 1e-2
            np.testing.assert_allclose(
                np.asarray(u, np.float32),
                np.asarray(e.astype(g.dtype), np.float32),
                rtol=tolerance,
                atol=tolerance / 10,
            )


def test_eager_flatten_gathers_and_updates_in_one_program_from_the_second_call(rng, monkeypatch):
    # un-jitted, the gathering and the inner update run as one compiled program from the
    # second call on: the first gathers op by op, the second traces the gathering into the
    # program, later calls reuse it and gather nothing in Python
    gathered = []
    concatenate = flatten_module._concatenate

    def spy(leaves):
        gathered.append("eager" if all(_concrete(x) for x in leaves) else "traced")
        return concatenate(leaves)

    monkeypatch.setattr(flatten_module, "_concatenate", spy)
    inner = gtx.chain(gtx.scale_by_adam(), gtx.add_decayed_weights(0.1))
    params, grads = _mixed_tree(rng), _mixed_tree(rng)
    for offsets_in_state in (False, True):
        tx = gtx.flatten(inner, offsets_in_state=offsets_in_state)
        state = tx.init(params)
        results = []
        for expected in (["eager", "eager"], ["traced", "traced"], []):
            gathered.clear()
            results.append(tx.update(grads, state, params)[0])
            assert gathered == expected
        first, second, third = results
        for a, b, c in zip(first, second, third, strict=True):
            assert a.dtype == b.dtype == c.dtype
            np.testing.assert_array_equal(b, c)
            np.testing.assert_allclose(
                np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-6, atol=1e-7
            )


def _concrete(x):
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)


def test_eager_flatten_keeps_what_cannot_compile_op_by_op():
    # an inner update that reads a value in Python, and a string passed as an extra
    # keyword: the second call fails to compile, and the update stays op by op
    def reads_a_value(updates, state, params=None, **extra):
        sign = 1.0 if float(jnp.sum(updates)) > 0 else -1.0
        return updates * 2 * sign, state

    def takes_a_string(updates, state, params=None, **extra):
        assert extra["tag"] == "x"
        return updates * 2, state

    params = [jnp.ones(3), -jnp.ones(2)]
    for update in (reads_a_value, takes_a_string):
        tx = gtx.flatten(gtx.GradientTransformation(lambda params: gtx.EmptyState(), update))
        for _ in range(3):
            updates, _ = tx.update(params, tx.init(params), tag="x")
            assert updates[0].tolist() == [2.0] * 3 and updates[1].tolist() == [-2.0] * 2


def test_eager_slices_share_one_kernel_per_leaf_shape():
    # XLA:CPU compiles every distinct fusion into a kernel of its own; slices at constant
    # offsets are all distinct (~8 ms each to compile: ~10 s at the first eager update of
    # 1,000 leaves). With the offsets as arguments the 40 slices of one shape stay
    # dynamic-slices of a runtime offset, one fusion body for all.
    leaves = [jnp.zeros((2, 3))] * 40
    vector = jnp.arange(240.0)
    shapes = tuple((x.shape, x.dtype) for x in leaves)
    starts = tuple(range(0, 240, 6))
    hlo = flatten_module._slices.lower(vector, starts, shapes).compile().as_text()
    assert hlo.count("dynamic-slice(") == 40
    pieces = flatten_module._unravel(vector, leaves)
    for i, piece in enumerate(pieces):
        np.testing.assert_array_equal(piece, np.arange(6.0 * i, 6.0 * i + 6).reshape(2, 3))


def _offsets_in_state_equal_the_default(params, grads_steps) -> flatten_module.FlattenState:
    """Runs flatten with and without offsets_in_state (eager and jitted) over the steps,
    checks the updates agree (bitwise eagerly: the same elementwise math on the same
    values, only laid out by shape in the vector) and returns the jitted run's final
    state."""
    inner = gtx.chain(gtx.scale_by_adam(), gtx.add_decayed_weights(0.1))
    plain, fast = gtx.flatten(inner), gtx.flatten(inner, offsets_in_state=True)
    plain_state = plain.init(params)
    fast_state = jit_state = fast.init(params)
    assert isinstance(fast_state, flatten_module.FlattenState)
    assert all(s.dtype == jnp.int32 for s in fast_state.starts)
    fast_step = jax.jit(fast.update)
    for grads in grads_steps:
        expected, plain_state = plain.update(grads, plain_state, params)
        eager, fast_state = fast.update(grads, fast_state, params)
        jitted, jit_state = fast_step(grads, jit_state, params)
        for e, a, b in zip(expected, eager, jitted, strict=True):
            assert a.dtype == b.dtype == e.dtype and a.shape == b.shape == e.shape
            np.testing.assert_array_equal(a, e)
            np.testing.assert_allclose(
                np.asarray(b, np.float32), np.asarray(e, np.float32), rtol=1e-6, atol=1e-7
            )
    return jit_state


def test_offsets_in_state_give_the_same_numbers_jitted_and_eager(rng):
    params = _mixed_tree(rng)
    tx = gtx.flatten(gtx.scale_by_adam(), offsets_in_state=True)
    assert [int(s) for s in tx.init(params).starts] == [0, 24, 36, 41, 42]
    jit_state = _offsets_in_state_equal_the_default(params, [_mixed_tree(rng) for _ in range(3)])
    assert [int(s) for s in jit_state.starts] == [0, 24, 36, 41, 42]


def test_offsets_in_state_make_the_jitted_slices_one_kernel_per_shape():
    # with constant starts XLA folds each slice to its own offset (a kernel apiece on
    # XLA:CPU); with the starts in the state they stay dynamic-slices of step inputs
    params = [jnp.zeros((2, 3))] * 40
    for offsets_in_state, dynamic in ((False, 0), (True, 40)):
        tx = gtx.flatten(gtx.scale_by_adam(), offsets_in_state=offsets_in_state)
        hlo = jax.jit(tx.update).lower(params, tx.init(params)).compile().as_text()
        assert hlo.count("dynamic-slice(") == dynamic


def test_offsets_in_state_keep_one_start_per_run_of_leaves_of_one_shape(rng, monkeypatch):
    # each state scalar is a buffer the step passes in and out, so the vector holds the
    # leaves grouped by shape and dtype, and up to 16 leaves of a group share a start:
    # leaf j of a run is sliced at start + j * size
    a, b = ((2, 3), jnp.float32), ((5,), jnp.float32)
    c, d = ((2, 3), jnp.bfloat16), ((4,), jnp.float32)
    kinds = [a] * 5 + [b] + [a] * 5 + [c] + [a] * 10 + [b] + [d, d]
    params = [jnp.asarray(rng.normal(size=shape), dtype) for shape, dtype in kinds]
    # groups in order of first appearance: 20 of a, 2 of b, 1 of c, 2 of d
    order = [*range(5), *range(6, 11), *range(12, 22), 5, 22, 11, 23, 24]
    assert flatten_module._grouped_by_shape(params) == order
    grouped = tuple(kinds[i] for i in order)
    assert flatten_module._runs(grouped) == ((0, 16), (16, 4), (20, 2), (22, 1), (23, 2))
    # vector: a at 0 (20 x 6), b at 120 (2 x 5), c at 130 (6), d at 136 (2 x 4)
    tx = gtx.flatten(gtx.scale_by_adam(), offsets_in_state=True)
    assert [int(s) for s in tx.init(params).starts] == [0, 96, 120, 130, 136]
    grads_steps = [
        [jnp.asarray(rng.normal(size=p.shape), p.dtype) for p in params] for _ in range(2)
    ]
    _offsets_in_state_equal_the_default(params, grads_steps)
    monkeypatch.setattr(flatten_module, "_LEAVES_PER_START", 1)  # one start per leaf
    assert len(tx.init(params).starts) == len(params)


def test_offsets_in_state_check_the_starts(rng):
    tx = gtx.flatten(gtx.adam(0.1), offsets_in_state=True)
    params = _mixed_tree(rng)
    zeroed = jax.tree.map(jnp.zeros_like, tx.init(params))  # a "reset" that moves the starts
    with pytest.raises(ValueError, match="last run of leaves starts at 42, the state says 0"):
        tx.update(params, zeroed, params)
    updates, _ = jax.jit(tx.update)(params, zeroed, params)
    assert all(bool(jnp.all(jnp.isnan(u.astype(jnp.float32)))) for u in updates)
    with pytest.raises(ValueError, match="one start per run of leaves"):
        tx.update(params[:-2], tx.init(params), params[:-2])
    with pytest.raises(ValueError, match="FlattenState"):
        tx.update(params, gtx.adam(0.1).init(params), params)
    with pytest.raises(TypeError, match="offsets_in_state must be True or False, got 'yes'"):
        gtx.flatten(gtx.adam(0.1), offsets_in_state="yes")


def test_offsets_in_state_refuse_more_elements_than_int32_offsets_address(monkeypatch):
    monkeypatch.setattr(flatten_module, "_OFFSETS_MAX", 10)
    params = [jnp.zeros(6), jnp.zeros(5)]
    with pytest.raises(ValueError, match="11 elements in all"):
        gtx.flatten(gtx.adam(0.1), offsets_in_state=True).init(params)
    gtx.flatten(gtx.adam(0.1)).init(params)  # the default keeps static slices past int32


@pytest.mark.parametrize("offsets_in_state", [False, True])
@pytest.mark.parametrize("jitted", [False, True])
def test_updates_of_other_shapes_but_the_same_size_are_named_against_the_params(
    offsets_in_state, jitted
):
    """w (3,), b (3,) at init and updates w (4,), b (2,): six elements either way, so the
    vector took them, w's fourth element updated by b's state, silently."""
    tx = gtx.flatten(gtx.adam(0.1), offsets_in_state=offsets_in_state)
    params = {"w": jnp.zeros(3), "b": jnp.zeros(3)}
    update = jax.jit(tx.update) if jitted else tx.update
    with pytest.raises(ValueError, match=r"flatten: at \['b'\] the update has shape \[2\]"):
        update({"w": jnp.ones(4), "b": jnp.ones(2)}, tx.init(params), params)


def test_a_shape_polymorphic_export_of_a_flattened_step_equals_the_jitted_step():
    """jax.export with a symbolic dimension in the params (as optax.flatten allows): the
    leaves' offsets in the vector are symbolic there, not Python ints."""
    tx = gtx.flatten(gtx.adam(0.1))

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gtx.apply_updates(params, updates), state

    (n,) = jax.export.symbolic_shape("n")
    abstract = {
        "a": jax.ShapeDtypeStruct((n, 3), jnp.float32),
        "b": jax.ShapeDtypeStruct((n,), jnp.float32),
    }
    exported = jax.export.export(jax.jit(step))(
        abstract, jax.eval_shape(tx.init, abstract), abstract
    )
    for rows in (2, 5):
        params = {"a": jnp.linspace(-1.0, 1.0, rows * 3).reshape(rows, 3), "b": jnp.ones(rows)}
        grads = jax.tree.map(jnp.sin, params)
        expected = jax.jit(step)(params, tx.init(params), grads)
        actual = exported.call(params, tx.init(params), grads)
        assert jax.tree.structure(actual) == jax.tree.structure(expected)
        for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(a, e)
    with pytest.raises(ValueError, match="offsets_in_state=True.*needs concrete shapes"):
        jax.eval_shape(gtx.flatten(gtx.adam(0.1), offsets_in_state=True).init, abstract)


def test_an_abstract_init_takes_shapes_of_numpy_integers_as_concrete_shapes():
    """A ShapeDtypeStruct keeps the NumPy integers of its shape (a shape read from a
    checkpoint's metadata, say): they are concrete sizes, not jax.export's symbolic
    ones (was 'the params have 7 elements in all (a symbolic shape of jax.export)')."""
    abstract = {
        "a": jax.ShapeDtypeStruct((np.int64(2), np.int32(2)), jnp.float32),
        "b": jax.ShapeDtypeStruct((np.int64(3),), jnp.float32),
    }
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(3)}
    tx = gtx.flatten(gtx.scale_by_adam(), offsets_in_state=True)
    state = tx.init(abstract)
    assert [int(start) for start in state.starts] == [0, 4]
    assert jax.tree.map(jnp.shape, state) == jax.tree.map(jnp.shape, tx.init(params))


def _matrices(tree):
    return jax.tree.map(lambda p: p.ndim > 1, tree)


ROUTING = {
    "masked_by_tree": lambda: gtx.masked(gtx.sgd(0.1), {"a": True, "b": False}),
    "masked_by_function": lambda: gtx.masked(gtx.sgd(0.1), _matrices),
    "partition_by_tree": lambda: gtx.partition(
        {"x": gtx.sgd(0.1), "y": gtx.freeze()}, {"a": "x", "b": "y"}
    ),
    "partition_by_patterns": lambda: gtx.partition(
        {"x": gtx.sgd(0.1), "y": gtx.freeze()}, {r"\['a'\]": "x", ".*": "y"}
    ),
    "adamw_mask": lambda: gtx.adamw(0.1, mask=_matrices),
}


@pytest.mark.parametrize("name", sorted(ROUTING))
def test_routing_by_leaf_inside_flatten_is_refused_naming_both(rng, name):
    """Inside flatten a mask or labels meet one vector: a mask function (p.ndim > 1) or
    path patterns silently picked all or none of it (masked updated nothing, the
    partition froze every leaf, adamw decayed nothing), and a mask tree was a
    ValueError about a prefix that named neither flatten nor a way out."""
    named = {"masked": "masked", "partition": "partition", "adamw": "mask="}[name.split("_")[0]]
    tx, params = gtx.flatten(ROUTING[name]()), _tree(rng)
    if name == "adamw_mask":
        state = tx.init(params)  # adamw reads its mask in update only
    else:
        with pytest.raises(ValueError, match=rf"{named} inside flatten: .* one vector"):
            tx.init(params)
        state = None  # refused before the state is read
    with pytest.raises(ValueError, match=rf"{named} inside flatten: .* one vector"):
        jax.jit(tx.update)(params, state, params)
