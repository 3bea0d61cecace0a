"""The Python blocks of README.md and docs/*.md run as a reader would run them.

Each file's blocks run in order in one namespace, as a reader goes down the page. Where
the text leaves out what a block needs (a ``loss_fn``, a ``model``, the params), SETUP
gives the smallest version of it, inserted before the line that first needs it; SKIPPED
names the few blocks that cannot run here and where they are run instead.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]

_LINEN_MODEL = """
import flax.linen as nn
class _Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(x)
model = _Dense()
params = model.init(jax.random.key(0), jnp.ones((1, 3)))
grads = jax.tree.map(jnp.ones_like, params)
"""
_NNX_MODEL = """
from flax import nnx
model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 3)))))(model)
"""
_IMPORTS = "import jax\nimport jax.numpy as jnp\nimport gradtx as gtx\n"

# (page, a line of a block) -> the code the text implies, run just before that line.
SETUP = {
    ("README.md", "from flax.training import train_state"): _IMPORTS + _LINEN_MODEL,
    ("README.md", "optimizer = nnx.Optimizer(model, gtx.adamw(1e-3), wrt=nnx.Param)"): _NNX_MODEL,
    ("docs/protocol.md", "@jax.jit"): """
def loss_fn(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)
""",
    ("docs/protocol.md", "from flax.training import train_state"): _LINEN_MODEL,
    ("docs/protocol.md", "optimizer = nnx.Optimizer(model, gtx.adamw(1e-3), wrt=nnx.Param)"): (
        _NNX_MODEL
    ),
    ("docs/schedules.md", "tx = gtx.adam(gtx.schedules.one_cycle(10_000, max_value=3e-3))"): (
        _IMPORTS + 'params = {"w": jnp.ones(3)}\ngrads = {"w": jnp.full(3, 0.1)}\n'
        "validation_loss = 1.0\n"
    ),
    (
        "docs/schedules.md",
        "updates, state = tx.update(grads, state, params, value=validation_loss)",
    ): ("state = tx.init(params)\n"),
    ("docs/schedules.md", "from gradtx.training import lr_find"): """
model = lambda params, x: x @ params["w"]
params = {"w": jnp.zeros((3, 1))}
x_batches = jax.random.normal(jax.random.key(1), (10, 16, 3))
y_batches = x_batches @ jnp.array([[1.0], [-2.0], [0.5]])
import matplotlib
matplotlib.use("Agg")
""",
    ("docs/wrappers.md", "tx = gtx.partition("): (
        _IMPORTS + 'params = {"embedding": jnp.ones((4, 2)), "dense": {"kernel": jnp.ones((2, 2)),'
        ' "bias": jnp.zeros(2)}, "norm": {"scale": jnp.ones(2)}}\n'
    ),
    ("docs/wrappers.md", "if gtx.has_updated(state): log(loss)"): (
        "state, loss, log = tx.init(params), 0.0, print\n"
    ),
    (
        "docs/wrappers.md",
        'gtx.tree_get(state, "mu")                       # Adam\'s first moment, wherever it sits',
    ): (
        'state = gtx.partition({"decay": gtx.adamw(1e-3), "no_decay": gtx.sgd(1e-3)},'
        ' {r"bias|scale": "no_decay", r".*": "decay"}).init(params)\n'
    ),
    (
        "docs/examples.md",
        "# Adam + L2: the decay term joins the gradient and is rescaled by Adam's 1/sqrt(v).",
    ): (
        _IMPORTS + "wd_schedule = gtx.schedules.piecewise_constant([10, 50, 100, 150],"
        " [1e-2, 5e-3, 2.5e-3, 1.25e-3, 6.25e-4])\n"
    ),
    ("docs/examples.md", "@jax.jit"): """
def loss_fn(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)
""",
    ("docs/examples.md", "from flax.training import train_state"): (
        _LINEN_MODEL + "schedule = gtx.schedules.warmup_cosine_decay(0.0, 1e-3, 5, 100)\n"
    ),
    ("docs/examples.md", "from flax import nnx"): """
steps = 10
def loss_fn(model, images, labels):
    return jnp.mean((model(images) - labels) ** 2)
""",
    ("docs/examples.md", "tx = gtx.chain(gtx.clip_by_global_norm(1.0),"): (
        "model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))\n"
    ),
    (
        "docs/examples.md",
        "on_device = jax.tree.map(lambda x: x.sharding, opt_state)   # e.g. after jit(tx.init)",
    ): """
import functools
tx = gtx.adam(1e-3)
params = {"w": jnp.ones(3)}
param_shardings = jax.tree.map(lambda x: x.sharding, params)
opt_state = jax.jit(tx.init)(params)
loss = lambda params, batch: jnp.sum((params["w"] - batch) ** 2)
""",
    ("docs/examples.md", "import orbax.checkpoint as ocp"): """
import tempfile
path = Path(tempfile.mkdtemp()) / "checkpoints"
init_params = lambda: {"w": jnp.ones(3)}
make_optimizer = lambda: gtx.adamw(1e-3)
params, step = init_params(), 1
opt_state = make_optimizer().init(params)
""",
}

# (page, the block's first line) -> why it does not run here, and what runs it.
SKIPPED = {
    (
        "docs/conventions.md",
        "state = tc.load_state_dict(tx, optimizer.state_dict(), params)"
        "  # tx = chain(opt, plateau)",
    ): (
        "needs a PyTorch optimizer and scheduler; tests/test_compat_torch.py loads their "
        "recorded state dicts"
    ),
    (
        "docs/conventions.md",
        "# A Keras `model` has trained with optimizer = "
        "keras.optimizers.AdamW(learning_rate=1e-3).",
    ): (
        "needs a Keras model and optimizer; tests/test_compat_live.py runs this block on a "
        "live Keras run (marker live)"
    ),
    ("docs/examples.md", 'mesh = jax.make_mesh((8,), ("data",))'): (
        "needs 8 devices before JAX starts; tests/test_examples.py runs "
        "examples/data_parallel.py, which holds this block"
    ),
}


def nnx_optimizer_takes_the_model() -> bool:
    """Whether ``nnx.Optimizer.update`` is flax 0.11's ``update(model, grads)``, which the
    pages show (flax 0.10.7, what pip resolves for Python 3.10, has ``update(grads)``)."""
    from flax import nnx

    return "model" in inspect.signature(nnx.Optimizer.update).parameters


def has_pinned_host_memory() -> bool:
    """Whether the first device has pinned host memory (JAX's offloading, which a page
    shows; jax 0.6.2's CPU, what pip resolves for Python 3.10, has unpinned_host only)."""
    import jax

    device = jax.devices()[0]
    return "pinned_host" in {m.kind for m in getattr(device, "addressable_memories", list)()}


def python_blocks(page: str) -> list[tuple[int, str]]:
    """The ```python blocks of a page: (line number of the block's first line, code)."""
    text = (ROOT / page).read_text()
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        blocks.append((text[: match.start(1)].count("\n") + 1, match.group(1)))
    return blocks


def with_setup(page: str, code: str, used: set) -> str:
    """The block with SETUP's code inserted before the first line that needs it."""
    lines = []
    for line in code.splitlines():
        key = (page, line.strip())
        if key in SETUP and key not in used:
            used.add(key)
            indent = line[: len(line) - len(line.lstrip())]
            lines.append(textwrap.indent(textwrap.dedent(SETUP[key]), indent))
        lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize("page", PAGES)
def test_every_python_block_of_the_page_runs(page):
    namespace = {"__name__": f"docs_{Path(page).stem}", "Path": Path}
    used: set = set()
    older_flax, no_pinned_memory = [], []
    for line, code in python_blocks(page):
        if (page, code.splitlines()[0].strip()) in SKIPPED:
            continue
        source = with_setup(page, code, used)
        try:
            exec(compile(source, f"{page}:{line}", "exec"), namespace)
        except Exception as error:
            if "optimizer.update(model, grads" in code and not nnx_optimizer_takes_the_model():
                older_flax.append(f"{page}:{line}")
                continue
            if '"pinned_host"' in code and not has_pinned_host_memory():
                no_pinned_memory.append(f"{page}:{line}")
                continue
            pytest.fail(f"the block at {page}:{line} raised {type(error).__name__}: {error}")
    if older_flax:
        pytest.skip(f"the blocks at {', '.join(older_flax)} need flax >= 0.11's nnx.Optimizer")
    if no_pinned_memory:
        pytest.skip(
            f"the blocks at {', '.join(no_pinned_memory)} need a device with pinned_host "
            "memory (this JAX's first device has none)"
        )
    unused = {key for key in SETUP if key[0] == page} - used
    assert not unused, f"SETUP entries whose line is no longer in {page}: {sorted(unused)}"


def test_the_setup_and_skip_lists_name_existing_pages():
    assert {page for page, _ in [*SETUP, *SKIPPED]} <= set(PAGES)
    for page, first_line in SKIPPED:
        assert first_line in [code.splitlines()[0].strip() for _, code in python_blocks(page)]


def test_the_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    commands = re.search(r"^```bash\n(.*?)^```", readme, re.S | re.M).group(1)
    assert ci in commands.splitlines()
