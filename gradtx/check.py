"""Hyperparameter validation at the door: clear errors naming the argument and range.

Every check lets a traced value through unchecked (injected hyperparameters are arrays
inside ``jit``). A schedule (a callable, checked when evaluated) is let through where
the argument takes one (``schedule=True``) and while ``schedules_allowed()`` is active
(``schedule_injection`` and the optimizers, which evaluate schedules before the
transform sees them); anywhere else it is a TypeError naming the argument, so that a
schedule handed to a transform that takes a number fails where the mistake is made.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import sys
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from gradtx.numerics import INT32_MAX

_SCHEDULES_ALLOWED = contextvars.ContextVar("gradtx_schedules_allowed", default=False)


@contextlib.contextmanager
def schedules_allowed() -> Iterator[None]:
    """Within this block every check lets schedules through (they are evaluated, and
    their values checked by the transform, at each step)."""
    token = _SCHEDULES_ALLOWED.set(True)
    try:
        yield
    finally:
        _SCHEDULES_ALLOWED.reset(token)


_INSIDE_FLATTEN = contextvars.ContextVar("gradtx_inside_flatten", default=False)


@contextlib.contextmanager
def inside_flatten() -> Iterator[None]:
    """Within this block the transforms run on ``flatten``'s one vector of all leaves,
    where a mask or labels by leaf cannot apply (``leaves_apart``)."""
    token = _INSIDE_FLATTEN.set(True)
    try:
        yield
    finally:
        _INSIDE_FLATTEN.reset(token)


def leaves_apart(what: str, instead: str) -> None:
    """A ValueError where ``what`` (a transform that picks leaves by mask or label) runs
    inside ``flatten``: there it sees one vector, not the leaves (a mask tree is not a
    prefix of it; a mask or label function, called with the vector, picks all or none)."""
    if _INSIDE_FLATTEN.get():
        raise ValueError(
            f"{what} inside flatten: flatten's inner transform sees one vector of all the "
            f"leaves, so it cannot pick leaves by mask or label; {instead}"
        )


def is_flax_variable(x: Any) -> bool:
    """Whether ``x`` is a Flax ``nnx.Variable`` (Flax is not imported for it: without
    it loaded, nothing is one). ``nnx.Optimizer`` calls ``init`` with an ``nnx.State``
    of Variables, where a leaf's path ends in ``.value``, and ``update`` with their
    arrays, where it does not; its ``opt_state`` keeps the state's arrays in them."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(x, nnx.Variable)


def flax_variable_value(x: Any) -> Any:
    """The value a Flax ``nnx.Variable`` holds, ``x`` itself if it is none: ``get_value()``
    from flax 0.12.1, ``.value`` before (flax 0.12.0, what pip resolves with jax 0.7.2,
    has no ``get_value``; flax 0.12.8 deprecates ``.value``)."""
    if not is_flax_variable(x):
        return x
    return x.get_value() if hasattr(type(x), "get_value") else x.value


def is_schedule(value: Any) -> bool:
    """Whether a hyperparameter is a schedule: a callable that is not a type
    (``jnp.bfloat16``, a ``mu_dtype``, is callable too and stays a static argument) nor
    a Flax ``nnx.Variable`` (callable through Flax's deprecated ``__call__``, which reads
    it: one holding an injected hyperparameter, in ``nnx.Optimizer``'s state, is a
    number)."""
    return callable(value) and not isinstance(value, type) and not is_flax_variable(value)


def _concrete(name: str, value: Any, schedule: bool) -> np.ndarray | None:
    """The value as a NumPy array, or None when it cannot be checked now."""
    if is_schedule(value):
        if schedule or _SCHEDULES_ALLOWED.get():
            schedule_arity(name, value)  # evaluated later: its signature is checked now
            return None
        raise TypeError(
            f"{name} must be a number here, got a schedule ({value!r}); to schedule it, "
            f"build the transform with gtx.schedule_injection(transform)(..., "
            f"{name}=schedule), or use an optimizer (gtx.adam, gtx.sgd, ...), whose "
            f"numeric hyperparameters all take schedules"
        )
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except Exception:  # an abstract value (ShapeDtypeStruct, ...): nothing to check
        return None


def _fail(name: str, value: Any, expected: str) -> NoReturn:
    raise ValueError(f"{name} must be {expected}, got {value!r}")


def number(name: str, value: Any, *, schedule: bool = False, allow_inf: bool = False) -> None:
    """Real number (or, with ``schedule=True``, a schedule): a scalar, not NaN, not a
    string, and finite unless ``allow_inf=True`` (only where an infinite value means
    "no bound", like a clipping threshold: elsewhere an inf learning rate or decay turns
    the parameters into NaN or inf at the first update). An array of several values is
    refused: it would broadcast against the leaves (one b1 per element) or fail inside
    jnp at the first update. A traced value's shape is known: one with a shape (a
    schedule returning a vector, under ``jit``) is refused as well."""
    if isinstance(value, jax.core.Tracer) and value.ndim:
        _fail(name, value, f"a scalar (a number or a 0-d array), not shape {value.shape}")
    array = _concrete(name, value, schedule)
    if array is None:
        return
    # jnp.issubdtype: NumPy's own does not count bfloat16 (ml_dtypes) as a number, and
    # optax.inject_hyperparams casts hyperparameters to bfloat16 parameters' dtype
    if not jnp.issubdtype(array.dtype, jnp.number) or np.iscomplexobj(array):
        _fail(name, value, "a real number or a schedule" if schedule else "a real number")
    if array.ndim:
        _fail(name, value, "a scalar (a number or a 0-d array)")
    if np.any(np.isnan(array)):
        _fail(name, value, "a real number (not NaN)")
    if not allow_inf and np.any(np.isinf(array)):
        _fail(name, value, "a finite real number")
    if (
        isinstance(value, int | np.integer)
        and not isinstance(value, bool)
        and not -INT32_MAX - 1 <= value <= INT32_MAX
    ):
        # JAX reads a Python int as int32 (without x64): it would overflow at the first
        # update, where the hyperparameter meets an array.
        _fail(
            name,
            value,
            f"a number JAX can take: write an int beyond int32 as a float ({float(value):g})",
        )


def in_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    schedule: bool = False,
    allow_inf: bool = False,
) -> None:
    """``low <= value <= high`` (ends inclusive unless told otherwise), finite unless
    ``allow_inf=True`` (see ``number``)."""
    number(name, value, schedule=schedule, allow_inf=allow_inf)
    array = _concrete(name, value, schedule)
    if array is None:
        return
    ok = np.ones(array.shape, bool)
    if low is not None:
        ok &= array >= low if low_inclusive else array > low
    if high is not None:
        ok &= array <= high if high_inclusive else array < high
    if not np.all(ok):
        # an unbounded end is open: inf itself is refused unless allow_inf
        left = "(-inf" if low is None else ("[" if low_inclusive else "(") + str(low)
        right = "inf)" if high is None else str(high) + ("]" if high_inclusive else ")")
        if allow_inf:
            left, right = left.replace("(-inf", "[-inf"), right.replace("inf)", "inf]")
        _fail(name, value, f"in {left}, {right}")


def at_least(name: str, value: Any, bound_name: str, bound: Any) -> None:
    """``value >= bound`` for a pair of hyperparameters (an upper bound and the lower
    bound it must not fall below), checked whenever both are concrete: Python and NumPy
    numbers and concrete JAX arrays alike. A traced value or a schedule (where
    ``schedules_allowed()``) is let through, like in the other checks."""
    array = _concrete(name, value, False)
    bound_array = _concrete(bound_name, bound, False)
    if array is None or bound_array is None:
        return
    if np.any(array < bound_array):
        _fail(name, value, f">= {bound_name} ({bound!r})")


def unit_interval(name: str, value: Any, *, schedule: bool = False) -> None:
    """A decay rate or momentum: ``0 <= value < 1``."""
    in_range(name, value, 0.0, 1.0, high_inclusive=False, schedule=schedule)


def non_negative(name: str, value: Any, *, schedule: bool = False, allow_inf: bool = False) -> None:
    """``value >= 0``."""
    in_range(name, value, 0.0, None, schedule=schedule, allow_inf=allow_inf)


def positive(name: str, value: Any, *, schedule: bool = False, allow_inf: bool = False) -> None:
    """``value > 0``."""
    in_range(name, value, 0.0, None, low_inclusive=False, schedule=schedule, allow_inf=allow_inf)


def _integer(name: str, value: Any, minimum: int, expected: str) -> int:
    if isinstance(value, jax.core.Tracer):
        # optax.inject_hyperparams injects integer arguments too, traced under jit
        _fail(
            name,
            value,
            f"{expected} (an array: concrete, 0-d, of an integer dtype; "
            f"optax.inject_hyperparams traces it unless given static_args=({name!r},))",
        )
    if isinstance(value, np.ndarray | jax.Array):
        if value.ndim or not jnp.issubdtype(value.dtype, jnp.integer):
            _fail(name, value, f"{expected} (an array: concrete, 0-d, of an integer dtype)")
        number = int(value)  # a concrete 0-d integer array (Optax takes one), as its value
    elif isinstance(value, bool) or not isinstance(value, int | np.integer):
        _fail(name, value, expected)
    else:
        number = int(value)
    if number < minimum:
        _fail(name, value, expected)
    # The step counters these integers are compared with are int32 (and saturate there):
    # a larger value would overflow when the first update converts it.
    if number > INT32_MAX:
        _fail(name, value, f"{expected} at most {INT32_MAX} (the step counters are int32)")
    return number


def positive_int(name: str, value: Any) -> int:
    """A Python or NumPy integer, or a concrete 0-d integer array (NumPy's or JAX's), in
    ``[1, 2**31 - 1]`` (int32, like the step counters); booleans are rejected. Returns
    the value as a Python ``int``, which the caller keeps (so that an array given is
    used as the number it holds)."""
    return _integer(name, value, 1, "a positive integer")


def non_negative_int(name: str, value: Any) -> int:
    """A Python or NumPy integer, or a concrete 0-d integer array (NumPy's or JAX's), in
    ``[0, 2**31 - 1]`` (int32, like the step counters); booleans are rejected. Returns
    the value as a Python ``int``, which the caller keeps."""
    return _integer(name, value, 0, "a non-negative integer")


def seed(name: str, value: Any) -> None:
    """A random seed: an integer in ``[0, 2**32 - 1]``, a Python or NumPy integer or a
    concrete 0-d integer array (NumPy's or JAX's: what ``np.random.randint`` or
    ``jax.random.randint(key, (), ...)`` give; ``jax.random.PRNGKey`` and Optax's
    ``add_noise`` take them too). A JAX key keeps 32 bits of the seed: a larger one would
    silently give the key of a smaller one. A traced 0-d integer (``jax.vmap`` over
    seeds, one per member of an ensemble) is let through, as ``jax.random.PRNGKey``
    takes it. Booleans (and boolean arrays) are refused."""
    if isinstance(value, jax.core.Tracer):
        if value.ndim or not jnp.issubdtype(value.dtype, jnp.integer):
            _fail(name, value, "a non-negative integer (traced: a 0-d integer array)")
        return
    array = isinstance(value, np.ndarray | jax.Array)
    if array and value.ndim == 0 and jnp.issubdtype(value.dtype, jnp.integer):
        number = int(value)  # a concrete 0-d integer array, checked as its value
    elif isinstance(value, bool) or not isinstance(value, int | np.integer):
        expected = "a non-negative integer (an array: 0-d, of an integer dtype)"
        _fail(name, value, expected if array else "a non-negative integer")
    else:
        number = int(value)
    if number < 0:
        _fail(name, value, "a non-negative integer")
    if number > 2**32 - 1:
        _fail(name, value, f"a non-negative integer at most {2**32 - 1} (a seed has 32 bits)")


def boolean(name: str, value: Any) -> None:
    """A flag: ``True`` or ``False`` (a Python or NumPy bool, a 0-d boolean array such as
    ``jnp.bool_(True)`` or a PyTorch bool tensor, or the integers 0 and 1, as Optax and
    PyTorch take them). Anything else is refused rather than read by its truthiness: the
    string ``"False"`` is true, and an array of several values has no single truth
    value."""
    if isinstance(value, (bool, np.bool_)):
        return
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return
    if not isinstance(value, jax.core.Tracer) and hasattr(value, "__array__"):
        try:
            array = np.asarray(value)
        except Exception:  # not convertible to an array: refused below
            array = None
        if array is not None and array.ndim == 0 and array.dtype == np.bool_:
            return
    raise TypeError(f"{name} must be True or False, got {value!r}")


def takes_one_argument(
    name: str, fn: Any, argument: str, *, kind: str = "a function", example: Any = 0
) -> None:
    """``fn`` can be called with one positional argument (``example`` standing for it).

    A schedule is called with the step count, a mask or label function with the params;
    one that cannot take it fails here, naming ``name``, rather than with a bare
    TypeError at the first update. A callable without a signature to inspect (a
    builtin) is let through; a non-callable is left to the caller's other checks."""
    if not callable(fn):
        return
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to inspect (a builtin)
        return
    try:
        signature.bind(example)
    except TypeError as error:
        raise TypeError(
            f"{name} is {kind}, called with {argument} as its one argument; {fn!r} cannot "
            f"take it ({error})"
        ) from None


def schedule_arity(name: str, schedule: Any) -> None:
    """A schedule (if ``schedule`` is one) can be called with the step count."""
    if is_schedule(schedule):
        takes_one_argument(name, schedule, "the step count", kind="a schedule")


def one_of(name: str, value: Any, options: Iterable[Any]) -> None:
    """``value`` is one of ``options``."""
    options = tuple(options)
    if value not in options:
        _fail(name, value, "one of " + ", ".join(repr(o) for o in options))


def dtype_or_none(name: str, value: Any) -> None:
    """A floating dtype (``jnp.float32``, ``np.dtype("bfloat16")``, ``"float16"``), or
    None. An array (or anything else with a ``dtype``) is refused: ``jnp.dtype`` would
    quietly take its dtype, and elsewhere its truth value is asked for."""
    if value is None:
        return
    if not isinstance(value, (str, type, np.dtype)):
        _fail(name, value, "a floating dtype (such as jnp.float32) or None")
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        _fail(name, value, "a floating dtype or None")
    if not jnp.issubdtype(dtype, jnp.inexact):
        _fail(name, value, "a floating dtype or None")
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 16:
        # (numerics.is_narrow_float: numerics imports this module)
        expected = "a floating dtype of 16 bits or more, or None (8-bit moments: "
        _fail(name, value, expected + "gradtx.quantized_state)")


def state_of(owner: str, state: Any, expected: type) -> None:
    """``state`` is an ``expected``, the state ``owner``'s ``init`` returns: a state of
    another optimizer, ``None`` (an update before init), the params (state and params
    swapped) or the ``(updates, state)`` pair is a TypeError naming ``owner``, not an
    AttributeError from inside its update. An ``isinstance`` test: nothing at run time
    under ``jit``, and nothing an eager step would notice."""
    if not isinstance(state, expected):
        raise TypeError(
            f"the state of {owner} must be the {expected.__name__} its init returned (or "
            f"the state its last update returned), got {type(state).__name__}; update "
            f"returns (updates, state): was the pair passed, or were state and params "
            f"swapped?"
        )
