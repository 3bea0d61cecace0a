"""What a user installing gradtx into an existing project relies on: the declared
requirements are the ones the README states, importing gradtx changes nothing global,
and the library runs on the oldest JAX it declares (APIs newer than that are reached
through fallbacks)."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx as gtx
from gradtx import layout

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _source_file(name: str) -> str:
    """A file of the source tree, which the tests copied beside an installed wheel lack."""
    if not (ROOT / name).is_file():
        pytest.skip(f"no {name} beside the tests: gradtx is installed without its sources")
    return (ROOT / name).read_text()


def _pyproject() -> str:
    return _source_file("pyproject.toml")


def _lower_bound(requirement: str) -> str:
    match = re.search(rf'"{requirement}>=([0-9.]+)"', _pyproject())
    assert match, f"pyproject.toml declares no lower bound for {requirement}"
    return match.group(1)


def test_the_readme_states_the_declared_lower_bounds_of_jax_and_numpy():
    readme = _source_file("README.md")
    for requirement in ("jax", "numpy"):
        stated = f"`{requirement}>={_lower_bound(requirement)}`"
        assert stated in readme, f"README.md does not state {stated} (pyproject.toml's)"


def test_the_sdist_carries_the_files_the_test_suite_reads_and_no_caches(tmp_path):
    """MANIFEST.in: the sdist built from a checkout carries the tests with what they read
    (tests/golden, conftest.py, the docs, examples and benchmarks some tests run,
    .ci/run, which tests/test_docs.py compares with the README's command), the license
    text, and no bytecode caches."""
    pytest.importorskip("setuptools", minversion="77", reason="pyproject.toml's build needs it")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0 or not listed.stdout:
        pytest.skip("not a git checkout: the tracked files are unknown")
    tracked = [name for name in listed.stdout.decode().split("\0") if name]
    source = tmp_path / "source"
    for name in tracked:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, source / name)
    (source / "tests" / "__pycache__").mkdir()
    (source / "tests" / "__pycache__" / "zoo.cpython-311.pyc").write_bytes(b"")
    script = "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])"
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "dist")],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("gradtx-*.tar.gz")
    with tarfile.open(sdist) as archive:
        shipped = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    read_by_tests = ("tests/", "docs/", "examples/", "benchmarks/", ".ci/")
    needed = {
        name
        for name in tracked
        if name.startswith(read_by_tests)
        or name in ("conftest.py", "README.md", "pyproject.toml", "LICENSE")
    }
    assert not needed - shipped, f"the sdist lacks {sorted(needed - shipped)[:10]}"
    assert any(name.startswith("tests/golden/") and name.endswith(".json") for name in shipped)
    caches = [name for name in shipped if "__pycache__" in name or name.endswith(".pyc")]
    assert not caches, caches


def test_the_version_is_the_one_pyproject_declares():
    match = re.search(r'^version = "([^"]+)"', _pyproject(), re.MULTILINE)
    assert match and gtx.__version__ == match.group(1)


def test_import_raises_no_warning_and_leaves_jax_config_and_backends_alone():
    """``import gradtx`` under ``-W error`` with every subpackage: no warning, no change to
    ``jax.config`` (x64, default device, matmul precision...), no backend started (a
    later ``jax.distributed.initialize`` must still be possible) and no library imported
    beyond the runtime dependencies (matplotlib only when ``LRFindResult.plot`` is
    called; Optax, Flax, PyTorch, Keras and scikit-learn never)."""
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
        "import sys\n"
        "optional = {'matplotlib', 'optax', 'flax', 'torch', 'keras', 'sklearn'}\n"
        "assert not optional & sys.modules.keys(), sorted(optional & sys.modules.keys())\n"
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
    AttributeError there. (Checked with JAX 0.6.2 installed, on 2 devices: the gather
    works inside and outside ``jax.sharding.use_mesh``.)"""
    if not hasattr(jax, "set_mesh"):
        pytest.skip("the explicit mesh of this test needs jax.set_mesh (JAX >= 0.7.1)")
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
        gathered = layout.gathered(x)
    # replicated on the leaf's own mesh: a bare P() needs a mesh context (jax.set_mesh)
    (target,) = resharded
    assert isinstance(target, jax.sharding.NamedSharding)
    assert target.spec == jax.sharding.PartitionSpec() and target.mesh.shape == mesh.shape
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
