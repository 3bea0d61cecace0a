"""Wrappers nested in wrappers: what the two mean composed by hand, and the protocol.

The references below are plain NumPy loops of each wrapper's rule applied to the
updates of the transform inside it (``tests/reference/classic.Adam`` at the bottom),
on the params raveled into one vector in tree order (``b`` then ``w``), or the Optax
composition of the Optax counterparts. Each test runs all its nestings in one compiled
program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradtx as gtx
from tests.compilations import count_compilations
from tests.reference.classic import Adam

# float32-exact hyperparameters: the injected optimizers store them as float32
LR, B1, B2, EPS = 0.125, 0.5, 0.75, 2.0**-10
W, B = slice(2, 6), slice(0, 2)  # the leaves in the raveled vector
MASK = {"w": True, "b": False}
LABELS = {"w": "a", "b": "b"}


def _adam():
    return gtx.adam(LR, B1, B2, EPS)


def _optax_adam():
    return optax.adam(LR, B1, B2, EPS)


class _RefAdam:
    def __init__(self, n):
        self.block = Adam(n, B1, B2, EPS)

    def __call__(self, g, p):
        return -LR * self.block.step(g)


class _RefMultiSteps:
    """k micro-steps averaged; the inner transform sees the mean once every k calls."""

    def __init__(self, inner, k):
        self.inner, self.k, self.n, self.mean = inner, k, 0, 0.0

    def __call__(self, g, p):
        self.n += 1
        self.mean = self.mean + (g - self.mean) / self.n
        if self.n < self.k:
            return np.zeros_like(g)
        mean, self.n, self.mean = self.mean, 0, 0.0
        return self.inner(mean, p)


class _RefLookahead:
    """Zhang et al. 2019: every k calls the slow weights move alpha towards the fast ones
    and the params jump to them."""

    def __init__(self, inner, k, alpha, p0):
        self.inner, self.k, self.alpha, self.t, self.slow = inner, k, alpha, 0, p0.copy()

    def __call__(self, g, p):
        u = self.inner(g, p)
        self.t += 1
        if self.t % self.k:
            return u
        self.slow = self.slow + self.alpha * (p + u - self.slow)
        return self.slow - p


class _RefApplyIfFinite:
    """A non-finite gradient is a zero step the inner transform never sees (applied
    after ``max_errors`` skips in a row)."""

    def __init__(self, inner, max_errors):
        self.inner, self.max_errors, self.errors = inner, max_errors, 0

    def __call__(self, g, p):
        self.errors = 0 if np.all(np.isfinite(g)) else self.errors + 1
        if 0 < self.errors <= self.max_errors:
            return np.zeros_like(g)
        self.errors = 0
        return self.inner(g, p)


class _RefGroups:
    """Each slice of the vector to its own transform; the rest passes or becomes 0."""

    def __init__(self, groups, rest="pass"):
        self.groups, self.rest = groups, rest

    def __call__(self, g, p):
        u = g.copy() if self.rest == "pass" else np.zeros_like(g)
        for where, inner in self.groups:
            u[where] = inner(g[where], p[where])
        return u


class _RefEmaAfter:
    """The inner step, then an EMA of the iterates p + u from zero, debiased."""

    def __init__(self, inner, decay):
        self.inner, self.decay, self.t, self.sum, self.ema = inner, decay, 0, 0.0, None

    def __call__(self, g, p):
        u = self.inner(g, p)
        self.t += 1
        self.sum = self.decay * self.sum + (1 - self.decay) * (p + u)
        self.ema = self.sum / (1 - self.decay**self.t)
        return u


def _ravel(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def _run_reference(ref, p0, grads):
    p, trajectory = p0.copy(), []
    for g in grads:
        p = p + ref(_ravel(g), p)
        trajectory.append(p)
    return np.array(trajectory)


def test_nestings_follow_the_wrappers_composed_by_hand(rng, x64):
    """multi_steps(lookahead): lookahead sees one mean every k calls; apply_if_finite
    (multi_steps): a NaN micro-batch leaves the accumulator alone; partition and masked
    route to nested wrappers; flatten, schedule_injection and Optax wrap nests; and gradtx
    wrappers around Optax's equal Optax's own composition."""
    params = {"w": rng.normal(size=(2, 2)), "b": rng.normal(size=2)}
    clean = [{"w": rng.normal(size=(2, 2)), "b": rng.normal(size=2)} for _ in range(8)]
    bad = [dict(g) for g in clean]
    bad[2]["w"] = np.full((2, 2), np.nan)  # micro-step 1 of the second real step of k=2
    bad[5]["b"] = np.array([np.inf, 1.0])
    p0 = _ravel(params)
    nests = {  # name: (gradtx nesting, NumPy reference or Optax composition, gradients)
        "multi_steps(lookahead)": (
            gtx.multi_steps(gtx.lookahead(_adam(), 2, 0.5), 2),
            _RefMultiSteps(_RefLookahead(_RefAdam(6), 2, 0.5, p0), 2),
            clean,
        ),
        "lookahead(multi_steps)": (
            gtx.lookahead(gtx.multi_steps(_adam(), 2), 3, 0.5),
            _RefLookahead(_RefMultiSteps(_RefAdam(6), 2), 3, 0.5, p0),
            clean,
        ),
        "apply_if_finite(multi_steps)": (
            gtx.apply_if_finite(gtx.multi_steps(_adam(), 3), 1),
            _RefApplyIfFinite(_RefMultiSteps(_RefAdam(6), 3), 1),
            bad,
        ),
        "multi_steps(apply_if_finite)": (
            gtx.multi_steps(gtx.apply_if_finite(_adam(), 2), 2),  # two non-finite means
            _RefMultiSteps(_RefApplyIfFinite(_RefAdam(6), 2), 2),
            bad,
        ),
        "partition(multi_steps, lookahead)": (
            gtx.partition(
                {"a": gtx.multi_steps(_adam(), 2), "b": gtx.lookahead(_adam(), 2, 0.5)}, LABELS
            ),
            _RefGroups(
                [
                    (W, _RefMultiSteps(_RefAdam(4), 2)),
                    (B, _RefLookahead(_RefAdam(2), 2, 0.5, p0[B])),
                ]
            ),
            clean,
        ),
        "masked(apply_if_finite)": (
            gtx.masked(gtx.apply_if_finite(_adam(), 1), MASK, masked_leaves="zero"),
            _RefGroups([(W, _RefApplyIfFinite(_RefAdam(4), 1))], rest="zero"),
            bad,
        ),
        "flatten(apply_if_finite)": (
            gtx.flatten(gtx.apply_if_finite(_adam(), 1)),
            _RefApplyIfFinite(_RefAdam(6), 1),
            bad,
        ),
        "multi_steps(chain(adam, ema_params))": (
            gtx.multi_steps(gtx.chain(_adam(), gtx.ema_params(0.5)), 2),
            _RefMultiSteps(_RefEmaAfter(_RefAdam(6), 0.5), 2),
            clean,
        ),
        "schedule_injection(lookahead)(multi_steps)": (
            gtx.schedule_injection(gtx.lookahead)(
                gtx.multi_steps(_adam(), 2), sync_period=3, slow_step_size=lambda t: 0.5
            ),
            _RefLookahead(_RefMultiSteps(_RefAdam(6), 2), 3, 0.5, p0),
            clean,
        ),
        "optax.masked(multi_steps)": (
            optax.masked(gtx.multi_steps(_adam(), 2), MASK),
            _RefGroups([(W, _RefMultiSteps(_RefAdam(4), 2))]),
            clean,
        ),
        "optax.apply_if_finite(multi_steps)": (
            optax.apply_if_finite(gtx.multi_steps(_adam(), 3), 1),
            _RefApplyIfFinite(_RefMultiSteps(_RefAdam(6), 3), 1),  # no two NaNs in a row
            bad,
        ),
        "masked(optax.MultiSteps)": (
            gtx.masked(optax.MultiSteps(_optax_adam(), 2).gradient_transformation(), MASK),
            optax.masked(optax.MultiSteps(_optax_adam(), 2).gradient_transformation(), MASK),
            clean,
        ),
    }
    transforms = [tx for tx, _, _ in nests.values()]
    transforms += [ref for _, ref, _ in nests.values() if not callable(ref)]
    sequences = [grads for _, _, grads in nests.values()]
    sequences += [grads for _, ref, grads in nests.values() if not callable(ref)]
    stacked = [jax.tree.map(lambda *gs: jnp.stack(gs), *grads) for grads in sequences]

    @jax.jit
    def run(params, stacked):
        def step(carry, grads):
            out = []
            for tx, (p, s), g in zip(transforms, carry, grads, strict=True):
                u, s = tx.update(g, s, p)
                out.append((optax.apply_updates(p, u), s))
            return out, [p for p, _ in out]

        carry = [(params, tx.init(params)) for tx in transforms]
        return jax.lax.scan(step, carry, stacked)

    carry, trajectories = run(jax.tree.map(jnp.asarray, params), stacked)
    flat = [
        np.concatenate([np.reshape(x, (8, -1)) for x in jax.tree.leaves(t)], 1)
        for t in trajectories
    ]
    optax_refs = iter(flat[len(nests) :])
    for (name, (_, ref, grads)), got in zip(nests.items(), flat, strict=False):
        expected = _run_reference(ref, p0, grads) if callable(ref) else next(optax_refs)
        np.testing.assert_allclose(got, expected, 0, 1e-10, equal_nan=False, err_msg=name)
    ema_state = carry[list(nests).index("multi_steps(chain(adam, ema_params))")][1]
    ema_ref = nests["multi_steps(chain(adam, ema_params))"][1].inner
    np.testing.assert_allclose(_ravel(gtx.tree_get(ema_state, "ema")), ema_ref.ema, atol=1e-10)


def _sgd():
    return gtx.sgd(0.125, momentum=0.5)


PROTOCOL = {
    "multi_steps(lookahead)": lambda: gtx.multi_steps(gtx.lookahead(_sgd(), 2, 0.5), 2),
    "apply_if_finite(multi_steps)": lambda: gtx.apply_if_finite(gtx.multi_steps(_sgd(), 2), 2),
    "partition": lambda: gtx.partition(
        {
            "a": gtx.multi_steps(gtx.lookahead(_sgd(), 2, 0.5), 2),
            "b": gtx.apply_if_finite(_sgd(), 2),
        },
        LABELS,
    ),
    "chain(multi_steps, ema_params)": lambda: gtx.chain(
        gtx.multi_steps(_sgd(), 2), gtx.ema_params(0.5)
    ),
}


def _avals(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


def _assert_same_bits(a, b, name=""):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_nestings_keep_the_protocol_through_both_wrappers(rng):
    """One compilation over several steps, fixed state avals, abstract init, a host
    round trip continued jitted and eagerly, tree_get and tree_set, get/set_hyperparams
    by path, reset_group and has_updated through the nest."""
    names = list(PROTOCOL)
    transforms = [PROTOCOL[name]() for name in names]
    params = {"w": jnp.asarray(rng.normal(size=(2, 2)), jnp.float32), "b": jnp.ones(2)}
    grads = [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        for _ in range(4)
    ]
    states = tuple(tx.init(params) for tx in transforms)
    before = _avals(states)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    assert _avals(jax.eval_shape(lambda: tuple(tx.init(params) for tx in transforms))) == before
    assert _avals(tuple(tx.init(abstract) for tx in transforms)) == before

    def step_all(all_params, states, grads):
        out = [
            tx.update(grads, s, p) for tx, p, s in zip(transforms, all_params, states, strict=True)
        ]
        new = tuple(gtx.apply_updates(p, u) for p, (u, _) in zip(all_params, out, strict=True))
        return new, tuple(s for _, s in out)

    step = jax.jit(step_all)
    trajectory = [((params,) * len(names), states)]
    for g in grads:
        trajectory.append(step(*trajectory[-1], g))
        assert _avals(trajectory[-1][1]) == before
    assert step._cache_size() == 1
    # on from the state on the host (as from a checkpoint): jitted, the same program
    # and bits; eagerly (no jit), the same numbers within float32 rounding (the eager
    # kernels' first call runs op by op, where XLA does not contract a * b + c)
    host = jax.device_get(trajectory[2])
    with count_compilations() as compiled:
        _assert_same_bits(step(*host, grads[2]), trajectory[3])
    assert not compiled
    eager = step_all(*host, grads[2])
    for x, y in zip(jax.tree.leaves(eager), jax.tree.leaves(trajectory[3]), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=0)

    all_params, states = trajectory[-1]
    nested = states[names.index("multi_steps(lookahead)")]
    assert int(gtx.tree_get(nested, "count")) == 2  # the sgd's: 4 micro-steps, k = 2
    assert int(gtx.tree_get(nested, "steps_since_sync")) == 0
    nested = gtx.tree_set(nested, count=jnp.asarray(9))
    group = states[names.index("partition")]
    assert float(gtx.get_hyperparams(group, path="a")["learning_rate"]) == 0.125
    group = gtx.set_hyperparams(group, path="b", learning_rate=0.0)
    group = gtx.reset_group(transforms[2], group, "a", all_params[2])
    states = (nested, states[1], group, *states[3:])
    assert _avals(states) == before
    with count_compilations() as compiled:
        moved, states = step(*step(all_params, states, grads[0]), grads[1])
    assert not compiled  # set values, not new programs
    assert int(gtx.tree_get(states[0], "count")) == 10
    assert int(gtx.tree_get(states[2], "gradient_step")) == 1  # from 0 after reset_group
    np.testing.assert_array_equal(moved[2]["b"], all_params[2]["b"])  # learning rate 0
    assert [bool(gtx.has_updated(s)) for s in states] == [True] * 4
    _, states = step(moved, states, grads[2])
    assert [bool(gtx.has_updated(s)) for s in states] == [False] * 4
