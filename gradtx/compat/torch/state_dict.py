"""``load_state_dict``: a PyTorch optimizer's ``state_dict()`` as the gradtx state of a chain.

Parameters are matched by name (PyTorch's ``param_names``, when they are the key paths of
the params) or else by order; each PyTorch buffer fills the field of the gradtx state
that holds the same quantity, and every step counter takes PyTorch's ``step``. A buffer
that the chain has no field for is an error, not dropped: it means the PyTorch optimizer
had an option (``amsgrad``, ``centered``, ``momentum``) that ``tx`` lacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import check, numerics
from gradtx.core import GradientTransformation, Params
from gradtx.schedules.injection import InjectState
from gradtx.schedules.plateau import ReduceOnPlateauState
from gradtx.transforms.adam import (
    ScaleByAdamaxState,
    ScaleByAdamState,
    ScaleByAmsgradState,
)
from gradtx.transforms.adaptive import (
    ScaleByAdadeltaState,
    ScaleByRmsState,
    ScaleByRpropState,
    ScaleByRssState,
    ScaleByStddevState,
)
from gradtx.transforms.averaging_sgd import AveragedSgdState
from gradtx.transforms.decoupled_decay import DecoupledWeightDecayState
from gradtx.transforms.momentum import DampenedTraceState, TraceState
from gradtx.transforms.nadam_schedule import ScaleByNadamScheduleState
from gradtx.transforms.noise import AddNoiseState
from gradtx.transforms.rectified import ScaleByRadamState
from gradtx.transforms.regularize import AddDecayedWeightsState, ProximalL1State
from gradtx.transforms.scaling import ScaleByScheduleState

# gradtx state type -> {field: PyTorch state key}; "step" fields take PyTorch's step.
_FIELDS: dict[type, dict[str, str]] = {
    ScaleByAdamState: {"mu": "exp_avg", "nu": "exp_avg_sq"},
    ScaleByAmsgradState: {"mu": "exp_avg", "nu": "exp_avg_sq", "nu_max": "max_exp_avg_sq"},
    ScaleByNadamScheduleState: {"mu": "exp_avg", "nu": "exp_avg_sq"},
    ScaleByRadamState: {"mu": "exp_avg", "nu": "exp_avg_sq"},
    ScaleByAdamaxState: {"mu": "exp_avg", "nu": "exp_inf"},
    ScaleByRssState: {"sum_of_squares": "sum"},
    ScaleByRmsState: {"nu": "square_avg"},
    ScaleByStddevState: {"nu": "square_avg", "mu": "grad_avg"},
    ScaleByAdadeltaState: {"e_g": "square_avg", "e_x": "acc_delta"},
    ScaleByRpropState: {"step_sizes": "step_size", "previous_sign": "prev"},
    AveragedSgdState: {"average": "ax"},
    TraceState: {"trace": "momentum_buffer"},
    DampenedTraceState: {"trace": "momentum_buffer"},
}
# States whose only PyTorch counterpart is the step: the counters that schedules read.
_COUNTED = (
    ScaleByScheduleState,
    AddDecayedWeightsState,
    DecoupledWeightDecayState,
    ProximalL1State,
    AddNoiseState,
    InjectState,
)

# PyTorch keys with no gradtx field because gradtx derives them from the step (ASGD's
# eta and mu), and the one read separately (NAdam's mu_product).
_DERIVED = {"step", "eta", "mu"}


def _to_numpy(value: Any) -> np.ndarray:
    """A copy: ``Tensor.numpy()`` shares the tensor's memory, and ``jnp.asarray`` of a
    NumPy array may too (zero-copy on CPU), so a later PyTorch step would change the
    gradtx state in place. A bfloat16 tensor (a bfloat16 run's moments), which
    ``Tensor.numpy()`` refuses, is widened to float32 first: exact, and cast back to the
    parameter's dtype where it is stored."""
    if hasattr(value, "detach"):  # a torch.Tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            value = value.float()
        value = value.numpy()
    return np.array(value, copy=True)


def _per_parameter_states(
    torch_state_dict: Mapping[str, Any],
) -> tuple[list[Mapping[str, Any]], list[str] | None]:
    """PyTorch's per-parameter states in the order of its parameters, and their names
    (``param_names``, recorded when the optimizer was built from ``named_parameters()``)
    or None."""
    if "state" not in torch_state_dict:
        raise ValueError("torch_state_dict must be an optimizer state_dict() with a 'state' entry")
    states = {int(k): v for k, v in torch_state_dict["state"].items()}
    groups = torch_state_dict.get("param_groups")
    stateless: set[int] = set()
    if groups:
        order = [int(i) for group in groups for i in group["params"]]
        names = [name for group in groups for name in group.get("param_names", [])]
        # An SGD group without momentum keeps no state at all, after any number of steps:
        # its parameters' states read as PyTorch 1.x recorded them, a None buffer, not
        # as parameters that have not been stepped (another group's have)
        stateless = {
            int(i)
            for group in groups
            if "dampening" in group and group.get("momentum") == 0
            for i in group["params"]
        }
    else:
        order, names = sorted(states), []
    per_param = [
        states.get(i) or ({"momentum_buffer": None} if i in stateless else {}) for i in order
    ]
    return per_param, names if len(names) == len(order) else None


def _is_sgd(torch_state_dict: Mapping[str, Any]) -> bool:
    """Whether the state is SGD's, the one PyTorch optimizer that keeps no step (its
    param groups, and only its, hold ``dampening``)."""
    groups = torch_state_dict.get("param_groups") or []
    return bool(groups) and all("dampening" in group for group in groups)


def _reads_a_schedule(state: Any) -> bool:
    """Whether a state holds a counter that only a schedule gives it (a learning rate,
    weight decay, L1 strength as a schedule, or noise, annealed by its step)."""
    scheduled = (ScaleByScheduleState, AddDecayedWeightsState, ProximalL1State, AddNoiseState)
    nodes = jax.tree.leaves(state, is_leaf=lambda node: isinstance(node, scheduled))
    return any(isinstance(node, scheduled) for node in nodes)


def _leaf_name(path: tuple) -> str:
    """A leaf's key path as PyTorch names parameters: keys joined by dots."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def _in_leaf_order(
    per_param: list[Mapping[str, Any]], names: list[str] | None, params: Params
) -> list[Mapping[str, Any]]:
    """The per-parameter states in ``params``' leaf order: by name where PyTorch recorded
    names and they are exactly the leaves' key paths, else by position."""
    if names is None or len(set(names)) != len(names):
        return per_param
    leaf_names = [_leaf_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if sorted(leaf_names) != sorted(names):
        return per_param
    by_name = dict(zip(names, per_param, strict=True))
    return [by_name[name] for name in leaf_names]


_BY_ORDER = (
    " (parameters are matched by order: leaf i of params, in jax.tree.leaves order, is "
    "parameter i of the optimizer's param groups concatenated; build the groups from "
    "named parameters, {'params': [(name, p), ...]}, so that PyTorch records param_names "
    "matching the params' key paths, or pass params as a list in PyTorch's order)"
)


def _names_differ(names: list[str] | None, params: Params) -> str:
    """Which parameters a count mismatch is about, where PyTorch recorded names."""
    if names is None:
        return " (parameters are matched by order)"
    leaf_names = [_leaf_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    missing = [name for name in names if name not in leaf_names]
    extra = [name for name in leaf_names if name not in names]
    parts = []
    if missing:
        parts.append(f"PyTorch's parameters {missing[:5]} have no leaf of that key path")
    if extra:
        parts.append(f"the leaves {extra[:5]} are not among PyTorch's param_names")
    return ": " + "; ".join(parts) if parts else " (parameters are matched by order)"


def load_state_dict(
    tx: GradientTransformation,
    torch_state_dict: Mapping[str, Any],
    params: Params,
    *,
    step: int | None = None,
) -> Any:
    """The gradtx state of ``tx`` equivalent to a PyTorch optimizer's ``state_dict()``.

    ``tx`` is the ``gradtx.compat.torch`` optimizer matching the PyTorch one (same
    hyperparameters), ``params`` the parameters the run continues from. Parameters are
    matched by name when the optimizer was built from ``model.named_parameters()``
    (PyTorch then records ``param_names``) and those names are exactly the key paths of
    ``params`` joined by dots (``{"fc1": {"weight": w}}`` is ``fc1.weight``); otherwise
    by order: the i-th leaf of ``params`` (``jax.tree.leaves`` order, which sorts dict
    keys) is the i-th parameter of the PyTorch optimizer (its param groups
    concatenated), so build ``params`` in the optimizer's order (a list, say) when the
    names differ. Every moment
    buffer is copied (cast to the dtype gradtx keeps it in), and every step counter of
    the chain that schedules read (``schedule_injection``, schedules of the learning
    rate, weight decay, proximal L1 or noise) is set to PyTorch's ``step``; counters of
    other wrappers in the chain (``lookahead``, ``multi_steps``, ``ema``) keep their
    ``init`` value. ``tx`` may be a ``gtx.partition`` of optimizers, PyTorch's param
    groups with different hyperparameters. Tensors (bfloat16 ones included) or NumPy
    arrays are accepted; the complex buffers of a complex parameter are taken as their
    real and imaginary parts, the form the ``gradtx.compat.torch`` optimizers keep them
    in.
    Handles SGD, Adam, AdamW, Adagrad, RMSprop, Adadelta, Adamax, NAdam, RAdam, Rprop
    and ASGD states.

    Args:
        tx: the gradtx transformation the run continues with.
        torch_state_dict: ``optimizer.state_dict()`` (or the same structure of arrays).
        params: the parameters, as a pytree.
        step: the number of steps taken, for optimizers whose state keeps none (SGD);
            None (the default) takes PyTorch's ``step`` (for SGD: 0, and a ValueError
            where ``tx`` holds a schedule's counter, which would restart silently); an
            integer in [0, 2**31 - 1] (the counters are int32).

    Raises:
        ValueError: the number of parameters (naming those missing on either side where
            PyTorch recorded ``param_names``) or the shape of a buffer differs (naming
            the leaf, and saying how to match by name where it went by order), the
            PyTorch state lacks a buffer that ``tx`` needs or holds one that ``tx`` has
            no place for, or the parameters' steps differ (PyTorch counts steps per
            parameter, a parameter without a gradient is not stepped; gradtx keeps one
            count per transform), or an SGD state (which records no step) comes
            without ``step`` for a ``tx`` whose schedule reads one. A state saved before
            the first step (every parameter's state empty) gives ``tx``'s init state,
            with counters at ``step`` (default 0).

    Example:
        >>> import numpy as np
        >>> import jax.numpy as jnp
        >>> from gradtx.compat import torch as tc
        >>> torch_state = {"state": {0: {"step": 3.0, "exp_avg": np.ones(2),
        ...                              "exp_avg_sq": np.ones(2)}},
        ...                "param_groups": [{"params": [0]}]}
        >>> state = tc.load_state_dict(tc.adam(), torch_state, {"w": jnp.zeros(2)})
        >>> int(state["adam"].count), state["adam"].mu["w"].tolist()
        (3, [1.0, 1.0])
    """
    if step is not None:
        step = check.non_negative_int("step", step)
    leaves, treedef = jax.tree.flatten(params)
    per_param, names = _per_parameter_states(torch_state_dict)
    per_param = _in_leaf_order(per_param, names, params)
    leaf_names = [_leaf_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    by_name = (  # as _in_leaf_order matches them
        names is not None and len(set(names)) == len(names) and sorted(names) == sorted(leaf_names)
    )
    if len(per_param) != len(leaves):
        raise ValueError(
            f"the PyTorch state has {len(per_param)} parameters but params has "
            f"{len(leaves)} leaves{_names_differ(names, params)}"
        )
    # A parameter PyTorch has not stepped yet has an empty state: every one of them in a
    # checkpoint taken before the first step (tx's init state then), only some when a
    # parameter got no gradient (PyTorch steps it later, from its own step 0).
    fresh = not any(value is not None for s in per_param for value in s.values())
    unstepped = [i for i, s in enumerate(per_param) if not s]
    if unstepped and not fresh:
        stepped = next(i for i, s in enumerate(per_param) if s)
        raise ValueError(
            f"PyTorch has not stepped parameter {unstepped[0]} (its state is empty: no "
            f"gradient yet) but has stepped parameter {stepped}; gradtx keeps one step "
            f"count per transform, so such a state cannot continue on PyTorch's trajectory"
        )
    steps = [(i, float(_to_numpy(s["step"]))) for i, s in enumerate(per_param) if "step" in s]
    for index, value in steps:
        if value != steps[0][1]:
            raise ValueError(
                f"the PyTorch parameters have different steps (parameter {steps[0][0]}: "
                f"{steps[0][1]:g}, parameter {index}: {value:g}); gradtx keeps one step count "
                f"per transform, so such a state cannot continue on PyTorch's trajectory"
            )
    if step is None and steps:
        saved = steps[0][1]
        # PyTorch counts whole steps (in a float tensor); anything else is not a state
        # this run can continue from, and int32 is the counters' type here
        if not (saved.is_integer() and 0 <= saved <= numerics.INT32_MAX):
            raise ValueError(
                f"the PyTorch state's 'step' must be a whole number of steps in [0, "
                f"{numerics.INT32_MAX}], got {saved:g}"
            )
        step = int(saved)
    step_unknown = step is None and not steps and _is_sgd(torch_state_dict)
    if step is None:
        step = 0
    has_buffer = any("momentum_buffer" in s and s["momentum_buffer"] is not None for s in per_param)
    used: list[set[str]] = [set(_DERIVED) for _ in per_param]
    state = tx.init(params)
    if step_unknown and _reads_a_schedule(state):
        raise ValueError(
            "PyTorch's SGD records no step count, and tx reads one (a schedule of its "
            "learning rate, weight decay, L1 or noise): pass step=, the number of "
            "optimizer steps taken (scheduler.last_epoch for a scheduler stepped at "
            "every step; 0 for a state saved before the first step)"
        )

    def buffer(index: int, key: str) -> Any:
        value = per_param[index].get(key)
        if value is None:
            raise ValueError(
                f"the PyTorch state of parameter {index} has no {key!r}; is the "
                f"optimizer the one tx reproduces (same momentum, amsgrad, centered)?"
            )
        used[index].add(key)
        return value

    def field_tree(key: str, like: Any) -> Any:
        like_leaves = treedef.flatten_up_to(like)
        converted = []
        for index, leaf in enumerate(like_leaves):
            if leaf is None:  # a parameter another transform of a partition updates
                converted.append(None)
                continue
            if fresh:  # PyTorch creates its buffers at the first step, as tx.init does
                converted.append(leaf)
                continue
            if key == "momentum_buffer" and not has_buffer:
                array = np.zeros(leaf.shape)  # PyTorch creates the buffer on the first step
            else:
                array = _to_numpy(buffer(index, key))
            if np.iscomplexobj(array):  # the gradtx optimizers see it as PyTorch does,
                array = np.stack([array.real, array.imag], axis=-1)  # as view_as_real
            if key == "prev":
                array = np.sign(array)
            if array.shape != tuple(leaf.shape):
                raise ValueError(
                    f"shape mismatch for parameter {index} ({leaf_names[index]!r}): the "
                    f"PyTorch {key!r} has shape {list(array.shape)} but the parameter has "
                    f"{list(leaf.shape)}{'' if by_name else _BY_ORDER}"
                )
            converted.append(jnp.asarray(array, dtype=leaf.dtype))
        return treedef.unflatten(converted)

    def count_like(old: jax.Array, value: int) -> jax.Array:
        return jnp.asarray(value, old.dtype)

    def convert(node: Any) -> Any:
        if isinstance(node, InjectState):
            inner = convert_tree(node.inner_state)
            return node._replace(count=count_like(node.count, step), inner_state=inner)
        if isinstance(node, _COUNTED):
            return node._replace(count=count_like(node.count, step))
        fields = _FIELDS.get(type(node))
        if fields is None:
            return node
        new = {name: field_tree(key, getattr(node, name)) for name, key in fields.items()}
        if isinstance(node, DampenedTraceState):
            new["count"] = count_like(node.count, max(step, int(has_buffer)))
        elif "count" in node._fields:
            new["count"] = count_like(node.count, step)
        if isinstance(node, ScaleByNadamScheduleState) and not fresh:
            leaves = treedef.flatten_up_to(node.mu)
            index = next(i for i, leaf in enumerate(leaves) if leaf is not None)
            product = _to_numpy(buffer(index, "mu_product"))
            for i, leaf in enumerate(leaves):
                if leaf is not None:
                    used[i].add("mu_product")
            new["mu_product"] = jnp.asarray(product, node.mu_product.dtype)
        return node._replace(**new)

    def convert_tree(tree: Any) -> Any:
        return jax.tree.map(convert, tree, is_leaf=lambda x: isinstance(x, known))

    known = tuple(_FIELDS) + _COUNTED
    converted = convert_tree(state)
    for index, torch_state in enumerate(per_param):
        unused = sorted(k for k, v in torch_state.items() if v is not None and k not in used[index])
        if unused:
            raise ValueError(
                f"the PyTorch state of parameter {index} holds {unused}, which tx has no "
                f"place for; is the optimizer the one tx reproduces (same momentum, "
                f"amsgrad, centered)?"
            )
    return converted


_PLATEAU_KEYS = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch", "_last_lr")


def load_plateau_state(
    scheduler_state_dict: Mapping[str, Any], lr: float | Sequence[float]
) -> ReduceOnPlateauState:
    """The state of ``reduce_lr_on_plateau(lr, ...)`` equivalent to a PyTorch
    ``ReduceLROnPlateau.state_dict()``.

    PyTorch keeps a plateau's progress in the scheduler, not the optimizer, so
    ``load_state_dict`` starts a chained ``reduce_lr_on_plateau`` afresh; put this state
    in its place. The scale is PyTorch's current learning rate over ``lr``, the base
    learning rate the transform and the optimizer were built with (PyTorch's state does
    not record it); the best metric, the bad epochs, the cooldown counter and the
    epoch count are copied. The scheduler's settings (``factor``, ``patience``, ...) are
    those of the transform, built with the same arguments. The saved scheduler has seen
    the metric of the last epoch already: pass no ``value`` with the first update after
    loading (``require_value=False``; passed again, that epoch counts twice).

    Args:
        scheduler_state_dict: ``scheduler.state_dict()`` of a ``ReduceLROnPlateau``.
        lr: the base learning rate, > 0; one per param group where the groups' base
            rates differ.

    Raises:
        ValueError: a key of PyTorch's state is missing, ``lr`` is not positive or does
            not have one value per param group, or the groups' rates are not one scale
            of their base rates (a group held at its ``min_lr`` while another was reduced
            further: one transform keeps one scale).

    Example:
        >>> import jax.numpy as jnp
        >>> import gradtx as gtx
        >>> from gradtx.compat import torch as tc
        >>> tx = gtx.chain(tc.sgd(0.1), tc.lr_scheduler.reduce_lr_on_plateau(0.1))
        >>> saved = {"best": 0.5, "num_bad_epochs": 2, "cooldown_counter": 0,
        ...          "last_epoch": 12, "_last_lr": [0.01]}
        >>> state = tx.init(jnp.zeros(2))
        >>> state = (state[0], tc.load_plateau_state(saved, lr=0.1))
        >>> round(float(state[1].scale), 6), int(state[1].num_bad_steps)
        (0.1, 2)
    """
    missing = [key for key in _PLATEAU_KEYS if key not in scheduler_state_dict]
    if missing:
        raise ValueError(
            f"scheduler_state_dict must be a ReduceLROnPlateau state_dict(); it has no {missing}"
        )
    last_lr = [float(_to_numpy(x)) for x in scheduler_state_dict["_last_lr"]]
    base = [lr] * len(last_lr) if np.ndim(lr) == 0 else list(lr)
    if len(base) != len(last_lr):
        raise ValueError(
            f"lr must be one base learning rate or one per param group ({len(last_lr)}), "
            f"got {len(base)} values"
        )
    for value in base:
        check.positive("lr", value)
    scales = [now / float(b) for now, b in zip(last_lr, base, strict=True)]
    if not np.allclose(scales, scales[0], rtol=1e-12, atol=0.0):
        raise ValueError(
            f"the param groups' learning rates {last_lr} are not one scale of the base "
            f"rates {base} (scales {scales}); reduce_lr_on_plateau keeps one scale for "
            f"all parameters"
        )
    float_dtype = jnp.result_type(float)
    return ReduceOnPlateauState(
        scale=jnp.asarray(scales[0], float_dtype),
        best_value=jnp.asarray(float(_to_numpy(scheduler_state_dict["best"])), float_dtype),
        num_bad_steps=jnp.asarray(int(scheduler_state_dict["num_bad_epochs"]), jnp.int32),
        cooldown_counter=jnp.asarray(int(scheduler_state_dict["cooldown_counter"]), jnp.int32),
        count=jnp.asarray(min(int(scheduler_state_dict["last_epoch"]), 2**31 - 1), jnp.int32),
    )
