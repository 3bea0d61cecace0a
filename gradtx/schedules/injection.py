"""``schedule_injection``: hyperparameters held in the state, readable and settable.

An injected transform evaluates each numeric hyperparameter (a constant or a schedule)
at every step, keeps the values in its state as float32, and rebuilds the inner
transform with them. The hyperparameters are then ordinary arrays of the state:
``get_hyperparams`` reads them and ``set_hyperparams`` changes them between steps
without recompiling anything (both in ``gradtx.schedules.hyperparams``).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, folds, numerics, tree
from gradtx.core import GradientTransformation, OptState, TransformLike


class InjectState(NamedTuple):
    """The state of a transform built by ``schedule_injection`` (every gradtx optimizer).

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1 (the schedules are
            evaluated at it).
        hyperparams: a dict from argument name to a float32 scalar: the values the last
            update used (after ``init``, those of step 0); ``set_hyperparams`` sets them.
        inner_state: the state of the transform ``factory`` builds.
    """

    count: jax.Array
    hyperparams: dict[str, jax.Array]
    inner_state: OptState


def _declared_float(parameter: inspect.Parameter | None) -> bool:
    """Whether the factory declares this argument a float (by default or annotation)."""
    if parameter is None:
        return False
    default = parameter.default
    if isinstance(default, float) and not isinstance(default, bool):
        return True
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        return False
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return "float" in text or "Schedule" in text


def _is_injectable(value: Any, parameter: inspect.Parameter | None = None) -> bool:
    """Float numbers and float arrays are injected; bools, strings, None and the rest are
    static. An integer is static too, unless the factory declares the argument a float
    (``adam(1)`` still puts ``learning_rate`` in the state)."""
    if isinstance(value, bool | np.bool_ | str | type(None)):
        return False
    if isinstance(value, int | np.integer):
        return _declared_float(parameter)
    if isinstance(value, float | np.floating):
        return True
    if isinstance(value, jax.Array | np.ndarray):
        if jnp.issubdtype(value.dtype, jnp.integer):
            return _declared_float(parameter)
        return jnp.issubdtype(value.dtype, jnp.floating)
    return False


def as_float32(name: str, value: Any) -> jax.Array:
    """A hyperparameter's value as the state holds it: a float32 scalar, an array of its
    own (``tree.own_array``); one with a shape is a ValueError naming it."""
    array = jnp.asarray(value)
    if array.ndim != 0:
        raise ValueError(f"hyperparameter {name} must be a scalar, got shape {array.shape}")
    return tree.own_array(array.astype(jnp.float32), value)


def _at_least_float32(name: str, value: Any, leaves: Any) -> jax.Array:
    """A traced argument as the update computes with it: in its own precision, at least
    float32, but no wider than the narrowest real dtype the leaves of ``leaves`` (the
    params or updates) compute in. A float64 value stays float64 where every leaf is
    float64 (so that a meta-gradient through the optimizer keeps it; the state stores
    the float32 copy); with float32, bfloat16 or mixed leaves it is float32, as a value
    read from the state is, so that no transform promotes a state leaf to float64."""
    value = jnp.asarray(value)
    if value.ndim != 0:
        raise ValueError(f"hyperparameter {name} must be a scalar, got shape {value.shape}")
    dtypes = [numerics.real_dtype(numerics.compute_dtype(jnp.result_type(x))) for x in leaves]
    narrowest = min(dtypes, key=lambda d: d.itemsize, default=jnp.dtype(jnp.float32))
    dtype = numerics.promote_types(value.dtype, jnp.float32)
    return value.astype(narrowest if dtype.itemsize > narrowest.itemsize else dtype)


_INSIDE_AN_INJECTOR = contextvars.ContextVar("gradtx_inside_an_injector", default=False)


def _build_inner(factory: Callable, fixed: dict, hyperparams: dict) -> GradientTransformation:
    """``factory`` called with the values this injector evaluated; an injected optimizer
    it builds reads them from its arguments at each update, not from its own state."""
    token = _INSIDE_AN_INJECTOR.set(True)
    try:
        return factory(**fixed, **hyperparams)
    finally:
        _INSIDE_AN_INJECTOR.reset(token)


def _evaluate(
    name: str, schedule: Callable, count: jax.Array, parameter: inspect.Parameter | None = None
) -> Any:
    """``schedule(count)``, a call with the wrong arity named as the argument's. No
    number (None, a string, a bool for an argument not declared a float) is a TypeError
    naming ``static_args``: a mask function given to ``schedule_injection(gtx.masked)``
    was called with the step and its bool injected as 0.0, then refused as a mask leaf."""
    try:
        value = schedule(count)
    except TypeError as error:
        try:
            inspect.signature(schedule).bind(count)
        except TypeError:  # the schedule cannot take the step: the user's mistake
            raise TypeError(
                f"{name} is a schedule, called with the step count as its one argument; "
                f"{schedule!r} cannot take it ({error})"
            ) from None
        except ValueError:  # no signature to inspect (a builtin): its own error
            pass
        raise
    if callable(value):  # optax.cosine_decay_schedule given, not what it returns
        raise TypeError(
            f"the schedule given for {name} returned {value!r}, not a number: give the "
            f"schedule (a function of the step), not the function that makes one"
        )
    boolean = isinstance(value, bool | np.bool_) or getattr(value, "dtype", None) == np.bool_
    if value is None or isinstance(value, str) or (boolean and not _declared_float(parameter)):
        raise TypeError(
            f"the schedule given for {name} returned {value!r}, not a number (a function "
            f"of the params, such as a mask or labels, is not a schedule: pass "
            f"static_args={name!r})"
        )
    return value


@overload
def schedule_injection(
    factory: Callable[..., TransformLike], *, static_args: str | Iterable[str] = ()
) -> Callable[..., GradientTransformation]: ...


@overload
def schedule_injection(
    factory: None = None, *, static_args: str | Iterable[str] = ()
) -> Callable[[Callable[..., TransformLike]], Callable[..., GradientTransformation]]: ...


def schedule_injection(
    factory: Callable[..., TransformLike] | None = None,
    *,
    static_args: str | Iterable[str] = (),
) -> Any:
    """Makes every float hyperparameter of ``factory`` a constant-or-schedule in the state.

    ``schedule_injection(factory)(**hyperparams)`` returns a transform that, at update t
    (t counting from 0), evaluates each schedule at t, stores every float hyperparameter
    as a float32 scalar in ``InjectState.hyperparams`` and applies
    ``factory(**values)``. Boolean, string, None and dtype arguments, integers (unless
    the factory declares the argument a float, by its default or its annotation), and
    the arguments named in ``static_args`` (e.g. a mask function) are passed through
    unchanged. The factory's defaults count as arguments, so ``get_hyperparams`` lists
    them all.

    The injected transform computes with the float32 values it stores: it follows the
    plain ``factory`` called with those float32 values (``float(np.float32(0.999))``)
    to rounding. Called with the decimal Python floats instead, the plain chain can
    differ slightly: it computes ``1 - 0.999`` in double precision, the injected one
    ``1 - float32(0.999)``, about 1e-5 apart relative, which moves Adam's update by
    ~6e-6 relative.

    It also works as a decorator, which is how every optimizer in gradtx is written::

        @schedule_injection
        def adam(learning_rate, b1=0.9, ...):
            return chain(scale_by_adam(b1, ...), scale_by_learning_rate(learning_rate))

    The factory must accept its float hyperparameters as (traced) float32 scalars.

    Args:
        factory: a function returning a ``GradientTransformation`` (or any transform
            with ``init`` and ``update``, an Optax factory's); omitted (None), the
            call returns a decorator taking it (``@schedule_injection(static_args=...)``).
            Each injected argument, given or defaulted, is a real scalar or a schedule
            ``step -> real scalar`` (a vector is a ValueError); the factory is called
            once when the transform is built, to validate the values. A transform
            given instead (``optax.adam(0.1)`` for ``optax.adam``) is a TypeError.
        static_args: names of arguments passed through unchanged even if callable or
            float (a mask function, say): one name (``"mask"``, as Optax takes it) or an
            iterable of names, each an argument of ``factory`` (another is a
            ValueError naming it, where a misspelt name would otherwise leave the
            argument injected). A mask or labels function left out of it is called as a
            schedule: its bool or string (no number; a bool is one only for an argument
            declared a float) is a TypeError naming ``static_args``.

    A hyperparameter given as a JAX array to an injected optimizer built inside another
    injector's factory (a gradtx optimizer wrapped in ``schedule_injection`` again, or
    built by ``lr_find``: the enclosing injector's values, or values derived from them)
    or that is traced (an optimizer rebuilt inside a jitted step from a learning-rate
    argument; ``optax.inject_hyperparams(gtx.adam)`` under ``jit``) is read from the
    argument at every update, as a schedule is, not from the state. Other values
    (Python, NumPy and JAX numbers) are read from the state, where ``set_hyperparams``,
    ``tree_set`` and a restored checkpoint change them (inside an injector's factory,
    build with Python numbers what you mean to set on the inner optimizer); so
    un-jitted, ``optax.inject_hyperparams(gtx.adam)`` follows the gradtx state, not the
    wrapper's (a gradtx optimizer needs no such wrapper: it is injected already).
    A traced value is computed with in its own precision (at least float32), no wider
    than the narrowest parameter (float64 under x64 where every parameter is float64;
    float32 where any is float32 or narrower, as a value read from the state is, so that
    the state's dtypes never change), the state keeping its float32 copy: with float64
    parameters a meta-gradient through the optimizer with respect to it (``jax.grad`` of
    a loss after unrolled steps, with the optimizer built inside the differentiated
    function) has float64 accuracy, Optax's numbers. A value set in the state
    (``set_hyperparams``) is float32, and so is the reverse-mode gradient with respect to
    it (~1e-5 relative off for Adam's b2).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> tx = gtx.schedule_injection(gtx.scale)(step_size=lambda t: 0.5 ** t)
        >>> state = tx.init(jnp.zeros(1))
        >>> _, state = tx.update(jnp.ones(1), state)
        >>> u, state = tx.update(jnp.ones(1), state)
        >>> u.tolist(), float(gtx.get_hyperparams(state)["step_size"])
        ([0.5], 0.5)
    """
    # a string is one name, not the iterable of its characters
    static = frozenset((static_args,) if isinstance(static_args, str) else static_args)
    if factory is None:
        return functools.partial(schedule_injection, static_args=static)
    if not callable(factory) or (hasattr(factory, "init") and hasattr(factory, "update")):
        # a built transform (optax.adam(0.1)) where its factory (optax.adam) is meant
        raise TypeError(
            f"factory must be a function that builds a gradient transformation (gtx.adam, "
            f"optax.adam), got {factory!r}; pass the function, not what it returned"
        )

    signature = inspect.signature(factory)
    takes_any_keyword = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
    unknown = sorted(static - set(signature.parameters), key=str) if not takes_any_keyword else []
    if unknown:
        raise ValueError(
            f"static_args must name arguments of {getattr(factory, '__name__', 'factory')}"
            f" ({', '.join(signature.parameters)}), got {', '.join(map(repr, unknown))}"
        )

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> GradientTransformation:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        with check.schedules_allowed():  # schedules are evaluated before factory sees them
            built = factory(**arguments)  # validates the hyperparameters where the mistake is made
        schedules = {
            name: value
            for name, value in arguments.items()
            if name not in static and check.is_schedule(value)
        }
        constants = {
            name: value
            for name, value in arguments.items()
            if name not in static
            and name not in schedules
            and _is_injectable(value, signature.parameters.get(name))
        }
        fixed = {
            name: value
            for name, value in arguments.items()
            if name not in schedules and name not in constants
        }

        # An argument that an enclosing injector evaluated (this optimizer built inside
        # another injected transform, whose state is then the one that holds the value)
        # or a traced one (an optimizer rebuilt inside a jitted step from a learning-rate
        # argument; Optax's inject_hyperparams under jit) is the caller's: read from the
        # argument at every update, as a schedule is. Other values are read from the
        # state, where set_hyperparams, tree_set and checkpoints change them.
        nested = _INSIDE_AN_INJECTOR.get()
        live = {
            name: value
            for name, value in constants.items()
            if isinstance(value, jax.core.Tracer) or (nested and isinstance(value, jax.Array))
        }

        def values_at(count, stored):
            values = dict(stored)
            for name, value in live.items():
                values[name] = as_float32(name, value)
            for name, schedule in schedules.items():
                values[name] = as_float32(
                    name, _evaluate(name, schedule, count, signature.parameters.get(name))
                )
            return values

        def computed_with(values, like):
            # A traced argument is the caller's number: the update computes with it in its
            # own precision (float32 rounding of a float64 value would leave a meta-gradient
            # through the optimizer float32-accurate: 5e-5 relative off Optax's for Adam's
            # b2); the state keeps the float32 copy, so its structure does not change. It
            # is never wider than the narrowest leaf of ``like``: a float64 b1 times a
            # float32 moment in a transform that does not cast it (Nadam's mu_product,
            # SWATS) would otherwise make a float32 state leaf float64 (lax.scan fails).
            leaves = jax.tree.leaves(like) if live else []
            return {**values, **{n: _at_least_float32(n, v, leaves) for n, v in live.items()}}

        def init(params):
            count = jnp.zeros([], jnp.int32)
            constant_values = {n: as_float32(n, v) for n, v in constants.items()}
            hyperparams = values_at(count, constant_values)
            inner = _build_inner(factory, fixed, computed_with(hyperparams, params))
            return InjectState(count, hyperparams, inner.init(params))

        def update(updates, state, params=None, **extra):
            if not isinstance(state, InjectState):
                raise TypeError(
                    f"the state of {getattr(factory, '__name__', 'this optimizer')} must "
                    f"be the InjectState its init returned (or the state its last update "
                    f"returned), got {type(state).__name__}; update returns (updates, "
                    f"state): was the pair passed, or were state and params swapped?"
                )
            # a batch of states (jax.vmap(tx.init)) says so here, not as a hyperparameter
            # of the wrong shape
            numerics.scalar_counter(state.count)
            hyperparams = values_at(state.count, state.hyperparams)
            inner = _build_inner(factory, fixed, computed_with(hyperparams, updates))
            updates, inner_state = inner.update(updates, state.inner_state, params, **extra)
            count = numerics.safe_increment(state.count)
            return updates, InjectState(count, hyperparams, inner_state)

        def leaf_fold(updates, state, params, extra, values):
            # An injected elementwise block (scale_by_learning_rate, add_decayed_weights)
            # at an eager update: its per-leaf function and next state as update computes
            # them, for a chain running it inside the kernels of the block next to it
            # (tree.FOLD_EAGER_SCALING). Values read from the caller's arguments (``live``)
            # take the updates' precision: those go through update, as do other states,
            # inner transforms and bad values (the update says so, in its turn).
            if live or not isinstance(state, InjectState):
                return None
            if not folds.concrete_counter(state.count):
                return None
            try:
                hyperparams = values_at(state.count, state.hyperparams)
                inner = _build_inner(factory, fixed, hyperparams)
                marked = folds.leaf_fold_of(inner.update)
                fold = marked and marked[0](updates, state.inner_state, params, extra, values)
            except Exception:  # the update says so, in its turn
                return None
            if fold is None:
                return None
            count = numerics.safe_increment(state.count)
            return fold._replace(state=InjectState(count, hyperparams, fold.state))

        # marked as the optimizer it builds is, where that is an elementwise block (a
        # learning rate, weight decay: the same blocks at every update)
        probe = folds.leaf_fold_of(built.update)
        if probe is None:
            return GradientTransformation(init, update)
        _, returns_product, scaling, value_scaling = probe
        return GradientTransformation(
            init,
            tree.elementwise(
                update,
                leaf_fold,
                returns_product=returns_product,
                scaling=scaling,
                value_scaling=value_scaling,
            ),
        )

    return build
