"""Numerical helpers: saturating counters, compute dtypes and bias corrections.

The rule (DESIGN.md): state keeps the parameter dtype, but denominators, reductions and
bias corrections are computed in at least float32, so float16/bfloat16 parameters never
produce NaN from an underflowing ``eps`` or lose a small update.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

INT32_MAX = int(np.iinfo(np.int32).max)
"""The largest int32: the step counters' type, and the bound of every count gradtx takes."""


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1`` for an int32 step counter, saturating at the int32 maximum.

    A wrapped counter would turn bias corrections (``1 - b**count``) negative after
    2**31 steps; a saturated one keeps them at their limit.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import numerics
        >>> int(numerics.safe_increment(jnp.asarray(numerics.INT32_MAX, jnp.int32)))
        2147483647
    """
    count = scalar_counter(count)
    return jnp.where(count < INT32_MAX, count + 1, INT32_MAX).astype(count.dtype)


ABSTRACT_STATE = (
    "jax.ShapeDtypeStruct, a shape and dtype without values: jax.eval_shape(tx.init, "
    "params) gives a state to restore a checkpoint into; update needs the restored state "
    "or tx.init(params)"
)


def scalar_counter(count: Any) -> jax.Array:
    """A state's step counter as a 0-d array; a counter with a leading axis is a batch of
    states (``jax.vmap(tx.init)``) or replicas (``jax.pmap(tx.init)``) handed to an
    update outside ``vmap``/``pmap``: a ValueError that says so (else a broadcasting
    error deep in the update, or numbers mixed across the members).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import numerics
        >>> int(numerics.scalar_counter(jnp.asarray(3, jnp.int32)))
        3
    """
    if isinstance(count, jax.ShapeDtypeStruct):
        raise TypeError(f"a step counter of the state is a {ABSTRACT_STATE}")
    count = jnp.asarray(count)
    if count.ndim:
        raise ValueError(
            f"a step counter of the state has shape {count.shape}, where one state holds a "
            "0-d one: a batch of states (jax.vmap(tx.init)) or replicas (jax.pmap(tx.init)) "
            "is updated inside jax.vmap or jax.pmap, one state at a time"
        )
    return count


def canonical(dtype: Any) -> jnp.dtype:
    """The dtype JAX gives an array of ``dtype``: float64 and complex128 (a NumPy array's
    own dtype, ``np.ones(3)``) are float32 and complex64 unless ``jax_enable_x64`` is on.
    gradtx requests only these: asked for float64 with x64 off, JAX warns ("Explicitly
    requested dtype float64 ... will be truncated") at every such request, and makes
    float32 as it does for the NumPy array itself."""
    return jax.dtypes.canonicalize_dtype(dtype)


def leaf_dtype(leaf: Any) -> np.dtype:
    """A leaf's dtype as JAX gives it (``canonical``: a NumPy float64 array is
    float32 unless x64 is on); a Python number has the dtype ``jnp.asarray`` gives it
    (float32, or float64 under x64): the one it has under ``jit``."""
    if hasattr(leaf, "dtype"):
        return canonical(leaf.dtype)
    return jnp.result_type(leaf)


@functools.cache
def is_narrow_float(dtype: Any) -> bool:
    """Whether ``dtype`` is a float of fewer than 16 bits (JAX's float8 and float4
    formats). No gradient transformation runs in them: JAX promotes them implicitly to
    nothing (a TypePromotionError at the first product with float32), and their
    resolution and range would lose every update and second moment (float8_e4m3fn
    steps by 1/8 near 1 and is 0 below 2**-9). Parameters are kept in float32 or
    bfloat16 and cast to them where a model computes; 8-bit state is
    ``gradtx.quantized_state``'s."""
    dtype = jnp.dtype(dtype)
    return bool(jnp.issubdtype(dtype, jnp.floating)) and jnp.finfo(dtype).bits < 16


def real_dtype(dtype: Any) -> jnp.dtype:
    """The real counterpart of a complex dtype; other dtypes unchanged (``canonical``)."""
    dtype = canonical(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.finfo(dtype).dtype
    return dtype


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype transform math runs in: at least float32 (complex64 for complex).

    float16/bfloat16 -> float32; float32 and float64 (and complex) are unchanged
    (``canonical``).
    """
    dtype = canonical(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return promote_types(dtype, jnp.complex64)
    if is_narrow_float(dtype):  # (promotion has no path from them: the leaf checks refuse)
        return jnp.dtype(jnp.float32)
    if jnp.issubdtype(dtype, jnp.floating):
        return promote_types(dtype, jnp.float32)
    return jnp.dtype(jnp.float32)


def promote_types(a: Any, b: Any) -> jnp.dtype:
    """``jnp.promote_types(a, b)`` under JAX's standard promotion rules, whatever
    ``jax_numpy_dtype_promotion`` says: the dtypes gradtx computes in are its own choice
    (bfloat16 moments updated in float32), cast explicitly, not an implicit promotion of
    the user's arrays, which ``"strict"`` promotion would refuse."""
    return _standard_promote_types(jnp.dtype(a), jnp.dtype(b))


@functools.cache
def _standard_promote_types(a: jnp.dtype, b: jnp.dtype) -> jnp.dtype:
    with jax.numpy_dtype_promotion("standard"):
        return jnp.promote_types(a, b)


def result_type(*values: Any) -> jnp.dtype:
    """``jnp.result_type(*values)`` under JAX's standard promotion rules, whatever
    ``jax_numpy_dtype_promotion`` says (see ``promote_types``)."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(*values)


def promote(*values: Any) -> tuple:
    """``values`` cast to ``result_type(*values)``, as implicit promotion casts them
    (a real scale of a complex moment becomes ``x + 0j``); Python numbers stay as they
    are (weakly typed). The same numbers, accepted by ``"strict"`` promotion too."""
    dtype = result_type(*values)
    return tuple(
        value if isinstance(value, int | float | complex) else jnp.asarray(value).astype(dtype)
        for value in values
    )


_DTYPE = operator.attrgetter("dtype")


def leaf_dtypes(tree: Any) -> set[jnp.dtype]:
    """The distinct dtypes of the leaves of ``tree`` (one attribute read per array leaf:
    cheap enough for eager updates of thousands of leaves)."""
    # the distinct dtype objects first (a set of attribute reads), normalized after
    try:
        raw = set(map(_DTYPE, jax.tree.leaves(tree)))  # read in a C loop
    except AttributeError:
        raw = {None}
    if None in raw:  # a Python number among the leaves
        return {
            jnp.dtype(leaf.dtype) if hasattr(leaf, "dtype") else jnp.result_type(leaf)
            for leaf in jax.tree.leaves(tree)
        }
    return {jnp.dtype(dtype) for dtype in raw}


def fraction_left(done: Any, total: Any) -> jax.Array:
    """``1 - done / total`` for ``0 <= done <= total``, exactly 1 at ``done = 0``, exactly
    0 at ``done = total`` and never outside [0, 1], under ``jit`` too.

    Schedules need it: in a jitted, fused program ``done / total`` may be computed as
    ``done * (1 / total)`` and ``1 - done / total`` fused into one fma, which leaves
    about -1e-8 at the end (a NaN under a fractional power, a negative learning rate at
    the end of a linear decay). ``(total - done) / total`` is 0 there, bounded by 1; it
    too is a product with ``1 / total`` under ``jit``, 1 - 6e-8 at ``done = 0`` for 73 of
    the totals 1..500 (``1 - sqrt(1 - left)`` made that 2.4e-4), hence the exact 1. An
    integer ``done`` is subtracted from ``total`` in integers: in float32 both round to
    128 steps near 1.5e9, and ``1 - s / T`` came out 0 two steps before the end.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import numerics
        >>> numerics.fraction_left(jnp.arange(4), 3).tolist()
        [1.0, 0.6666666865348816, 0.3333333432674408, 0.0]
    """
    done = jnp.asarray(done)
    dtype = done.dtype if jnp.issubdtype(done.dtype, jnp.floating) else jnp.float32
    # in the step's own type: for integers (0 <= done <= total) the difference is exact
    steps_left = jnp.asarray(total, done.dtype) - done
    left = steps_left.astype(dtype) / jnp.asarray(total, dtype)
    return jnp.where(done <= 0, 1, jnp.minimum(left, 1)).astype(dtype)


def fraction_done(done: Any, total: Any) -> jax.Array:
    """``done / total`` for ``0 <= done <= total``: exactly 0 at ``done = 0``, exactly 1
    at ``done = total`` (``done * (1 / total)`` under ``jit`` may miss it by an ulp) and
    never outside [0, 1]. Computed directly, not as ``1 - fraction_left``: near the
    start that difference keeps only ``total * 6e-8`` of relative precision.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import numerics
        >>> numerics.fraction_done(jnp.arange(4), 3).tolist()
        [0.0, 0.3333333432674408, 0.6666666865348816, 1.0]
    """
    done = jnp.asarray(done)
    dtype = done.dtype if jnp.issubdtype(done.dtype, jnp.floating) else jnp.float32
    fraction = done.astype(dtype) / jnp.asarray(total, dtype)
    return jnp.where(done >= total, 1, jnp.minimum(fraction, 1)).astype(dtype)


def half_cosine_left(left: jax.Array) -> jax.Array:
    """``(1 + cos(pi x)) / 2`` from ``left = 1 - x``, as ``sin(pi left / 2)^2``: the
    same number, with ``left``'s relative precision near the end of an anneal, where
    ``1 + cos(pi x)`` cancels in float32 (0 two steps before the end of a 1e6-step
    cosine, where the value is 1e-11; a 50% error at 1e-3 of the peak under
    ``exponent=0.28``). 1 at ``left = 1``, 0 at ``left = 0``."""
    return jnp.sin(jnp.pi / 2 * left) ** 2


def is_traced(*values: Any) -> bool:
    """Whether any of ``values`` is a JAX tracer: a hyperparameter given under ``jit``,
    ``vmap`` or ``grad`` (a sweep, a meta-gradient), whose value cannot choose a Python
    branch. Schedules pick their most precise formula from the values of their
    hyperparameters; a traced one gets the general formula."""
    return any(isinstance(value, jax.core.Tracer) for value in values)


def power(base: float, exponent: jax.Array) -> jax.Array:
    """``base ** exponent`` for a Python-number ``base`` >= 0, in the exponent's dtype.

    ``float32(base) ** t`` carries the base's rounding t times: ``float32(0.99994)`` is
    2.2e-8 low, which makes ``0.99994 ** 1e4`` 2.2e-4 low (and ``0.97 ** t`` 3e-4 high
    at 1e4 steps). The rounding is corrected by ``exp(t * log(base / float32(base)))``,
    with that log taken in double precision; a base the dtype holds exactly (0.5, 0.25)
    is raised as it is, so halvings stay exact, and so is one the dtype rounds to 0 or
    inf. A traced base (a hyperparameter under ``jit``, ``vmap`` or ``grad``) has no
    value to correct: it is raised as it is.
    """
    exponent = jnp.asarray(exponent)
    if is_traced(base):
        return jnp.asarray(base, exponent.dtype) ** exponent
    rounded = float(np.asarray(base, exponent.dtype))
    value = jnp.asarray(rounded, exponent.dtype) ** exponent
    if rounded == base or rounded == 0 or math.isinf(rounded):
        # exact, or out of the dtype's range (1e-50 rounds to 0, 1e39 to inf in float32):
        # nothing to correct
        return value
    return value * jnp.exp(exponent * math.log(base / rounded))


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|^2``, real for complex ``x``."""
    if jnp.iscomplexobj(x):
        return jnp.real(x) ** 2 + jnp.imag(x) ** 2
    return x * x


def bias_correction(decay: Any, count: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """``1 - decay**count``, the debiasing factor of an exponential moving average.

    Computed in ``dtype`` (at least float32; in float16 ``0.999**t`` rounds badly). In
    float64 as written (the references' double-precision formula). Below float64 as
    ``-expm1(count * log(decay))``: ``1 - float32(0.999)**t`` loses digits to the
    cancellation (6e-6 relative at t = 2), and for a Python-number ``decay`` the log is
    taken in double precision, since the moment this corrects was averaged with ``1 -
    decay`` in double precision: ``1 - float32(decay)**t`` does not cancel it (for
    ``decay = 0.9999999``, ``float32(decay) = 1 - 1.19e-7``: Adam's first steps 9% too
    large; 8e-5 at 0.9999). An array ``decay`` (an injected hyperparameter) is used in
    its own rounding, as its moment is.
    """
    dtype = compute_dtype(real_dtype(dtype))
    t = count.astype(dtype)
    if jnp.dtype(dtype) == jnp.float64:
        return 1 - jnp.asarray(decay, dtype) ** t
    if isinstance(decay, (int, float)):
        log_decay = jnp.asarray(math.log(decay) if decay > 0 else -math.inf, dtype)
    else:
        log_decay = jnp.log(jnp.asarray(decay).astype(dtype))
    return -jnp.expm1(t * log_decay)


def debiased_weight(decay: Any, count: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """``(1 - decay) / (1 - decay**count)``, the weight of the newest value in a
    debiased exponential moving average, exactly 1 at ``count = 1``: numerator and
    denominator are the same computation there (``expm1(log(decay))`` below float64,
    as in ``bias_correction``)."""
    dtype = compute_dtype(real_dtype(dtype))
    if jnp.dtype(dtype) == jnp.float64:
        return (1 - jnp.asarray(decay, dtype)) / bias_correction(decay, count, dtype)
    if isinstance(decay, (int, float)):
        log_decay = jnp.asarray(math.log(decay) if decay > 0 else -math.inf, dtype)
    else:
        log_decay = jnp.log(jnp.asarray(decay).astype(dtype))
    return jnp.expm1(log_decay) / jnp.expm1(count.astype(dtype) * log_decay)


def hyperparameter(value: Any, dtype: Any) -> Any:
    """A hyperparameter ready for arithmetic in ``dtype``.

    Python numbers stay Python numbers (weakly typed, so they take the leaf's dtype
    exactly), and so do NumPy scalars, as the Python numbers they hold (``np.float64``
    subclasses ``float``, but JAX types it strongly: under x64 it widened the leaf's
    arithmetic, and strict promotion refused it against float32 or complex64 leaves);
    arrays (injected hyperparameters live in the state as float32) are cast.
    """
    value = python_number(value)
    if isinstance(value, int | float):
        return value
    return jnp.asarray(value).astype(real_dtype(dtype))


@jax.custom_jvp
def _barrier(x: jax.Array) -> jax.Array:
    return jax.lax.optimization_barrier(x)


# the barrier's derivative, which JAX before 0.5 does not define: the identity
_barrier.defjvp(lambda primals, tangents: (_barrier(primals[0]), tangents[0]))


@functools.cache
def _barrier_batches() -> bool:
    """Whether ``vmap`` takes an optimization barrier (JAX 0.4.36 has no batching rule)."""
    try:
        jax.eval_shape(
            jax.vmap(jax.lax.optimization_barrier), jax.ShapeDtypeStruct((1,), np.float32)
        )
    except NotImplementedError:
        return False
    return True


def unshared(value: Any, dtype: Any) -> jax.Array:
    """``value`` as a 0-d array of ``dtype`` that XLA cannot prove equal to ``value``.

    XLA:CPU has no multi-output loop fusion, and it does not repeat an expensive
    operation (a square root, a division) in two loops: where two outputs of a step need
    the same expensive intermediate, it writes that intermediate to a buffer of its own,
    the size of the parameters, and reads it back. Computing it a second time from
    ``unshared(eps, dtype)`` instead of ``eps`` keeps XLA from merging the two
    computations: each output's loop computes its own copy, the same numbers bitwise,
    and the step holds no temporary for it. An optimization barrier of one scalar
    (differentiable; under ``vmap`` on JAX releases whose barrier batches, the plain
    value on older ones).
    """
    value = jnp.asarray(value).astype(dtype)
    if not _barrier_batches():
        return value
    return _barrier(value)


def as_stored(x: jax.Array, stored_dtype: Any, gradient_dtype: Any) -> jax.Array:
    """A new state value ``x``, computed in float32, as the update reads it: rounded to
    bfloat16 where the state stores it in bfloat16 and the gradients are bfloat16 too,
    else ``x`` itself.

    A transform computes in at least float32 and stores each state value in its own
    dtype. With bfloat16 parameters (bfloat16 gradients, moments stored in bfloat16) the
    update reads the moments as the state holds them, as PyTorch, Keras and Optax do
    (their arithmetic runs in bfloat16): this costs the update the moment's rounding, a
    relative 2**-9, below that of the bfloat16 update itself, and saves the step a
    buffer. XLA:CPU cannot update the donated moment in place while another loop still
    reads its float32 value, so it makes a copy: bfloat16 Adam held two,
    params + grads + state x1.5, and holds none this way.

    Not rounded: a bfloat16 moment of float32 gradients (``mu_dtype=jnp.bfloat16``,
    whose float32 value Optax's update reads too) and float16 moments (float16's range
    would round Adam's second moment of gradients below ~5e-3 to 0 and make the step
    divide by eps; the docstrings advise ``nu_dtype=jnp.float32`` there).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import numerics
        >>> x = jnp.array([1.001], jnp.float32)
        >>> numerics.as_stored(x, jnp.bfloat16, jnp.bfloat16).tolist()
        [1.0]
        >>> numerics.as_stored(x, jnp.bfloat16, jnp.float32).tolist() == x.tolist()
        True
    """
    target = promote_types(stored_dtype, gradient_dtype)
    if target != jnp.bfloat16 or jnp.dtype(x.dtype) == target:
        return x
    return x.astype(target).astype(x.dtype)


def scaled(u: jax.Array, step_size: Any) -> jax.Array:
    """``step_size * u``, multiplied in at least float32 and rounded once to ``u``'s
    dtype: ``scale``'s map of one leaf (in float16 a learning rate of 2.5e-8 would round
    to 0, and 1e-7 to 1.19e-7, before the multiplication).

    Example:
        >>> import jax.numpy as jnp
        >>> from gradtx import numerics
        >>> numerics.scaled(jnp.array([1000.0], jnp.float16), 2.5e-8).tolist()  # not 0
        [2.4974346160888672e-05]
    """
    dtype = compute_dtype(u.dtype)
    return (u.astype(dtype) * factor(step_size, dtype)).astype(u.dtype)


def factor(value: Any, dtype: Any) -> Any:
    """A real hyperparameter ready to multiply values of ``dtype``: as
    ``hyperparameter``, but an array is cast to ``dtype`` itself, complex for complex
    values (``x + 0j``, the number standard promotion gives, made explicit so that
    ``jax_numpy_dtype_promotion="strict"`` accepts the product)."""
    value = python_number(value)
    if isinstance(value, int | float):
        return value
    return jnp.asarray(value).astype(real_dtype(dtype)).astype(dtype)


def is_constant_zero(value: Any) -> bool:
    """Whether a hyperparameter is a Python or NumPy 0, a constant XLA drops from a sum
    (``x + 0``): a quotient by ``sqrt(v) + eps`` is then one by ``sqrt(v)``, which XLA
    computes as the product ``x * rsqrt(v)`` (blocks tell a chain that folds eager
    kernels whether they return a product: ``tree.updates_from_first_map``)."""
    value = python_number(value)
    # (one that float32 rounds to 0, 1e-50, is a 0 there too)
    return isinstance(value, int | float) and (value == 0 or np.float32(value) == 0)


def python_number(value: Any) -> Any:
    """A real NumPy scalar as the Python number it holds (the same value: a float32's or
    float64's is exact as a Python float), so that JAX types it weakly, as it does the
    Python number (``np.float64`` subclasses ``float`` but is typed strongly: under x64
    it widened float32 arithmetic, and strict promotion refused it); anything else, an
    array included, as it is.

    Example:
        >>> import numpy as np
        >>> from gradtx import numerics
        >>> type(numerics.python_number(np.float64(0.9))).__name__
        'float'
    """
    return value.item() if isinstance(value, np.integer | np.floating | np.bool_) else value


def anneal(
    t: jax.Array, begin: float, end: float, start_value: float, end_value: float, kind: str
) -> jax.Array:
    """PyTorch's ``OneCycleLR`` anneal from ``start_value`` at step ``begin`` to
    ``end_value`` at ``end``: ``'cos'``, ``end_value + (start_value - end_value) (cos(pi x)
    + 1) / 2``, or ``'linear'``, ``start_value + (end_value - start_value) x``, with
    ``x = (t - begin) / (end - begin)``.

    Written so that no value near a small endpoint comes from a difference of large
    numbers (in float32 those formulas cancel there: 2.4e-4 relative off a final value 1e5
    below the peak, 6e-4 off an initial one 1e4 below): the fractions done and left are
    computed directly, the linear form is ``start x_left + end x_done``, and the cosine
    form is anchored at the smaller endpoint with ``(cos(pi x) + 1) / 2 = sin(pi (1 - x)
    / 2)^2 = 1 - sin(pi x / 2)^2``.
    """
    done, left = (t - begin) / (end - begin), (end - t) / (end - begin)
    return anneal_fractions(done, left, start_value, end_value, kind)


def anneal_fractions(
    done: jax.Array, left: jax.Array, start_value: float, end_value: float, kind: str
) -> jax.Array:
    """``anneal`` from the fractions of the phase done and left (``x`` and ``1 - x``),
    for a caller that computes them more precisely than ``anneal`` can."""
    if kind == "linear":
        return start_value * left + end_value * done
    # rising: anchored at the start (traced values, which cannot choose, take the other)
    if not is_traced(start_value, end_value) and abs(start_value) <= abs(end_value):
        return start_value + (end_value - start_value) * half_cosine_left(done)
    return end_value + (start_value - end_value) * half_cosine_left(left)
