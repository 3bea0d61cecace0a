"""Any pytree: nested containers, None leaves, empty trees, 0-d arrays, complex leaves.

Every named optimizer is elementwise (no norm couples the leaves), so running it on a
nested tree must give, leaf for leaf, the numbers it gives on the flat concatenation of
the leaves: that is the reference here.

Complex parameters: sgd (with and without momentum), adam, adamw, amsgrad, adamax,
nadam, nadamw, rmsprop, adagrad and adadelta take complex64 leaves (second moments are
|g|^2, real); rprop does not (it compares signs of successive gradients, which has no
complex meaning).

The containers models come in (Flax linen and nnx, flax.struct, registered dataclasses,
custom nodes with static fields, Equinox-style modules after filtering) come back as they
went in, with Optax's numbers. Integer and bool leaves masked out keep their values under
the float0 gradients jax.grad gives them; a leaf that is not an array is named.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, struct
from flax.core import FrozenDict

import gradtx as gtx
from gradtx.compat import keras as keras_compat
from tests import zoo
from tests.reference.complex_adam import adam_complex


class Layer(NamedTuple):
    kernel: jax.Array
    bias: jax.Array


def nested_params():
    """Nested dict, list, tuple and NamedTuple, None leaves and a 0-d array."""
    return {
        "encoder": [Layer(jnp.zeros((2, 3)), jnp.zeros(3)), (jnp.zeros(()), None)],
        "head": {"scale": jnp.zeros(1), "frozen": None},
    }


def random_like(tree, rng, steps):
    treedef = jax.tree.structure(tree)
    leaves = jax.tree.leaves(tree)
    return [
        treedef.unflatten(
            [jnp.asarray(rng.normal(size=x.shape) + 0.5, jnp.float32) for x in leaves]
        )
        for _ in range(steps)
    ]


def flatten(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("name", zoo.ALL)
def test_any_pytree_gives_the_numbers_of_its_flat_concatenation(name, rng):
    params = nested_params()
    grads = random_like(params, rng, steps=3)
    tree_result, state = zoo.run_steps(zoo.make(name, 0.1), params, grads)
    flat_result, _ = zoo.run_steps(
        zoo.make(name, 0.1), flatten(params), [flatten(g) for g in grads]
    )
    assert jax.tree.structure(tree_result) == jax.tree.structure(params)
    assert isinstance(tree_result["encoder"][0], Layer)
    assert tree_result["encoder"][1][0].shape == ()
    assert tree_result["encoder"][1][1] is None and tree_result["head"]["frozen"] is None
    np.testing.assert_allclose(flatten(tree_result), flat_result, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("empty", [{}, [], ()], ids=["dict", "list", "tuple"])
@pytest.mark.parametrize("name", zoo.ALL)
def test_an_empty_tree_gives_an_empty_update(name, empty):
    tx = zoo.make(name, 0.1)
    state = tx.init(empty)
    updates, state = tx.update(empty, state, empty)
    assert updates == empty
    assert gtx.apply_updates(empty, updates) == empty


def complex_grads(rng, steps, size=3):
    return [
        jnp.asarray(rng.normal(size=size) + 1j * rng.normal(size=size), jnp.complex64)
        for _ in range(steps)
    ]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_complex_adam_follows_the_numpy_complex_reference(name, rng):
    grads = complex_grads(rng, steps=20)
    params = jnp.asarray([1 + 1j, -2j, 0.5], jnp.complex64)
    tx = zoo.require(name)(0.05, weight_decay=0.0) if name == "adamw" else gtx.adam(0.05)
    result, state = zoo.run_steps(tx, params, grads)
    assert result.dtype == jnp.complex64
    nu = jax.tree.leaves(state)
    assert any(x.dtype == jnp.float32 and x.shape == (3,) for x in nu)  # |g|^2 is real
    expected = adam_complex(
        [np.asarray(g) for g in grads], np.asarray(params), 0.05,
        b1=float(np.float32(0.9)), b2=float(np.float32(0.999)), eps=float(np.float32(1e-8)),
    )  # fmt: skip
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_complex_adamax_keeps_a_real_infinity_norm_and_follows_the_equations(rng):
    """u = max(b2 u, |g|) of a complex gradient is real (float32 for complex64), as
    Adam's |g|^2 is; the step is m_hat / u (eps in the max, the default) with the complex
    first moment."""
    grads = complex_grads(rng, steps=10)
    tx = gtx.scale_by_adamax()
    state = tx.init(jnp.zeros(3, jnp.complex64))
    step = jax.jit(tx.update)
    m, u = np.zeros(3, np.complex128), np.zeros(3)
    for t, g in enumerate(grads, start=1):
        updates, state = step(g, state)
        m = 0.9 * m + 0.1 * np.asarray(g)
        u = np.maximum(0.999 * u, np.abs(np.asarray(g)) + 1e-8)
        np.testing.assert_allclose(updates, m / (1 - 0.9**t) / u, rtol=1e-5)
    assert updates.dtype == jnp.complex64 and state.mu.dtype == jnp.complex64
    assert state.nu.dtype == jnp.float32


def test_complex_adadelta_keeps_real_accumulators_and_follows_the_equations(rng):
    """Zeiler's E[g^2] and E[dx^2] of complex leaves average |g|^2 and |dx|^2: both
    accumulators are real (float32 for complex64), and the step is
    sqrt(E[dx^2] + eps) / sqrt(E[g^2] + eps) * g with the complex g."""
    grads = complex_grads(rng, steps=10)
    tx = gtx.scale_by_adadelta(rho=0.8, eps=1e-3)
    state = tx.init(jnp.zeros(3, jnp.complex64))
    step = jax.jit(tx.update)
    e_g, e_x = np.zeros(3), np.zeros(3)
    for g in grads:
        updates, state = step(g, state)
        g = np.asarray(g, np.complex128)
        e_g = 0.8 * e_g + 0.2 * np.abs(g) ** 2
        dx = np.sqrt(e_x + 1e-3) / np.sqrt(e_g + 1e-3) * g
        e_x = 0.8 * e_x + 0.2 * np.abs(dx) ** 2
        np.testing.assert_allclose(updates, dx, rtol=1e-5)
    assert updates.dtype == jnp.complex64
    assert state.e_g.dtype == state.e_x.dtype == jnp.float32


@pytest.mark.parametrize("name", ["sgd", "sgd_momentum", "sgd_nesterov"])
def test_complex_sgd_moves_real_and_imaginary_parts_like_two_real_parameters(name, rng):
    grads = complex_grads(rng, steps=5)
    start = jnp.asarray([1 + 1j, -2j, 0.5], jnp.complex64)
    result, _ = zoo.run_steps(zoo.make(name, 0.1), start, grads)
    as_pairs, _ = zoo.run_steps(
        zoo.make(name, 0.1),
        jnp.stack([start.real, start.imag]),
        [jnp.stack([g.real, g.imag]) for g in grads],
    )
    np.testing.assert_allclose(result.real, as_pairs[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.imag, as_pairs[1], rtol=1e-6, atol=1e-7)


COMPLEX_OPTIMIZERS = [n for n in zoo.ALL if n != "rprop"]
COMPLEX_LEARNING_RATES = {"adadelta": 1.0}


@pytest.mark.parametrize("name", COMPLEX_OPTIMIZERS)
def test_complex_parameters_descend_a_complex_quadratic(name):
    """f(z) = |z - c|^2; its steepest-descent direction, as a complex number, is 2(z - c)
    (JAX's grad returns the conjugate). Adadelta's first steps are ~sqrt(eps) long, so
    it only has to make progress; the others must shrink the loss by 10% in 30 steps."""
    target = jnp.asarray([1 - 2j, 0.5 + 0.5j], jnp.complex64)
    tx = zoo.make(name, COMPLEX_LEARNING_RATES.get(name, 0.05))

    def loss(z):
        return jnp.sum(jnp.abs(z - target) ** 2)

    @jax.jit
    def descend(params):
        def step(carry, _):
            params, state = carry
            grads = jnp.conj(jax.grad(loss)(params))
            updates, state = tx.update(grads, state, params)
            return (gtx.apply_updates(params, updates), state), None

        (params, state), _ = jax.lax.scan(step, (params, tx.init(params)), length=30)
        return params, state

    params, state = descend(jnp.zeros(2, jnp.complex64))
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype in (jnp.complex64, jnp.float32, jnp.int32)
    assert params.dtype == jnp.complex64
    required = 0.999 if name == "adadelta" else 0.9
    assert float(loss(params)) < required * float(loss(jnp.zeros(2, jnp.complex64)))


@pytest.mark.parametrize("name", zoo.ALL)
def test_init_on_shape_dtype_structs_matches_init_on_arrays(name):
    """Abstract init (for sharding and checkpoint restore) builds the same state."""
    concrete = {"w": jnp.zeros((3, 2), jnp.bfloat16), "b": jnp.zeros((), jnp.float32)}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), concrete)
    tx = zoo.make(name, 0.1)
    expected = jax.tree.map(lambda x: (x.shape, x.dtype), tx.init(concrete))
    for state in (tx.init(abstract), jax.eval_shape(tx.init, abstract)):
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == expected


def test_rprop_refuses_complex_parameters_with_a_clear_error():
    tx = gtx.rprop(0.1)
    params = {"z": jnp.zeros(2, jnp.complex64)}
    with pytest.raises(TypeError, match="complex"):
        state = tx.init(params)
        tx.update({"z": jnp.ones(2, jnp.complex64)}, state, params)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    "make",
    [lambda: gtx.clip(0.5), lambda: keras_compat.adam(0.1, clipvalue=0.5)],
    ids=["clip", "keras clipvalue"],
)
def test_clipping_by_value_names_a_complex_update(make, jit):
    """Complex numbers have no order: ``clip`` (and Keras' ``clipvalue``, which is it)
    raised JAX's "Clip received a complex value" from inside its map, naming no leaf,
    jitted or not. It names the leaf now, as ``rprop`` does, and real leaves beside it
    clip as before."""
    params = {"x": jnp.zeros(2), "z": jnp.zeros(2, jnp.complex64)}
    grads = {"x": jnp.array([2.0, -0.25]), "z": jnp.array([1 + 1j, -2j], jnp.complex64)}
    tx = make()
    update = jax.jit(tx.update) if jit else tx.update
    with pytest.raises(
        TypeError, match=r"clip needs real updates; the update at \['z'\] is complex64"
    ):
        update(grads, tx.init(params), params)
    real = {"x": params["x"]}
    clipped = gtx.clip(0.5).update({"x": grads["x"]}, gtx.EmptyState())[0]
    np.testing.assert_array_equal(np.asarray(clipped["x"]), [0.5, -0.25])
    assert update({"x": grads["x"]}, tx.init(real), real)[0]["x"].dtype == jnp.float32


@pytest.mark.parametrize(
    "name", ["adam", "sgd_momentum", "adagrad", "multi_steps", "lookahead", "ema_params"]
)
def test_python_number_leaves_work_eagerly_as_under_jit(name):
    """A parameter held as a Python float ({"scale": 0.5}): Optax takes it eagerly and
    gradtx did under jit, but eager init and update raised AttributeError ('float'
    object has no attribute 'dtype'). It is an array leaf now, as under jit."""
    tx = {
        "adam": lambda: gtx.adam(0.1),
        "sgd_momentum": lambda: gtx.sgd(0.1, momentum=0.9),
        "adagrad": lambda: gtx.adagrad(0.1),
        # their own state read the leaf's dtype: 'float' object has no attribute 'dtype'
        "multi_steps": lambda: gtx.multi_steps(gtx.adam(0.1), every_k=1),
        "lookahead": lambda: gtx.lookahead(gtx.adam(0.1), sync_period=2),
        "ema_params": lambda: gtx.chain(gtx.adam(0.1), gtx.ema_params(0.9)),
    }[name]()
    params = {"scale": 0.5, "w": jnp.array([2.0, 1.0])}
    grads = {"scale": 0.2, "w": jnp.array([0.7, 0.4])}

    def two_steps(params, grads):
        state = tx.init(params)
        for _ in range(2):
            updates, state = tx.update(grads, state, params)
            params = gtx.apply_updates(params, updates)
        return params

    eager = two_steps(params, grads)
    jitted = jax.jit(two_steps)(params, grads)
    for key in params:
        np.testing.assert_allclose(eager[key], jitted[key], rtol=1e-6)
    assert float(eager["scale"]) != 0.5


@struct.dataclass
class StructModel:
    """A ``flax.struct.dataclass`` model with a static field."""

    w: jax.Array
    b: jax.Array
    activation: str = struct.field(pytree_node=False, default="relu")


@dataclasses.dataclass
class RegisteredDataclass:
    """A dataclass registered with ``jax.tree_util.register_dataclass``."""

    w: jax.Array
    activation: str = "tanh"


jax.tree_util.register_dataclass(RegisteredDataclass, data_fields=["w"], meta_fields=["activation"])


@jax.tree_util.register_pytree_with_keys_class
class StaticWidthNode:
    """A custom pytree node whose ``width`` is static (aux data), as Equinox fields
    marked static or Haiku-style containers have."""

    def __init__(self, w, width):
        self.w, self.width = w, width

    def tree_flatten_with_keys(self):
        return ((jax.tree_util.GetAttrKey("w"), self.w),), self.width

    @classmethod
    def tree_unflatten(cls, width, children):
        return cls(children[0], width)


def models_users_have():
    """One tree holding the param containers of Flax linen (FrozenDict), Flax nnx
    (``nnx.split``'s Param state), flax.struct, registered dataclasses, a custom node
    with static fields, an Equinox-style module after ``eqx.filter(model,
    eqx.is_array)`` (None where a field is not an array), a 0-d and a size-0 leaf."""
    kernel = jnp.asarray([[0.5, -1.0], [2.0, 0.25]])
    _, nnx_params, _ = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param, ...)
    return {
        "linen": FrozenDict({"params": {"Dense_0": {"kernel": kernel}}}),
        "nnx": nnx_params,
        "struct": StructModel(jnp.ones((2, 2)), jnp.asarray([0.1, -0.3])),
        "dataclass": RegisteredDataclass(jnp.asarray([1.0, -2.0, 3.0])),
        "static": StaticWidthNode(jnp.asarray(0.7), width=4),
        "equinox_filtered": Layer(jnp.full((3,), 0.2), None),
        "empty": jnp.zeros((0, 3)),
    }


TREE_OPTIMIZERS = {
    "adam": (lambda: gtx.adam(0.01), lambda: optax.adam(0.01)),
    "sgd_momentum": (
        lambda: gtx.sgd(0.05, momentum=0.9),
        lambda: optax.sgd(float(np.float32(0.05)), momentum=float(np.float32(0.9))),
    ),
    "flatten": (lambda: gtx.flatten(gtx.adam(0.01)), lambda: optax.flatten(optax.adam(0.01))),
    "multi_steps": (
        lambda: gtx.multi_steps(gtx.adam(0.01), 2),
        lambda: optax.MultiSteps(optax.adam(0.01), 2).gradient_transformation(),
    ),
}


@pytest.mark.parametrize("name", TREE_OPTIMIZERS)
def test_model_containers_keep_their_types_and_follow_optax(name, rng):
    """Every container comes back as it went in (FrozenDict, nnx.State, dataclasses with
    their static fields, None where Equinox's filter put it) and the numbers are
    Optax's on the same tree (gradtx's float32 bias correction differs by ~6e-6)."""
    params = models_users_have()
    grads = random_like(params, rng, steps=3)
    make_gradtx, make_optax = TREE_OPTIMIZERS[name]
    result, _ = zoo.run_steps(make_gradtx(), params, grads)
    reference_tx = make_optax()

    @jax.jit
    def reference_steps(params):
        state = reference_tx.init(params)
        for g in grads:
            updates, state = reference_tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
        return params

    reference = reference_steps(params)
    assert jax.tree.structure(result) == jax.tree.structure(params)
    assert isinstance(result["linen"], FrozenDict)
    assert isinstance(result["nnx"], nnx.State)
    assert result["struct"].activation == "relu" and result["static"].width == 4
    assert result["equinox_filtered"].bias is None
    for got, start, expected in zip(
        jax.tree.leaves(result), jax.tree.leaves(params), jax.tree.leaves(reference), strict=True
    ):
        assert (got.shape, got.dtype) == (start.shape, start.dtype)
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


def with_integer_leaves():
    """A model that keeps a step counter and a boolean mask among its params."""
    return {
        "w": jnp.asarray([1.0, -2.0]),
        "step": jnp.asarray(3, jnp.int32),
        "mask": jnp.asarray([True, False]),
    }


def gradients_with_float0(params):
    """``jax.grad(..., allow_int=True)``: the integer and bool leaves get float0 zeros."""

    def loss(params):
        return jnp.sum(params["w"] ** 2) * jnp.where(params["mask"][0], 1.0, 0.0)

    return jax.grad(loss, allow_int=True)(params)


FLOATS_ONLY = {"w": True, "step": False, "mask": False}
INTEGER_LEAVES_MASKED_OUT = {
    "masked": lambda: gtx.masked(gtx.adam(0.1), FLOATS_ONLY),
    "masked_zero": lambda: gtx.masked(gtx.adam(0.1), FLOATS_ONLY, masked_leaves="zero"),
    "partition_freeze": lambda: gtx.partition(
        {"adam": gtx.adam(0.1), "frozen": gtx.freeze()},
        {"w": "adam", "step": "frozen", "mask": "frozen"},
    ),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", INTEGER_LEAVES_MASKED_OUT)
def test_integer_leaves_masked_out_keep_their_values_under_float0_gradients(name, jit):
    """The documented way to keep integer leaves in the params is to mask them out; the
    gradients jax.grad gives them are float0, which masked passes on and freeze keeps.
    apply_updates raised inside JAX on them ('Called add with a float0 array', as
    Optax's does); a float0 update now leaves its parameter as it is."""
    params = with_integer_leaves()
    grads = gradients_with_float0(params)
    assert grads["step"].dtype == jax.dtypes.float0
    tx = INTEGER_LEAVES_MASKED_OUT[name]()

    def three_steps(params):
        state = tx.init(params)
        for _ in range(3):
            updates, state = tx.update(grads, state, params)
            params = gtx.apply_updates(params, updates)
        return params

    result = jax.jit(three_steps)(params) if jit else three_steps(params)
    expected, _ = zoo.run_steps(gtx.adam(0.1), params["w"], [grads["w"]] * 3)
    assert result["step"].dtype == jnp.int32 and int(result["step"]) == 3
    assert result["mask"].dtype == jnp.bool_ and result["mask"].tolist() == [True, False]
    np.testing.assert_allclose(result["w"], expected, rtol=1e-6)


def test_a_float0_update_of_a_floating_parameter_is_refused_naming_the_leaf():
    float0_zeros = jax.grad(lambda n: 0.0, allow_int=True)(jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match=r"at \['w'\], the update is float0"):
        gtx.apply_updates({"w": jnp.ones(2)}, {"w": float0_zeros})


def test_float0_gradients_reaching_a_transform_are_refused_by_their_name():
    """NumPy calls float0 'void': the error said 'has dtype void'."""
    params = with_integer_leaves()
    tx = gtx.clip_by_global_norm(1.0)
    with pytest.raises(TypeError, match=r"update at \['mask'\] has dtype float0"):
        tx.update(gradients_with_float0(params), tx.init(params), params)


@pytest.mark.parametrize("field", [jax.nn.relu, "float32"], ids=["function", "string"])
@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_a_model_field_that_is_not_an_array_is_refused_naming_its_path(name, field):
    """An Equinox module passed without eqx.filter holds its activation function as a
    leaf: the error came from inside JAX ('Cannot determine dtype of <custom_jvp ...>')
    without a path, and a string leaf was read as a dtype name ('float32')."""
    params = {"w": jnp.ones(2), "activation": field}
    grads = {"w": jnp.ones(2), "activation": field}
    tx = zoo.make(name, 0.1)
    with pytest.raises(TypeError, match=r"at \['activation'\] is a (custom_jvp|str), not an"):
        tx.update(grads, tx.init(params), params)


def test_apply_updates_names_a_model_field_that_is_not_an_array():
    """masked passes a masked-out leaf's update on as it came: the function itself,
    which apply_updates tried to read a dtype from ('Cannot interpret ... as a data
    type', from NumPy)."""
    params = {"w": jnp.ones(2), "activation": jax.nn.relu}
    tx = gtx.masked(gtx.adam(0.1), {"w": True, "activation": False})
    updates, _ = tx.update(params, tx.init(params), params)
    with pytest.raises(TypeError, match=r"at \['activation'\], the parameter is a custom_jvp"):
        gtx.apply_updates(params, updates)
