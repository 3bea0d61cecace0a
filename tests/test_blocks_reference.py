"""Every momentum and adaptive block against a NumPy loop of its published equations."""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx as gtx
from tests import trajectory
from tests.compilations import jaxprs_in_params
from tests.reference import classic

STEPS = 60

# name -> (gradtx block, reference block built for n elements)
BLOCKS = {
    "trace": (
        lambda: gtx.trace(0.9),
        lambda n: classic.HeavyBall(n, 0.9),
    ),
    "trace_nesterov": (
        lambda: gtx.trace(0.9, nesterov=True),
        lambda n: classic.HeavyBall(n, 0.9, nesterov=True),
    ),
    "nesterov_lookahead": (
        lambda: gtx.nesterov_lookahead(0.8),
        lambda n: classic.HeavyBall(n, 0.8, nesterov=True),
    ),
    "ema": (
        lambda: gtx.ema(0.9),
        lambda n: classic.MovingAverage(n, 0.9),
    ),
    "ema_biased": (
        lambda: gtx.ema(0.7, debias=False),
        lambda n: classic.MovingAverage(n, 0.7, debias=False),
    ),
    "adam": (
        lambda: gtx.scale_by_adam(0.8, 0.95, 1e-6, eps_root=1e-4),
        lambda n: classic.Adam(n, 0.8, 0.95, 1e-6, eps_root=1e-4),
    ),
    "adam_nesterov": (
        lambda: gtx.scale_by_adam(nesterov=True),
        lambda n: classic.Adam(n, nesterov=True),
    ),
    # A decay near 1: the moments average with 1 - b in double precision, so the bias
    # corrections must too (1 - float32(b)**t is 6.8e-4 off at 0.99999); and RAdam's
    # rho_t, a difference of two numbers near rho_inf = 2e5, must not cancel.
    "adam_b2_near_one": (
        lambda: gtx.scale_by_adam(0.9, 0.99999),
        lambda n: classic.Adam(n, 0.9, 0.99999),
    ),
    "ema_near_one": (
        lambda: gtx.ema(0.99999),
        lambda n: classic.MovingAverage(n, 0.99999),
    ),
    "radam": (
        lambda: gtx.scale_by_radam(),
        lambda n: classic.RAdam(n),
    ),
    "radam_nesterov": (
        lambda: gtx.scale_by_radam(0.8, 0.99, nesterov=True),
        lambda n: classic.RAdam(n, 0.8, 0.99, nesterov=True),
    ),
    "radam_b2_near_one": (
        lambda: gtx.scale_by_radam(0.9, 0.99999, 1e-6, strict_threshold=True),
        lambda n: classic.RAdam(n, 0.9, 0.99999, 1e-6, strict=True),
    ),
    "amsgrad_max": (
        lambda: gtx.amsgrad_max(0.9, 0.9),
        lambda n: classic.AMSGrad(n, 0.9, 0.9),
    ),
    "amsgrad_max_eps_root": (
        lambda: gtx.amsgrad_max(0.8, 0.99, 1e-3, eps_root=1e-2),
        lambda n: classic.AMSGrad(n, 0.8, 0.99, 1e-3, eps_root=1e-2),
    ),
    "amsgrad_max_paper": (
        lambda: gtx.amsgrad_max(bias_correction_mu=False, bias_correction_nu=False),
        lambda n: classic.AMSGrad(n, correct_mu=False, correct_nu=False),
    ),
    "adamax": (
        lambda: gtx.scale_by_adamax(0.85, 0.99, 1e-3),
        lambda n: classic.AdaMax(n, 0.85, 0.99, 1e-3),
    ),
    # Kingma & Ba's Algorithm 2 (sec. 7.1) has no eps
    "adamax_paper": (
        lambda: gtx.scale_by_adamax(eps=0.0),
        lambda n: classic.AdaMax(n, eps=0.0),
    ),
    "adamax_paper_eps_after_max": (
        lambda: gtx.scale_by_adamax(0.8, 0.95, eps=0.0, eps_in_max=False),
        lambda n: classic.AdaMax(n, 0.8, 0.95, eps=0.0),
    ),
    "rss": (
        lambda: gtx.scale_by_rss(),
        lambda n: classic.Adagrad(n),
    ),
    "rss_from_zero": (
        lambda: gtx.scale_by_rss(initial_accumulator_value=0.0, eps=1e-3),
        lambda n: classic.Adagrad(n, 0.0, 1e-3),
    ),
    # Duchi et al.'s diagonal form: s_0 = 0, delta outside the root (PyTorch's too)
    "rss_paper": (
        lambda: gtx.scale_by_rss(0.0, 1e-3, eps_in_sqrt=False),
        lambda n: classic.Adagrad(n, 0.0, 1e-3, eps_in_sqrt=False),
    ),
    "adadelta": (
        lambda: gtx.scale_by_adadelta(),
        lambda n: classic.Adadelta(n),
    ),
    "adadelta_fast": (
        lambda: gtx.scale_by_adadelta(rho=0.5, eps=1e-3),
        lambda n: classic.Adadelta(n, 0.5, 1e-3),
    ),
    "rprop": (
        lambda: gtx.scale_by_rprop(0.01, 0.5, 1.2, 2e-3, 0.05),
        lambda n: classic.Rprop(n, 0.01, 0.5, 1.2, 2e-3, 0.05),
    ),
}

# Every combination of scale_by_rms's switches. Centered with bias correction estimates
# a variance of exactly 0 at step 1 (v_hat = g^2 = m_hat^2), where the result is rounding
# noise over eps; a non-zero initial scale keeps the comparison about the equations.
RMS_OPTIONS = [
    dict(eps_in_sqrt=eps_in_sqrt, centered=centered, bias_correction=bias_correction)
    for eps_in_sqrt in (True, False)
    for centered in (False, True)
    for bias_correction in (False, True)
]
for options in RMS_OPTIONS:
    name = "_".join(["rms"] + [k for k, v in options.items() if v])
    initial_scale = 0.0 if options["bias_correction"] and not options["centered"] else 0.5
    BLOCKS[name] = (
        lambda o=options, s=initial_scale: gtx.scale_by_rms(0.8, 1e-4, s, **o),
        lambda n, o=options, s=initial_scale: classic.RMSProp(n, 0.8, 1e-4, s, **o),
    )


def _runs(dtype):
    """Every block's updates over the same gradients, in one compiled scan, and the
    gradients flattened for the references."""
    rng = np.random.default_rng(1)
    gradients = trajectory.random_gradients(rng, STEPS, dtype)
    params = trajectory.random_params(rng, dtype)
    blocks = {name: make_block() for name, (make_block, _) in BLOCKS.items()}
    runs = trajectory.run_many(blocks, gradients, params)
    updates = {name: trajectory.flatten(u) for name, (u, _) in runs.items()}
    return updates, trajectory.flatten(gradients)


@pytest.fixture(scope="module")
def float64_runs():
    with jax.enable_x64(True):
        return _runs(jnp.float64)


@pytest.fixture(scope="module")
def float32_runs():
    return _runs(jnp.float32)


def _expected(name, flat_gradients):
    _, make_reference = BLOCKS[name]
    return classic.directions(make_reference(flat_gradients.shape[1]), flat_gradients)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_matches_reference_in_float64(name, float64_runs):
    updates, flat_gradients = float64_runs
    trajectory.assert_close(updates[name], _expected(name, flat_gradients), rtol=1e-10)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_matches_reference_in_float32(name, float32_runs):
    # The reference runs in float64 on the same float32 gradients.
    updates, flat_gradients = float32_runs
    trajectory.assert_close(updates[name], _expected(name, flat_gradients), rtol=1e-5)


def test_rprop_comparison_reaches_both_step_size_bounds():
    """The gradients of the rprop comparison drive step sizes to both clipping bounds."""
    rprop = classic.Rprop(17, 0.01, 0.5, 1.2, 2e-3, 0.05)
    rng = np.random.default_rng(1)
    gradients = trajectory.flatten(trajectory.random_gradients(rng, STEPS, jnp.float32))
    hit_low = hit_high = False
    for g in gradients:
        rprop.step(g)
        hit_low |= bool(np.any(rprop.step_size == 2e-3))
        hit_high |= bool(np.any(rprop.step_size == 0.05))
    assert hit_low and hit_high


def test_centered_rms_stays_finite_when_the_variance_estimate_vanishes():
    # A constant gradient has variance 0; rounding can make v - m^2 slightly negative.
    tx = gtx.scale_by_rms(0.9, 1e-8, centered=True, bias_correction=True, eps_in_sqrt=False)
    gradients = {"w": jnp.full((40, 5), 0.3, jnp.float32)}
    updates, _ = trajectory.run(tx, gradients, {"w": jnp.zeros(5, jnp.float32)})
    assert np.all(np.isfinite(np.asarray(updates["w"])))


def test_amsgrad_max_never_decreases_denominator():
    # A burst of large gradients then small ones: Adam's v_hat decays, AMSGrad's may not.
    g = jnp.asarray([10.0] * 5 + [0.1] * 25, jnp.float32)[:, None]
    gradients = {"w": g}
    params = {"w": jnp.zeros(1)}
    eps = 1e-8

    def denominators(tx, second_moment):
        def step(state, g):
            _, state = tx.update(g, state)
            return state, second_moment(state)

        _, nu = jax.lax.scan(step, tx.init(params), gradients)
        return np.sqrt(np.asarray(nu["w"])[:, 0]) + eps

    b2 = 0.9
    amsgrad = denominators(gtx.amsgrad_max(b2=b2), lambda s: s.nu_max)
    adam_nu_hat = lambda s: jax.tree.map(lambda v: v / (1 - b2**s.count), s.nu)  # noqa: E731
    adam = denominators(gtx.scale_by_adam(b2=b2), adam_nu_hat)
    assert np.all(np.diff(amsgrad) >= 0)
    assert np.any(np.diff(adam) < 0)  # the sequence does make Adam's denominator fall
    np.testing.assert_allclose(amsgrad, np.maximum.accumulate(adam), rtol=1e-6)


def test_nesterov_lookahead_iterates_are_sutskever_lookahead_points(x64):
    """gradtx's iterates phi_t equal theta_t + mu v_t of the original Sutskever et al.
    form, which evaluates the gradient at the look-ahead point."""
    rng = np.random.default_rng(2)
    curvature = rng.uniform(0.5, 5.0, size=6)
    target = rng.normal(size=6)
    lr, mu, steps = 0.05, 0.9, 60

    def loss(theta):
        return 0.5 * jnp.sum(curvature * theta**2) - jnp.sum(target * theta)

    expected = classic.sutskever_nesterov(
        np.zeros(6), lambda theta: curvature * theta - target, lr, mu, steps
    )
    tx = gtx.chain(gtx.nesterov_lookahead(mu), gtx.scale_by_learning_rate(lr))

    def step(carry, _):
        phi, state = carry
        updates, state = tx.update(jax.grad(loss)(phi), state, phi)
        phi = gtx.apply_updates(phi, updates)
        return (phi, state), phi

    phi0 = jnp.zeros(6, jnp.float64)
    _, phis = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=steps))(phi0)
    trajectory.assert_close(np.asarray(phis), expected, rtol=1e-10)
    assert np.max(np.abs(expected[-1] - target / curvature)) < 1e-2  # it did converge


def test_radam_with_b2_zero_is_never_rectified_as_in_optax():
    """b2 = 0 (allowed: [0, 1)) has rho_inf = rho_t = 1 < threshold: every update is the
    bias-corrected momentum m_t / (1 - b1^t), as Optax gives, with no log(0) error."""
    import optax

    b1 = 0.8
    rng = np.random.default_rng(4)
    gradients = rng.normal(size=(12, 3)).astype(np.float32)
    updates, _ = trajectory.run(
        gtx.scale_by_radam(b1=b1, b2=0.0), jnp.asarray(gradients), jnp.zeros(3, jnp.float32)
    )
    m, expected = np.zeros(3), []
    for t, g in enumerate(gradients.astype(np.float64), start=1):
        m = b1 * m + (1 - b1) * g
        expected.append(m / (1 - b1**t))
    np.testing.assert_allclose(np.asarray(updates), np.stack(expected), rtol=1e-5)
    optax_tx = optax.scale_by_radam(b1=b1, b2=0.0)
    optax_updates, _ = trajectory.run(optax_tx, jnp.asarray(gradients), jnp.zeros(3, jnp.float32))
    np.testing.assert_allclose(np.asarray(updates), np.asarray(optax_updates), rtol=1e-5)


def test_radam_with_nesterov_momentum_is_optaxs(x64):
    """Optax's scale_by_radam(nesterov=True), which gradtx refused (a TypeError): NAdam's
    momentum in both branches, rectified from step 6 with b2 = 0.999. In float64: in
    float32 Optax's rho_t = rho_inf - 2 t b2^t / (1 - b2^t) cancels (0.6% off r_6)."""
    gradients = jnp.asarray(np.random.default_rng(8).normal(size=(40, 3)))
    ours, _ = trajectory.run(gtx.scale_by_radam(0.8, nesterov=True), gradients, jnp.zeros(3))
    theirs, _ = trajectory.run(optax.scale_by_radam(0.8, nesterov=True), gradients, jnp.zeros(3))
    assert ours.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-10)
    plain, _ = trajectory.run(gtx.scale_by_radam(0.8), gradients, jnp.zeros(3))
    assert np.max(np.abs(np.asarray(ours) - np.asarray(plain))) > 0.1


@pytest.mark.parametrize("eps_before_bias_correction", [False, True])
def test_amsgrad_max_corrected_after_the_maximum_matches_its_equations(
    eps_before_bias_correction,
):
    """PyTorch's form (and Keras' with eps before the correction): the maximum of the
    raw v_t, divided by the current 1 - b2^t."""
    b1, b2, eps, eps_root = 0.8, 0.9, 1e-2, 1e-3
    rng = np.random.default_rng(5)
    gradients = (rng.normal(size=(30, 4)) * np.linspace(3, 0.1, 30)[:, None]).astype(np.float32)
    tx = gtx.amsgrad_max(
        b1, b2, eps, eps_root,
        correct_after_max=True, eps_before_bias_correction=eps_before_bias_correction,
    )  # fmt: skip
    updates, _ = trajectory.run(tx, jnp.asarray(gradients), jnp.zeros(4, jnp.float32))
    m, v, v_max, expected = np.zeros(4), np.zeros(4), np.zeros(4), []
    for t, g in enumerate(gradients.astype(np.float64), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        v_max = np.maximum(v_max, v)
        correction = 1 - b2**t
        if eps_before_bias_correction:
            denominator = (np.sqrt(v_max + eps_root) + eps) / np.sqrt(correction)
        else:
            denominator = np.sqrt(v_max / correction + eps_root) + eps
        expected.append(m / (1 - b1**t) / denominator)
    np.testing.assert_allclose(np.asarray(updates), np.stack(expected), rtol=1e-5)


def _count_primitive(jaxpr, name: str) -> int:
    """Equations of primitive ``name`` run by ``jaxpr``, a called sub-jaxpr once per call."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name
        for sub in jaxprs_in_params(eqn.params):
            count += _count_primitive(sub, name)
    return count


def test_radam_computes_its_rectification_once_per_dtype_not_once_per_leaf():
    # rho_t and r_t are scalars of the step: computed in the per-leaf function, 200
    # leaves of 4,096 compiled in 1.8-2.1x Optax's time (5.1-6.7 s against 2.1-2.8 s),
    # XLA merging 200 copies of the same scalar code; once per dtype, 0.84-1.18x Optax's.
    def expm1_ops(n_leaves):
        params = [jnp.ones(3, jnp.float32)] * n_leaves
        tx = gtx.scale_by_radam()
        jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params)).jaxpr
        return _count_primitive(jaxpr, "expm1")

    assert expm1_ops(1) > 0
    assert expm1_ops(8) == expm1_ops(1)


@pytest.mark.parametrize("b2", [0.999, 0.99999, 1 - 1e-7])
def test_radam_rectifies_at_the_steps_of_its_equations_in_float32(b2):
    # rho_t is the difference of two numbers near rho_inf = 2 / (1 - b2): computed
    # directly in float32 it is off by ~2 at b2 = 1 - 1e-7 (rectifying at steps 3-5,
    # 3,900x too small a step, where the equations do not) and by 0.5% at 0.99999.
    gradients = np.random.default_rng(3).uniform(0.5, 1.5, (40, 4)).astype(np.float32)
    tx = jax.jit(gtx.scale_by_radam(0.9, b2, 1e-8, strict_threshold=True).update)
    state = gtx.scale_by_radam(0.9, b2).init(jnp.zeros(4, jnp.float32))
    reference = classic.RAdam(4, 0.9, b2, 1e-8, strict=True)
    for g in gradients:
        u, state = tx(jnp.asarray(g), state)
        np.testing.assert_allclose(u, reference.step(g.astype(np.float64)), rtol=2e-5)


@pytest.mark.parametrize("b2", [0.95, 0.97, 0.99])
def test_radam_rectification_is_exact_to_rounding_in_float64(b2, x64):
    """With g = 1 every step and eps = 0, m_hat = v_hat = 1 and the update is the
    rectification r_t itself (1 before rectifying). rho_t goes through the series of
    1 - y / expm1(y) for y = t * (-log b2) < 0.5; cut after y^8, it was 8.7e-11 off
    relative near 0.5, which moved r_t by 5e-11 and RAdam's float64 trajectory by
    1.5e-10 relative (b2 = 0.95, 50 steps)."""
    steps = 60
    tx = gtx.scale_by_radam(0.8, b2, eps=0.0, strict_threshold=True)
    updates, _ = trajectory.run(tx, jnp.ones((steps, 1), jnp.float64), jnp.zeros(1, jnp.float64))
    b2_ = Fraction(b2)
    rho_inf = 2 / (1 - b2_) - 1
    expected = []
    for t in range(1, steps + 1):
        rho_t = rho_inf - 2 * t * b2_**t / (1 - b2_**t)
        if rho_t > 5:
            squared = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            expected.append(np.sqrt(float(squared)))
        else:
            expected.append(1.0)
    np.testing.assert_allclose(np.asarray(updates)[:, 0], expected, rtol=1e-13)


def test_radam_in_the_papers_form_rectifies_where_rho_t_exceeds_4(x64):
    """Liu et al. (2020), Algorithm 2: r_t where rho_t > 4, no eps. With b2 = 0.999,
    rho_5 = 4.996: the paper rectifies from step 5, the default (Optax's rho_t >= 5)
    from step 6. threshold=4 was refused (``threshold must be in (4.0, inf)``)."""
    gradients = np.random.default_rng(6).normal(size=(8, 3))
    paper = gtx.scale_by_radam(0.9, 0.999, eps=0.0, threshold=4.0, strict_threshold=True)
    updates, _ = trajectory.run(paper, jnp.asarray(gradients), jnp.zeros(3, jnp.float64))
    expected = classic.directions(
        classic.RAdam(3, 0.9, 0.999, 0.0, threshold=4.0, strict=True), gradients
    )
    trajectory.assert_close(np.asarray(updates), expected, rtol=1e-10)
    default, _ = trajectory.run(
        gtx.scale_by_radam(eps=0.0), jnp.asarray(gradients), jnp.zeros(3, jnp.float64)
    )
    np.testing.assert_array_equal(np.asarray(updates)[:4], np.asarray(default)[:4])
    assert np.all(np.abs(np.asarray(updates)[4]) < 0.1 * np.abs(np.asarray(default)[4]))


def test_radam_rectification_just_above_4_is_its_own_value(x64):
    """r_t ~ sqrt(rho_t - 4) near 4: with b2 = 0.773346, rho_5 = 4.0002, and a
    threshold below it the step is r_5 m_hat / sqrt(v_hat). rho_t was clamped at
    4.001 before r_t, a 2.2x too large step there (thresholds in (4, 4.001])."""
    b2 = 0.773346
    gradients = np.random.default_rng(7).normal(size=(6, 3))
    tx = gtx.scale_by_radam(0.9, b2, eps=0.0, threshold=4.0001)
    updates, _ = trajectory.run(tx, jnp.asarray(gradients), jnp.zeros(3, jnp.float64))
    reference = classic.RAdam(3, 0.9, b2, 0.0, threshold=4.0001)
    trajectory.assert_close(
        np.asarray(updates), classic.directions(reference, gradients), rtol=1e-10
    )


def test_radam_meta_gradient_is_finite_where_r_t_is_not_real():
    """b2 = 0.5: rho_inf = 3 < 4, never rectified, u_2 = (b1 g_1 + g_2) / (1 + b1) and
    du_2/db1 = (g_1 - g_2) / (1 + b1)^2. The rectification branch not taken was NaN
    (sqrt of a negative), and so was the meta-gradient through jnp.where."""
    g1, g2, b1 = 0.5, -1.0, 0.9

    def second_update(beta1):
        tx = gtx.scale_by_radam(b1=beta1, b2=0.5)
        state = tx.init(jnp.zeros(1))
        _, state = tx.update(jnp.array([g1]), state)
        updates, _ = tx.update(jnp.array([g2]), state)
        return updates[0]

    value, gradient = jax.jit(jax.value_and_grad(second_update))(b1)
    np.testing.assert_allclose(value, (b1 * g1 + g2) / (1 + b1), rtol=1e-6)
    np.testing.assert_allclose(gradient, (g1 - g2) / (1 + b1) ** 2, rtol=1e-5)


def test_clipping_matches_its_equations_below_at_and_above_the_bound():
    """clip: min(max(u, -c), c) per element; clip_by_global_norm: u * min(1, c / n),
    n the l2 norm of all leaves together, in NumPy float64. At or below the bound the
    updates come back bit for bit; above it within an ulp of Optax's u / n * c (one
    scalar factor 1 / (n / c), which a step recomputes instead of storing)."""
    updates = {
        "a": jnp.array([1.0, -2.0, 2.0], jnp.float32),
        "b": jnp.array([[0.1, -0.7]], jnp.float32),
    }
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(updates)]).astype(np.float64)
    norm = float(optax.tree.norm(updates))
    np.testing.assert_allclose(norm, np.linalg.norm(flat), rtol=1e-7)
    for max_norm in (0.5, 2.5, norm, 7.0, float("inf")):
        tx = gtx.clip_by_global_norm(max_norm)
        clipped, _ = jax.jit(tx.update)(updates, tx.init(None))
        got = np.concatenate([np.ravel(x) for x in jax.tree.leaves(clipped)])
        expected = flat * min(1.0, max_norm / np.linalg.norm(flat))
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"max_norm={max_norm}")
        by_optax, _ = optax.clip_by_global_norm(max_norm).update(updates, None)
        for ours, theirs, given in zip(
            jax.tree.leaves(clipped),
            jax.tree.leaves(by_optax),
            jax.tree.leaves(updates),
            strict=True,
        ):
            if max_norm >= norm:
                np.testing.assert_array_equal(ours, given, err_msg=f"max_norm={max_norm}")
            ulps = np.abs(ours - theirs) / np.spacing(np.abs(theirs))
            assert ulps.max() <= 1, (max_norm, ulps.max())
    for max_delta in (0.5, 1.5):
        tx = gtx.clip(max_delta)
        clipped, _ = jax.jit(tx.update)(updates, tx.init(None))
        got = np.concatenate([np.ravel(x) for x in jax.tree.leaves(clipped)])
        np.testing.assert_array_equal(got, np.clip(flat, -max_delta, max_delta).astype(np.float32))


def test_adam_with_eps_before_bias_correction_is_kingma_and_bas_efficient_form(x64):
    """Kingma & Ba (2015), end of section 2: alpha_t = alpha sqrt(1 - b2^t) / (1 - b1^t)
    and m_t / (sqrt(v_t) + eps_hat), eps_hat added to the uncorrected sqrt(v_t)."""
    b1, b2, eps, eps_root = 0.8, 0.95, 1e-2, 1e-4
    gradients = np.random.default_rng(4).normal(size=(30, 3))
    tx = gtx.scale_by_adam(b1, b2, eps, eps_root=eps_root, eps_before_bias_correction=True)
    updates, _ = trajectory.run(tx, jnp.asarray(gradients), jnp.zeros(3, jnp.float64))
    m, v, expected = np.zeros(3), np.zeros(3), []
    for t, g in enumerate(gradients, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        step = np.sqrt(1 - b2**t) / (1 - b1**t)
        expected.append(step * m / (np.sqrt(v + eps_root) + eps))
    np.testing.assert_allclose(np.asarray(updates), expected, rtol=1e-10)
