"""The options every ``keras.optimizers.Optimizer`` takes (``loss_scale_factor``,
``gradient_accumulation_steps``, ``clipnorm``, ``global_clipnorm``, ``clipvalue``,
``exclude_from_weight_decay``, ``use_ema``, ``ema_momentum``,
``ema_overwrite_frequency``), added by ``keras_optimizer`` to each optimizer function of
``gradtx.compat.keras`` and applied in Keras' order around the blocks it builds
(``Core``): the package's docstring says what each does."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, numerics, tree
from gradtx.compat._validate import is_zero
from gradtx.core import EmptyState, GradientTransformation, ScalarOrSchedule, named_chain
from gradtx.transforms.clipping import clip
from gradtx.transforms.decoupled_decay import add_decoupled_weight_decay
from gradtx.wrappers.accumulation import multi_steps
from gradtx.wrappers.averaging import copy_params


class Core(NamedTuple):
    """What an optimizer function builds before Keras' base options are applied."""

    blocks: list[tuple[str, GradientTransformation]]
    learning_rate: ScalarOrSchedule
    weight_decay: float | None


def core_chain(
    blocks: list[tuple[str, GradientTransformation]],
    learning_rate: ScalarOrSchedule,
    weight_decay: float | None,
) -> Core:
    """``blocks``, followed (by ``keras_optimizer``) by Keras' decoupled weight decay."""
    return Core(blocks, learning_rate, weight_decay)


def _check_learning_rate(name: str, learning_rate: Any) -> None:
    if not callable(learning_rate):
        check.non_negative(name, learning_rate)
    elif not _takes_one_argument(learning_rate):
        raise ValueError(
            f"learning_rate must be a number or a schedule step -> value, got "
            f"{learning_rate!r}, which cannot take the step as its one argument (Keras "
            f"calls a callable without arguments at each update; a jitted step would "
            f"read it once): pass lambda step: ..., or set the value between steps with "
            f"gtx.schedule_injection(kc.<optimizer>) and gtx.set_hyperparams"
        )


def _check_weight_decay(name: str, weight_decay: Any) -> None:
    if weight_decay is not None:
        check.non_negative(name, weight_decay)


# Every argument of the optimizer functions, checked under its Keras name before a
# gradtx block sees it (the blocks name theirs b1, decay, eps). Keras itself checks
# only momentum and ema_momentum; these are the ranges its formulas are meant for.
_ARGUMENT_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "learning_rate": _check_learning_rate,
    "weight_decay": _check_weight_decay,
    "momentum": check.unit_interval,
    "rho": check.unit_interval,
    "beta_1": check.unit_interval,
    "beta_2": check.unit_interval,
    "epsilon": check.non_negative,
    "initial_accumulator_value": check.non_negative,
    "nesterov": check.boolean,
    "amsgrad": check.boolean,
    "centered": check.boolean,
}


def _takes_one_argument(function: Callable) -> bool:
    try:
        inspect.signature(function).bind(0)
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (a builtin): assume a schedule
        return True
    return True


def _unscale(loss_scale_factor: float) -> GradientTransformation:
    """Keras' ``loss_scale_factor``: the gradients divided by it, before anything else."""

    def leaf(g):
        return g / loss_scale_factor

    def update(updates, state, params=None, **extra):
        del params, extra
        # un-jitted, in the eager kernels (tree.map_leaves), not a division per leaf
        return tree.map_leaves(leaf, updates), state

    return GradientTransformation(lambda params: EmptyState(), update)


def _clip_each_norm(clipnorm: float) -> GradientTransformation:
    """Keras' ``clipnorm``: each gradient array rescaled to an l2 norm of at most
    ``clipnorm``, ``g * clipnorm / max(||g||, clipnorm)`` (its operations, in order)."""

    def leaf(g, g_squared):
        squares = jnp.sum(g_squared, keepdims=True)
        positive = squares > 0
        norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), squares)
        return g * clipnorm / jnp.maximum(norm, clipnorm)

    def update(updates, state, params=None, **extra):
        del params, extra
        # Un-jitted, in the eager kernels (tree.map_leaves): op by op it was nine
        # operations per leaf (9,000 an update on 1,000 leaves). The squares come from a
        # kernel of their own: fused into the sum, XLA contracts g * g + s into one
        # rounding, which op by op (and Keras' own eager ops) do not.
        return tree.map_leaves(leaf, updates, tree.map_leaves(_square, updates)), state

    return GradientTransformation(lambda params: EmptyState(), update)


def _square(g: jax.Array) -> jax.Array:
    return jnp.square(g)  # a plain function: the eager kernels compile only those


def _sum_row(g_squared: jax.Array) -> jax.Array:
    return jnp.sum(g_squared).reshape(1)


def _clip_global_norm(global_clipnorm: float) -> GradientTransformation:
    """Keras' ``global_clipnorm``: ``g * clip * min(1 / n, 1 / clip)`` with n the norm of
    all the gradients (NaN everywhere when n is not finite), as Keras computes it."""

    def update(updates, state, params=None, **extra):
        del params, extra
        leaves = jax.tree.leaves(updates)
        if not leaves:
            return updates, state
        # Keras' jnp.sum of the stacked squared norms: each leaf's as a [1] vector (its
        # stacked row) from the eager kernels, one concatenate, then that same sum (op
        # by op it was three operations per leaf). The squares come from a kernel of
        # their own, as in _clip_each_norm: the numbers of op-by-op execution.
        squares = tree.map_leaves(_square, updates)
        rows = jax.tree.leaves(tree.map_leaves(_sum_row, squares))
        norm = jnp.sqrt(jnp.sum(jnp.concatenate(rows)))
        factor = global_clipnorm * jnp.minimum(1.0 / norm, 1.0 / global_clipnorm)
        factor = factor + (norm - norm)

        def scaled(g):
            return g * factor.astype(g.dtype)

        return tree.map_leaves(scaled, updates), state

    return GradientTransformation(lambda params: EmptyState(), update)


def _check_patterns(patterns: Any) -> None:
    """``exclude_from_weight_decay``: a list (or tuple) of name patterns, strings."""
    if not isinstance(patterns, list | tuple | set | frozenset) or not all(
        isinstance(p, str) for p in patterns
    ):
        raise ValueError(
            f"exclude_from_weight_decay must be a list of name patterns (strings), got {patterns!r}"
        )


def _is_default_ema_momentum(value: Any) -> bool:
    """``ema_momentum`` at Keras' default 0.99 (as ``schedule_injection`` hands it over
    too: a float32 array, traced inside ``jit``, where it cannot be read)."""
    if isinstance(value, jax.core.Tracer):
        return True
    try:
        return bool(np.float32(np.asarray(value, dtype=float)) == np.float32(0.99))
    except (TypeError, ValueError):
        return False


def _excluded(patterns: Any) -> Any:
    """The weight-decay mask of Keras' ``exclude_from_weight_decay(var_names=...)``:
    False for the leaves whose path (``"['dense']['bias']"``) a pattern is found in."""
    _check_patterns(patterns)
    compiled = [re.compile(pattern) for pattern in patterns]

    def mask(params):
        def keep(path, leaf):
            del leaf
            name = jax.tree_util.keystr(path)
            return not any(regex.search(name) for regex in compiled)

        return jax.tree_util.tree_map_with_path(keep, params)

    return mask


class KerasEmaState(NamedTuple):
    """The state of Keras' ``use_ema`` option.

    Attributes:
        count: int32 scalar, updates made so far, saturating at 2**31 - 1 (Keras'
            ``iterations``); calls so far with ``gradient_accumulation_steps`` (Keras'
            ``iteration`` variable).
        average: the moving average of the params, a tree like the params in their
            dtypes, initially the params.

    ``exact_fields`` names the fields that ``quantized_state`` keeps unquantized
    (a copy of the params: 8-bit rounding would move the params).
    """

    count: jax.Array
    average: Any

    exact_fields = ("average",)  # a copy of the params: quantized_state keeps it


def _keras_ema(
    momentum: float, overwrite_frequency: int | None, calls_per_update: int = 1
) -> GradientTransformation:
    """Keras' ``use_ema``: after each update ``average = p`` at the first one, then
    ``momentum * average + (1 - momentum) * p``; with ``ema_overwrite_frequency=N`` the
    params are set to the average after every N-th update (this update moves them
    there, up to the rounding of ``average - p`` added back to ``p``).

    With ``calls_per_update=k`` (Keras' ``gradient_accumulation_steps``) it sits outside
    ``multi_steps`` and moves at every call, as Keras' does, its count counting calls:
    Keras reads ``iterations``, the updates before the call (``count // k``), so the
    average is ``p`` through the first update's call and every later call (updating or
    not) blends, and the params are set to the average at every call while ``count //
    k + 1`` is a multiple of N."""

    def init(params):
        if params is None:
            raise ValueError("use_ema needs the parameters: call init(params)")
        return KerasEmaState(jnp.zeros([], jnp.int32), copy_params(params))

    def update(updates, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError("use_ema needs the parameters: call update(updates, state, params)")
        check.state_of("use_ema", state, KerasEmaState)
        iterations = state.count // calls_per_update  # Keras' updates before this call
        first = iterations == 0

        def average(u, p, a):
            new = (p + u).astype(p.dtype)  # the variable after Keras' update step
            weight = jnp.where(first, 0.0, momentum).astype(p.dtype)
            return weight * a + (1 - weight) * new

        # map_unzip checks every leaf's shape against the update's (a tree.map broadcast a
        # parameter of another shape into the average)
        (averages,) = tree.map_unzip(
            average, updates, params, state.average, outputs=1, names=("the params",)
        )
        if overwrite_frequency is not None:
            overwrite = (iterations + 1) % overwrite_frequency == 0

            def moved(u, p, a):
                return jnp.where(overwrite, (a - p).astype(u.dtype), u)

            (updates,) = tree.map_unzip(
                moved, updates, params, averages, outputs=1, names=("the params",)
            )
        return updates, KerasEmaState(numerics.safe_increment(state.count), averages)

    return GradientTransformation(init, update)


def _at_update_steps(learning_rate: ScalarOrSchedule, steps: int) -> ScalarOrSchedule:
    """With ``gradient_accumulation_steps=k``, Keras evaluates its schedule at the micro
    step count: real update s uses ``lr(k s + k - 1)``."""
    if not callable(learning_rate):
        return learning_rate
    return lambda count: learning_rate(steps * count + (steps - 1))


_KERAS_OPTIONS = (
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "loss_scale_factor",
    "gradient_accumulation_steps",
    "exclude_from_weight_decay",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
)
_OPTION_DEFAULTS = {"use_ema": False, "ema_momentum": 0.99}


def keras_optimizer(build: Callable[..., Core]) -> Callable[..., GradientTransformation]:
    """Adds the options of ``keras.optimizers.Optimizer`` to an optimizer function.

    In Keras' order: the gradients are divided by ``loss_scale_factor``; with
    ``gradient_accumulation_steps=k`` their mean over k calls goes to a real update
    every k-th call (``multi_steps``; the learning-rate schedule, weight decay's
    included, reads the micro step count, the bias corrections the real one); then
    one clipping (``clipnorm`` per array, ``global_clipnorm``, or ``clipvalue``), the
    optimizer, and the decoupled weight decay, which skips the leaves whose path a
    pattern of ``exclude_from_weight_decay`` is found in.
    """
    signature = inspect.signature(build)

    @functools.wraps(build)
    def factory(
        *args: Any,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        exclude_from_weight_decay: Sequence[str] | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        **kwargs: Any,
    ) -> GradientTransformation:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        for name, value in arguments.items():
            _ARGUMENT_CHECKS[name](name, value)
        check.boolean("use_ema", use_ema)
        clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        given = {name: value for name, value in clips.items() if value is not None}
        if len(given) > 1:
            raise ValueError(
                f"only one of clipnorm, clipvalue and global_clipnorm can be set (as in "
                f"Keras), got {given}"
            )
        for name, value in given.items():
            check.non_negative(name, value, allow_inf=name == "clipvalue")
        if loss_scale_factor is not None:
            check.positive("loss_scale_factor", loss_scale_factor)
        steps = gradient_accumulation_steps
        if steps is not None:
            steps = check.positive_int("gradient_accumulation_steps", steps)
            if steps < 2:
                raise ValueError(
                    f"gradient_accumulation_steps must be an integer >= 2 (as in Keras), "
                    f"got {steps!r}"
                )
        if exclude_from_weight_decay is not None:
            _check_patterns(exclude_from_weight_decay)
        for name, value, unset in (
            ("ema_overwrite_frequency", ema_overwrite_frequency, ema_overwrite_frequency is None),
            ("ema_momentum", ema_momentum, _is_default_ema_momentum(ema_momentum)),
        ):
            if not use_ema and not unset:
                raise ValueError(
                    f"{name}={value!r} needs use_ema=True "
                    f"(Keras ignores it without; here it would do nothing)"
                )
        if use_ema:
            check.in_range("ema_momentum", ema_momentum, 0.0, 1.0)
            if ema_overwrite_frequency is not None:
                ema_overwrite_frequency = check.positive_int(
                    "ema_overwrite_frequency", ema_overwrite_frequency
                )
        if steps is not None:
            arguments["learning_rate"] = _at_update_steps(arguments["learning_rate"], steps)
        core = build(**arguments)
        blocks = list(core.blocks)
        decayed = core.weight_decay is not None and not is_zero(core.weight_decay)
        if exclude_from_weight_decay is not None and not decayed:
            raise ValueError(
                f"exclude_from_weight_decay={exclude_from_weight_decay!r} needs a "
                f"weight_decay > 0, got weight_decay={core.weight_decay!r}"
            )
        if decayed:
            patterns = exclude_from_weight_decay
            mask = None if patterns is None else _excluded(patterns)
            decay = add_decoupled_weight_decay(core.weight_decay, core.learning_rate, mask)
            blocks.append(("weight_decay", decay))
        # 0 switches a clipping off, as in Keras (an injected value, an array, stays on)
        if clipnorm is not None and not is_zero(clipnorm):
            blocks.insert(0, ("clipnorm", _clip_each_norm(clipnorm)))
        elif global_clipnorm is not None and not is_zero(global_clipnorm):
            blocks.insert(0, ("global_clipnorm", _clip_global_norm(global_clipnorm)))
        elif clipvalue is not None and not is_zero(clipvalue):
            blocks.insert(0, ("clipvalue", clip(clipvalue)))
        if use_ema and steps is None:
            blocks.append(("ema", _keras_ema(ema_momentum, ema_overwrite_frequency)))
        tx = named_chain(*blocks)
        if steps is not None:
            tx = multi_steps(tx, steps)
            if use_ema:  # Keras' average moves at every call, not only at updates
                ema = _keras_ema(ema_momentum, ema_overwrite_frequency, steps)
                tx = named_chain(("optimizer", tx), ("ema", ema))
        if loss_scale_factor is not None:
            tx = named_chain(("loss_scale", _unscale(loss_scale_factor)), ("optimizer", tx))
        return tx

    options = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=_OPTION_DEFAULTS.get(name))
        for name in _KERAS_OPTIONS
    ]
    factory.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *options],
        return_annotation=GradientTransformation,
    )
    return factory
