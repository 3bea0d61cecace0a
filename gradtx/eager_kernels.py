"""Compiled kernels of eager updates: outside any trace a transform's per-leaf function
runs over up to 32 leaves of one signature in one jitted call, not operation by
operation and leaf by leaf (``tree.COMPILE_EAGER_LEAF_FUNCTIONS``). A kernel is cached
by the function's code and the non-array values of its closure; the closure's arrays are
its arguments, so one kernel serves every step."""

from __future__ import annotations

import math
import operator
import threading
import types
from collections.abc import Callable, Hashable
from typing import Any

import jax
import numpy as np

from gradtx.folds import folded_fn


class EagerKernels:
    """The compiled per-leaf kernels of eager updates (``tree.COMPILE_EAGER_LEAF_FUNCTIONS``).

    A kernel is keyed by the per-leaf function's code and the values of its closure that
    are not arrays or NumPy scalars (``_KERNEL_ARGUMENTS``), each with its type (so
    ``1``, ``1.0`` and ``True`` are different keys). One call of a kernel runs up to
    ``leaves_per_call`` leaves of one signature (shapes, dtypes, static flags): an eager
    update of many small leaves costs a few dispatches, not one per leaf. Eager updates
    may run in several threads at once: ``lock`` guards every change to ``kernels`` and
    ``waiting`` (two threads evicting the oldest kernel together would otherwise delete
    one key twice, a KeyError in an update).
    """

    max_kernels = 512  # oldest dropped first
    # Keys of one code seen once, waiting for the second sight that compiles them; the
    # oldest is forgotten past this many (a closure value new at every call is never
    # seen twice: its code runs op by op, and remembers no more than these).
    max_keys_per_code = 16
    # Kernels of one code, the oldest dropped past this many: a sweep builds a new
    # optimizer (new Python-float hyperparameters, so new keys) per trial, and each
    # kernel holds its compiled programs (~0.75 MB each on XLA:CPU).
    max_kernels_per_code = 16
    # Kernels of one code compiled but not yet called again: a closure value new at every
    # update and seen twice in it (one transform twice in a chain or a partition, with a
    # Python float from the step) would otherwise compile a kernel used once per update.
    max_unused_kernels_per_code = 2
    leaves_per_call = 32

    def __init__(self) -> None:
        self.kernels: dict[Hashable, Callable[..., list]] = {}
        self.seen_once: set[Hashable] = set()
        # code -> its keys in seen_once, oldest first
        self.waiting: dict[Any, dict[Hashable, None]] = {}
        self.keys_per_code: dict[Any, int] = {}  # code -> keys seen (a record, no limit)
        self.op_by_op_codes: set[Any] = set()  # code that reads values in Python
        self.unused: dict[Any, set[Hashable]] = {}  # code -> keys of kernels not reused yet
        self.joined: dict[tuple, tuple] = {}  # a joined signature's one tuple, as its code
        self.lock = threading.Lock()


KERNELS = EagerKernels()


def _function_key(fn: Callable, floats: bool = False) -> tuple[tuple, Any, tuple, list] | None:
    """A per-leaf function as part of an eager kernel's key: ``(key, closure_def,
    dynamic, dynamic_values)``, its closure's arrays and NumPy scalars (and, with
    ``floats``, Python floats) at positions ``dynamic`` of the flattened closure being
    the kernel's arguments; None where it cannot be cached (see
    ``tree.COMPILE_EAGER_LEAF_FUNCTIONS``)."""
    if type(fn) is not types.FunctionType:
        # A bound method, functools.partial, ufunc or callable object: its code alone
        # (rebuilt below from code and closure) would lose the bound values.
        return None
    code = fn.__code__
    if code in KERNELS.op_by_op_codes:
        return None
    try:
        cell_contents = [cell.cell_contents for cell in fn.__closure__ or ()]
    except ValueError:  # a cell not yet assigned
        return None
    values, closure_def = jax.tree.flatten(cell_contents)
    # NumPy scalars too: arithmetic on a state restored to the host (jax.device_get,
    # pickle) gives them where the state on device gives arrays (-lr, count == 0); as
    # constants of the key they would compile a kernel per value, unlike those arrays.
    dynamic = tuple(
        i
        for i, x in enumerate(values)
        # (but 1 and -1: XLA compiles a product by those constants as the identity and a
        # negation, which keep subnormals and flip a NaN's sign where a product does not)
        if isinstance(x, _KERNEL_ARGUMENTS) or (floats and type(x) is float and abs(x) != 1)
    )
    static = tuple(_static_key(x) for i, x in enumerate(values) if i not in dynamic)
    key = (code, closure_def, dynamic, static, fn.__defaults__, fn.__kwdefaults__)
    return key, closure_def, dynamic, [values[i] for i in dynamic]


def eager_kernel(fn: Callable[..., tuple], folds: tuple | None = None) -> Callable[..., list]:
    """A function of the per-leaf argument tuples and their ``group_by_signature``
    returning ``fn``'s results in leaf order: through a cached compiled kernel whose
    closure arrays are arguments, or ``fn`` leaf by leaf when it cannot be cached (see
    ``tree.COMPILE_EAGER_LEAF_FUNCTIONS``). ``folds``: ``(arity, before, after)`` of a chain's
    elementwise blocks run with ``fn`` (``folds.folded_fn``; ``tree.FOLD_EAGER_SCALING``), each
    argument tuple holding their extra leaves after ``fn``'s ``arity`` arguments."""
    if folds is None:
        fns, layout, leaf_fn = [fn], None, fn
    else:
        arity, before, after = folds
        fns = [fn, *([before[0]] if before is not None else []), *(f for f, _ in after)]
        layout = (arity, None if before is None else before[1], tuple(n for _, n in after))
        leaf_fn = folded_fn(fn, arity, before, after)
    op_by_op = lambda arg_tuples, groups=None: [leaf_fn(*args) for args in arg_tuples]  # noqa: E731
    # The folds' Python floats are arguments: a schedule's value, new at every update,
    # would otherwise make a new kernel key each time, and the block's kernel with the
    # folds would never compile (the block alone did). As a constant or an argument a
    # float multiplies or adds the same way (XLA merges no product of the folds' with
    # another: see folds.updates_from_first_map)
    parts = [_function_key(f, floats=k > 0) for k, f in enumerate(fns)]
    if any(part is None for part in parts):
        return op_by_op
    code = fn.__code__
    if layout is not None:
        # the joined functions' budget of keys and kernels is their own, not the block's
        # (a third joined variant of one block was left op by op at its second call)
        joined = (code, tuple(f.__code__ for f in fns[1:]), layout)
        code = KERNELS.joined.setdefault(joined, joined)
    key = (code, *parts[0][0][1:], tuple(part[0] for part in parts[1:]), layout)
    try:
        kernel = KERNELS.kernels.get(key)
    except TypeError:  # an unhashable value in the closure
        return op_by_op
    if kernel is None:
        if key not in KERNELS.seen_once:
            with KERNELS.lock:
                KERNELS.seen_once.add(key)
                waiting = KERNELS.waiting.setdefault(code, {})
                waiting[key] = None
                if len(waiting) > KERNELS.max_keys_per_code:
                    forgotten = next(iter(waiting))
                    del waiting[forgotten]
                    KERNELS.seen_once.discard(forgotten)
            KERNELS.keys_per_code[code] = KERNELS.keys_per_code.get(code, 0) + 1
            return op_by_op
        if len(KERNELS.unused.get(code, ())) >= KERNELS.max_unused_kernels_per_code:
            return op_by_op  # compiled at the next call, once those kernels are reused
        # keep_unused: a leaf's output that reads no argument (the zeros of a frozen leaf)
        # would otherwise run on the default device alone: gathered there from a leaf
        # sharded over Auto mesh axes (a pmap output), an error on Explicit ones
        kernel = jax.jit(
            _leaves_kernel(fns, [part[1:3] for part in parts], layout),
            static_argnums=1,
            keep_unused=True,
        )
        with KERNELS.lock:
            KERNELS.seen_once.discard(key)
            KERNELS.waiting.get(code, {}).pop(key, None)
            same_code = [k for k in KERNELS.kernels if k[0] is code]
            if len(same_code) >= KERNELS.max_kernels_per_code:
                _drop_kernel(same_code[0])
            if len(KERNELS.kernels) >= KERNELS.max_kernels:
                _drop_kernel(next(iter(KERNELS.kernels)))
            KERNELS.kernels[key] = kernel
            KERNELS.unused.setdefault(code, set()).add(key)
    elif key in KERNELS.unused.get(code, ()):
        with KERNELS.lock:
            KERNELS.unused[code].discard(key)
    dynamic_values = tuple(value for part in parts for value in part[3])

    def run(arg_tuples, groups):
        if groups is None:  # an unhashable non-array argument
            return op_by_op(arg_tuples)
        results = [None] * len(arg_tuples)
        step = KERNELS.leaves_per_call
        try:
            for statics, indices in groups:
                only_arrays = all(s is None for s in statics)
                for start in range(0, len(indices), step):
                    chunk = indices[start : start + step]
                    if only_arrays:
                        arrays = [arg_tuples[i] for i in chunk]
                    else:
                        arrays = [_arrays(arg_tuples[i], statics) for i in chunk]
                    for i, result in zip(
                        chunk, kernel(dynamic_values, statics, arrays), strict=True
                    ):
                        results[i] = result
        except NEEDS_CONCRETE_VALUES:
            # Per-leaf code that reads values in Python (``float(x)``, ``if x > 0``) runs
            # eagerly but cannot be compiled: leave that code op by op from now on.
            with KERNELS.lock:
                KERNELS.kernels.pop(key, None)
                KERNELS.unused.get(code, set()).discard(key)
                KERNELS.op_by_op_codes.update(f.__code__ for f in fns)
            return op_by_op(arg_tuples)
        return results

    return run


def _drop_kernel(key: Hashable) -> None:
    """Removes a kernel from ``KERNELS`` (its caller holds ``KERNELS.lock``)."""
    del KERNELS.kernels[key]
    KERNELS.unused.get(key[0], set()).discard(key)


_KERNEL_ARGUMENTS = (jax.Array, np.ndarray, np.number, np.bool_)
"""The closure values an eager kernel takes as arguments; the others are part of its key."""


def _static_key(x: Any) -> Hashable:
    """A closure value as part of a kernel's key: with its type (``1``, ``1.0`` and
    ``True`` are equal in Python) and, for floats, its signs (``0.0 == -0.0``, and a
    kernel compiled with one would return the other's zeros)."""
    if isinstance(x, float | np.floating):
        return type(x), x, math.copysign(1.0, x)
    if isinstance(x, complex | np.complexfloating):
        return type(x), x, math.copysign(1.0, x.real), math.copysign(1.0, x.imag)
    return type(x), x


NEEDS_CONCRETE_VALUES = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)
"""The errors of traced code that reads array values in Python (``float(x)``, ``if x >
0``): code that runs eagerly but cannot compile. The eager kernels catch them and go
back to running such code op by op."""


def group_by_signature(arg_tuples: list[tuple], own: int | None = None) -> Any:
    """Leaf indices grouped by the abstract values (shape, dtype, weak type) and
    shardings of their array arguments and the values of the others (static per-leaf
    flags), each group with its statics: for every argument, ``None`` for an array or
    ``(value, type)`` for a static value (the type keeps ``1`` and ``True`` apart in
    jit's cache). The groups come in the order of their first leaves. ``None`` if a
    static value cannot be hashed. With ``own``: the groups and whether the arguments
    after the first ``own`` split them (the groups of the first ``own`` arguments are
    fewer), ``(None, True)`` for ``None``."""
    # An array holds its abstract value and sharding, and the arrays of a tree share a
    # few of those objects (each output position of a kernel has its own sharding
    # object): they are read one argument position at a time in C loops (``map``) and
    # numbered by id, each distinct object hashed and compared by value once (Python
    # __hash__/__eq__), not once per leaf: per leaf in Python this cost ~2.5 ms of an
    # eager chain update on 1,000 leaves. The ids are those of live objects, so no two
    # can be equal: ``arg_tuples`` holds the arguments, and a concrete array holds its
    # aval and sharding. A position holding other values (static flags, NumPy arrays,
    # tracers, whose aval may be built anew at each read) is numbered by value per leaf.
    if not arg_tuples:
        return [] if own is None else ([], False)
    by_value: dict[Hashable, int] = {}  # avals, shardings, signatures -> their numbers
    columns = []  # for each argument position, a number per leaf
    own_columns = None
    for position, column in enumerate(zip(*arg_tuples, strict=True)):
        if position == own:
            own_columns = len(columns)
        try:
            parts = (list(map(_AVAL, column)), list(map(_SHARDING, column)))
        except AttributeError:  # not only concrete arrays
            try:
                numbers = [by_value.setdefault(_signature(x), len(by_value)) for x in column]
            except TypeError:  # an unhashable static value
                return None if own is None else (None, True)
            if len(set(numbers)) > 1:  # a position of one value splits no leaves
                columns.append(numbers)
            continue
        for objects in parts:
            ids = list(map(id, objects))
            distinct = dict(zip(ids, objects, strict=True))
            number = {i: by_value.setdefault(x, len(by_value)) for i, x in distinct.items()}
            if len(set(number.values())) > 1:
                columns.append(list(map(number.__getitem__, ids)))
    by_key: dict[tuple, list[int]] = {}
    keys = list(zip(*columns, strict=True))
    if not columns:  # one signature: no loop over the leaves in Python
        by_key[()] = list(range(len(arg_tuples)))
    elif len(set(keys)) == 1:
        by_key[keys[0]] = list(range(len(keys)))
    else:
        for i, key in enumerate(keys):
            by_key.setdefault(key, []).append(i)
    groups = []
    for indices in by_key.values():
        statics = tuple(None if is_array(x) else (x, type(x)) for x in arg_tuples[indices[0]])
        groups.append((statics, indices))
    if own is None:
        return groups
    if own_columns is None:  # no argument after the first ``own``
        return groups, False
    return groups, len({key[:own_columns] for key in by_key}) != len(groups)


_AVAL = operator.attrgetter("aval")
_SHARDING = operator.attrgetter("sharding")


def _signature(x: Any) -> Hashable:
    if isinstance(x, jax.core.Tracer):  # a state traced while the updates are not
        return x.aval
    if isinstance(x, jax.Array):
        # the sharding too: one jitted call cannot take arrays committed to different
        # devices (leaves placed on devices by hand), and a kernel compiles per sharding
        return x.aval, x.sharding
    if isinstance(x, np.ndarray):
        return (np.ndarray, x.shape, x.dtype)
    return (type(x), x)


def is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def _arrays(args: tuple, statics: tuple) -> tuple:
    return tuple(x for x, s in zip(args, statics, strict=True) if s is None)


def _leaves_kernel(fns: list[Callable], closures: list[tuple], layout: Any) -> Callable[..., list]:
    """``fns[0]`` (with the folds of ``layout``, ``eager_kernel``) rebuilt as
    ``g(closure_arrays, statics, leaves) -> [fn(*args) for each leaf]``: the same code,
    each function's closure arrays (``closures``: its ``(closure_def, dynamic)``) taken
    in turn from the first argument and every other closure value kept (the arrays are
    not kept: the kernel outlives this call, and they may be large); ``leaves`` holds
    each leaf's array arguments and ``statics`` the others (``(value, type)``, or
    ``None`` where an array goes)."""
    rebuilders = [_rebuilder(f, *closure) for f, closure in zip(fns, closures, strict=True)]

    def kernel(dynamic_values, statics, leaves):
        rebuilt, start = [], 0
        for rebuild, (_, dynamic) in zip(rebuilders, closures, strict=True):
            rebuilt.append(rebuild(dynamic_values[start : start + len(dynamic)]))
            start += len(dynamic)
        leaf_fn = rebuilt[0]
        if layout is not None:
            arity, before_count, after_counts = layout
            folds = iter(rebuilt[1:])
            before = None if before_count is None else (next(folds), before_count)
            after = [(next(folds), count) for count in after_counts]
            leaf_fn = folded_fn(leaf_fn, arity, before, after)
        results = []
        for arrays in leaves:
            arrays = iter(arrays)
            results.append(leaf_fn(*[next(arrays) if s is None else s[0] for s in statics]))
        return results

    return kernel


def _rebuilder(fn: Callable, closure_def: Any, dynamic: tuple[int, ...]) -> Callable:
    """A function of ``fn``'s closure arrays (at positions ``dynamic`` of its flattened
    closure) returning ``fn`` with them: its code, its other closure values."""
    values = jax.tree.leaves([cell.cell_contents for cell in fn.__closure__ or ()])
    values = [None if i in dynamic else value for i, value in enumerate(values)]
    code, globals_, name, defaults, kwdefaults = (
        fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__kwdefaults__
    )  # fmt: skip

    def rebuild(dynamic_values):
        merged = list(values)
        for position, value in zip(dynamic, dynamic_values, strict=True):
            merged[position] = value
        cells = tuple(types.CellType(c) for c in jax.tree.unflatten(closure_def, merged))
        rebuilt_fn = types.FunctionType(code, globals_, name, defaults, cells or None)
        rebuilt_fn.__kwdefaults__ = kwdefaults
        return rebuilt_fn

    return rebuild
