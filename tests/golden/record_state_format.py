"""Records the optimizer states' format (the checkpoint format) into state_format.json.

A state's key paths, the containers along them and its leaves' shapes and dtypes are
what an Orbax or Flax checkpoint of it holds: ``tests/test_state_format.py`` compares
``jax.eval_shape(tx.init, PARAMS)`` of every case below with the recorded format.
Rerun only for a deliberate format change, noted in docs/protocol.md:

    python tests/golden/record_state_format.py

Each entry of a case is one leaf of the state, or one empty node (``EmptyState()``,
``()``, ``{}``, ``None``), which has no leaf but holds a position in its container:
``path`` is ``jax.tree_util.keystr`` of its key path, ``containers`` the class names of
the nodes along it (outermost first), then ``shape`` and ``dtype``, or ``empty`` (the
empty node's class name).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import gradtx as gtx
from gradtx.compat import keras as kc
from gradtx.compat import torch as tc

OUT = pathlib.Path(__file__).with_name("state_format.json")

PARAMS = {
    "kernel": jax.ShapeDtypeStruct((3, 4), jnp.float32),
    "bias": jax.ShapeDtypeStruct((4,), jnp.float32),
    "embedding": jax.ShapeDtypeStruct((5, 2), jnp.bfloat16),
}
"""The params every case is initialized on: a 2-D kernel, a bias, a bfloat16 leaf."""

MASK = {"kernel": True, "bias": False, "embedding": True}

LAYERS = [
    {
        "kernel": jax.ShapeDtypeStruct((2, 3), jnp.float32),
        "bias": jax.ShapeDtypeStruct((3,), jnp.float32),
    }
    for _ in range(3)
]
"""Params of alternating shapes, for the cases whose state depends on the leaves' layout."""


def _schedule(count):
    return 0.1 / (1.0 + count)


CASES: dict[str, Callable[[], Any]] = {
    # the named optimizers (tests/zoo.py: OPTIMIZER_NAMES and VARIANTS)
    "sgd": lambda: gtx.sgd(0.1),
    "sgd_momentum": lambda: gtx.sgd(0.1, momentum=0.9),
    "sgd_nesterov": lambda: gtx.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": lambda: gtx.adagrad(0.1),
    "rmsprop": lambda: gtx.rmsprop(0.1),
    "rmsprop_centered_momentum": lambda: gtx.rmsprop(0.1, centered=True, momentum=0.9),
    "adadelta": lambda: gtx.adadelta(0.1),
    "adam": lambda: gtx.adam(0.1),
    "adam_schedule_dtypes": lambda: gtx.adam(_schedule, mu_dtype=jnp.bfloat16),
    "adamw": lambda: gtx.adamw(0.1),
    "adamw_mask": lambda: gtx.adamw(0.1, mask=MASK),
    "amsgrad": lambda: gtx.amsgrad(0.1),
    "adamax": lambda: gtx.adamax(0.1),
    "nadam": lambda: gtx.nadam(0.1),
    "nadamw": lambda: gtx.nadamw(0.1),
    "rprop": lambda: gtx.rprop(0.1),
    "radam": lambda: gtx.radam(0.1),
    "adamaxw": lambda: gtx.adamaxw(0.1, mask=MASK),
    "noisy_sgd": lambda: gtx.noisy_sgd(0.1),
    # wrappers and regularizers (tests/zoo.py: WRAPPERS), around or beside Adam
    "masked": lambda: gtx.masked(gtx.adam(0.1), MASK),
    "masked_zero": lambda: gtx.masked(gtx.adam(0.1), MASK, masked_leaves="zero"),
    "partition": lambda: gtx.partition(
        {"a": gtx.adam(0.1), "b": gtx.freeze()}, {r"\['kernel'\]": "a", r".*": "b"}
    ),
    "freeze": lambda: gtx.chain(gtx.adam(0.1), gtx.freeze(MASK)),
    "apply_if_finite": lambda: gtx.apply_if_finite(gtx.adam(0.1), 2),
    "multi_steps": lambda: gtx.multi_steps(gtx.adam(0.1), 2),
    "multi_steps_schedule": lambda: gtx.multi_steps(gtx.adam(0.1), lambda s: 1 + s),
    "lookahead": lambda: gtx.lookahead(gtx.adam(0.1), sync_period=2),
    "ema_params": lambda: gtx.chain(gtx.adam(0.1), gtx.ema_params(0.9)),
    "average_params": lambda: gtx.chain(gtx.adam(0.1), gtx.average_params(1)),
    "swats": lambda: gtx.swats(0.1),
    "flatten": lambda: gtx.flatten(gtx.adam(0.1)),
    "flatten_offsets": lambda: gtx.flatten(gtx.adam(0.1), offsets_in_state=True),
    "flatten_offsets_layers": lambda: gtx.flatten(gtx.adam(0.1), offsets_in_state=True),
    "add_l1": lambda: gtx.chain(gtx.add_l1(0.1), gtx.adam(0.1)),
    "proximal_l1": lambda: gtx.chain(gtx.adam(0.1), gtx.proximal_l1(0.01)),
    "max_norm": lambda: gtx.chain(gtx.adam(0.1), gtx.max_norm(1.0, mask=MASK)),
    "add_noise": lambda: gtx.chain(gtx.add_noise(0.01), gtx.adam(0.1)),
    "local_gain": lambda: gtx.chain(gtx.scale_by_local_gain(), gtx.scale(-0.1)),
    # more wrappers and blocks
    "schedule_injection": lambda: gtx.schedule_injection(gtx.scale_by_adam)(b1=0.9),
    "reduce_on_plateau": lambda: gtx.chain(gtx.adam(0.1), gtx.reduce_on_plateau()),
    "quantized_state": lambda: gtx.quantized_state(gtx.adam(0.1), block_size=4, min_size=8),
    "multi_steps_apply_if_finite": lambda: gtx.multi_steps(
        gtx.apply_if_finite(gtx.adamw(0.1), 3), 4
    ),
    "named_chain_blocks": lambda: gtx.named_chain(
        ("clip", gtx.clip_by_global_norm(1.0)),
        ("adam", gtx.scale_by_adam()),
        ("decay", gtx.add_decayed_weights(_schedule)),
        ("lr", gtx.scale_by_schedule(_schedule)),
    ),
    "blocks": lambda: gtx.chain(
        gtx.trace(0.9, dampening=0.1),
        gtx.ema(0.9),
        gtx.scale_by_radam(),
        gtx.scale_by_nadam_schedule(),
        gtx.averaged_sgd(0.1),
        gtx.add_decoupled_weight_decay(1e-2, _schedule),
    ),
    # gradtx.compat.torch
    "torch_sgd": lambda: tc.sgd(0.1),
    "torch_sgd_momentum": lambda: tc.sgd(0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
    "torch_sgd_cycle_momentum": lambda: tc.sgd(
        0.1, momentum=tc.lr_scheduler.one_cycle_momentum(10), dampening=0.1
    ),
    "torch_adam": lambda: tc.adam(0.1),
    "torch_adam_amsgrad": lambda: tc.adam(0.1, weight_decay=1e-2, amsgrad=True, maximize=True),
    "torch_adamw": lambda: tc.adamw(0.1),
    "torch_adagrad": lambda: tc.adagrad(0.1, lr_decay=1e-3),
    "torch_rmsprop": lambda: tc.rmsprop(0.1, momentum=0.9, centered=True),
    "torch_adadelta": lambda: tc.adadelta(),
    "torch_adamax": lambda: tc.adamax(),
    "torch_nadam": lambda: tc.nadam(),
    "torch_nadam_decoupled": lambda: tc.nadam(weight_decay=1e-2, decoupled_weight_decay=True),
    "torch_radam": lambda: tc.radam(),
    "torch_rprop": lambda: tc.rprop(),
    "torch_asgd": lambda: tc.asgd(),
    "torch_reduce_lr_on_plateau": lambda: gtx.chain(
        tc.sgd(0.1), tc.lr_scheduler.reduce_lr_on_plateau(0.1)
    ),
    # gradtx.compat.keras
    "keras_sgd": lambda: kc.sgd(0.1, momentum=0.9),
    "keras_rmsprop": lambda: kc.rmsprop(0.1, momentum=0.9, centered=True),
    "keras_adam": lambda: kc.adam(0.1),
    "keras_adam_amsgrad": lambda: kc.adam(0.1, amsgrad=True),
    "keras_adamw": lambda: kc.adamw(0.1, exclude_from_weight_decay=["bias"]),
    "keras_adagrad": lambda: kc.adagrad(0.1),
    "keras_adadelta": lambda: kc.adadelta(0.1),
    "keras_adamax": lambda: kc.adamax(0.1),
    "keras_nadam": lambda: kc.nadam(0.1),
    "keras_adam_options": lambda: kc.adam(
        0.1, weight_decay=1e-2, clipnorm=1.0, loss_scale_factor=2.0, use_ema=True
    ),
    "keras_adam_accumulation": lambda: kc.adam(
        0.1, global_clipnorm=1.0, gradient_accumulation_steps=2
    ),
}
"""Every public optimizer, wrapper and compat optimizer, with typical arguments, by name."""

CASE_PARAMS = {"flatten_offsets_layers": LAYERS}
"""The params of the cases not initialized on ``PARAMS``."""


def _is_empty(node: Any) -> bool:
    return node is None or (isinstance(node, tuple | list | dict) and len(node) == 0)


def _child(node: Any, key: Any) -> Any:
    """The child of ``node`` at one key of a key path."""
    if isinstance(key, jax.tree_util.GetAttrKey):
        return getattr(node, key.name)
    if isinstance(key, jax.tree_util.SequenceKey):
        return node[key.idx]
    if isinstance(key, jax.tree_util.DictKey):
        return node[key.key]
    return jax.tree_util.flatten_one_level(node)[0][key.key]  # a FlattenedIndexKey


def describe(state: Any) -> list[dict[str, Any]]:
    """The format of ``state`` (concrete or ``jax.eval_shape``'s): one entry per leaf
    and per empty node, in ``tree_flatten_with_path`` order."""
    entries = []
    pairs, _ = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_empty)
    for path, leaf in pairs:
        containers, node = [], state
        for key in path:
            containers.append(type(node).__name__)
            node = _child(node, key)
        entry = {"path": jax.tree_util.keystr(path), "containers": containers}
        if _is_empty(leaf):
            entry["empty"] = type(leaf).__name__
        else:
            entry.update(shape=list(leaf.shape), dtype=str(leaf.dtype))
        entries.append(entry)
    return entries


def state_format(name: str) -> list[dict[str, Any]]:
    """The format of case ``name``'s state, from ``jax.eval_shape`` (nothing compiled)."""
    tx = CASES[name]()
    return describe(jax.eval_shape(tx.init, CASE_PARAMS.get(name, PARAMS)))


def params_format() -> list[dict[str, Any]]:
    return describe(PARAMS)


def _one_entry_a_line(record: dict[str, Any]) -> str:
    """The record as JSON with one entry a line, so a format change is a diff of lines."""

    def entries(items: list[dict[str, Any]]) -> str:
        return "[\n" + ",\n".join(f"   {json.dumps(entry)}" for entry in items) + "\n  ]"

    states = ",\n".join(
        f"  {json.dumps(name)}: {entries(items)}" for name, items in record["states"].items()
    )
    return f'{{\n "params": {entries(record["params"])},\n "states": {{\n{states}\n }}\n}}\n'


def main() -> None:
    record = {
        "params": params_format(),
        "states": {name: state_format(name) for name in CASES},
    }
    OUT.write_text(_one_entry_a_line(record))
    print(f"wrote {len(CASES)} state formats to {OUT}")


if __name__ == "__main__":
    main()
