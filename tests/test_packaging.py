"""What a user installing gradtx into an existing project relies on: the declared
requirements are the ones the README states, importing gradtx changes nothing global,
and the library runs on the oldest JAX it declares (APIs newer than that are reached
through fallbacks)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx import tree

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text()


def _lower_bound(requirement: str) -> str:
    match = re.search(rf'"{requirement}>=([0-9.]+)"', _pyproject())
    assert match, f"pyproject.toml declares no lower bound for {requirement}"
    return match.group(1)


def test_the_readme_states_the_declared_lower_bounds_of_jax_and_numpy():
    readme = (ROOT / "README.md").read_text()
    for requirement in ("jax", "numpy"):
        stated = f"`{requirement}>={_lower_bound(requirement)}`"
        assert stated in readme, f"README.md does not state {stated} (pyproject.toml's)"


def test_the_version_is_the_one_pyproject_declares():
    match = re.search(r'^version = "([^"]+)"', _pyproject(), re.MULTILINE)
    assert match and gtx.__version__ == match.group(1)


def test_import_raises_no_warning_and_leaves_jax_config_and_backends_alone():
    """``import gradtx`` under ``-W error`` with every subpackage: no warning, no change to
    ``jax.config`` (x64, default device, matmul precision...) and no backend started (a
    later ``jax.distributed.initialize`` must still be possible)."""
    script = (
        "import jax\n"
        "from jax._src import xla_bridge\n"
        "before = dict(jax.config.values)\n"
        "import gradtx, gradtx.compat.torch, gradtx.compat.keras, gradtx.training\n"
        "import gradtx.schedules, gradtx.wrappers, gradtx.transforms\n"
        "after = dict(jax.config.values)\n"
        "changed = sorted(k for k in before.keys() | after.keys()"
        " if before.get(k) != after.get(k))\n"
        "assert not changed, changed\n"
        "assert not xla_bridge._backends, list(xla_bridge._backends)\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def _flatten_runs(params):
    tx = gtx.flatten(gtx.adam(0.1))
    grads = jax.tree.map(lambda p: 0.5 * p + 0.25, params)
    reference, _ = gtx.adam(0.1).update(grads, gtx.adam(0.1).init(params), params)
    for update in (tx.update, jax.jit(tx.update)):
        updates, _ = update(grads, tx.init(params), params)
        for name in params:
            np.testing.assert_allclose(updates[name], reference[name], rtol=1e-6)


def test_flatten_runs_on_a_jax_without_typeof(monkeypatch):
    """JAX before 0.5.3 has no ``jax.typeof`` (nor Explicit axes): ``flatten`` and
    ``quantized_state`` raised AttributeError there on every update."""
    monkeypatch.delattr(jax, "typeof", raising=False)
    _flatten_runs({"w": jnp.ones((2, 3)), "b": jnp.arange(3.0)})


def test_explicit_sharding_is_gathered_where_jax_keeps_reshard_in_experimental(monkeypatch):
    """JAX 0.5.3 to 0.6.x have Explicit axes but ``reshard`` only in
    ``jax.experimental.shard``: ``flatten`` of an explicitly sharded leaf raised
    AttributeError there."""
    if not hasattr(jax, "set_mesh"):
        pytest.skip("the explicit mesh of this test needs jax.set_mesh (JAX >= 0.7)")
    reshard = jax.sharding.reshard
    resharded = []

    def counting_reshard(x, spec):
        resharded.append(spec)
        return reshard(x, spec)

    monkeypatch.delattr(jax.sharding, "reshard")
    monkeypatch.setitem(
        sys.modules, "jax.experimental.shard", types.SimpleNamespace(reshard=counting_reshard)
    )
    explicit = (jax.sharding.AxisType.Explicit,)
    mesh = jax.make_mesh((1,), ("x",), axis_types=explicit)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    x = jax.device_put(jnp.arange(4.0), sharding)
    with jax.set_mesh(mesh):
        gathered = tree.gathered(x)
    assert resharded == [jax.sharding.PartitionSpec()]
    np.testing.assert_array_equal(gathered, np.arange(4.0))


@pytest.mark.parametrize("order", [1.0, 2.0, float("inf")])
def test_clip_grad_norm_takes_a_vector_norm_of_a_matrix_leaf(order):
    """``torch.nn.utils.clip_grad_norm_`` takes each leaf's vector norm. JAX up to 0.4.35
    computed a matrix norm in ``jnp.linalg.vector_norm`` over two axes (3 for 9, 6 for 3
    on this leaf): why pyproject.toml requires jax>=0.4.36."""
    from gradtx.compat import torch as tc

    g = np.arange(-3.0, 3.0, dtype=np.float32).reshape(2, 3)
    norm = np.linalg.norm(g.ravel(), ord=order)
    clipped, _ = tc.clip_grad_norm(1.0, norm_type=order).update([jnp.asarray(g)], None)
    np.testing.assert_allclose(clipped[0], g * (1.0 / (norm + 1e-6)), rtol=1e-6)
