"""Plain NumPy loops of the published equations for the research transforms of issue 4.

Written from the papers, independently of gradtx (nothing here imports it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def swats(
    grad_fn: Callable[[np.ndarray], np.ndarray],
    w0: np.ndarray,
    steps: int,
    alpha: float,
    beta1: float,
    beta2: float,
    eps: float,
    switch_tol: float,
) -> dict:
    """Keskar & Socher 2017, Algorithm 1, on one flat vector.

    Returns the iterates w_1..w_steps, the step at which it switched (0 if never) and
    the SGD rate Lambda.
    """
    w = np.array(w0, dtype=np.float64)
    m = np.zeros_like(w)
    a = np.zeros_like(w)
    v = np.zeros_like(w)
    lam = 0.0
    phase_sgd = False
    sgd_rate = 0.0
    switch_step = 0
    iterates = []
    for k in range(1, steps + 1):
        g = grad_fn(w)
        if phase_sgd:
            v = beta1 * v + g
            w = w - (1 - beta1) * sgd_rate * v
            iterates.append(w.copy())
            continue
        m = beta1 * m + (1 - beta1) * g
        a = beta2 * a + (1 - beta2) * g * g
        p = -alpha * np.sqrt(1 - beta2**k) / (1 - beta1**k) * m / (np.sqrt(a) + eps)
        w = w + p
        if p @ g != 0:
            gamma = (p @ p) / (-(p @ g))
            lam = beta2 * lam + (1 - beta2) * gamma
            if k > 1 and abs(lam / (1 - beta2**k) - gamma) < switch_tol:
                phase_sgd = True
                sgd_rate = lam / (1 - beta2**k)
                switch_step = k
        iterates.append(w.copy())
    return {"iterates": np.array(iterates), "switch_step": switch_step, "sgd_rate": sgd_rate}


def lookahead_sgd(
    grad_fn: Callable[[np.ndarray], np.ndarray],
    w0: np.ndarray,
    steps: int,
    learning_rate: float,
    sync_period: int,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Zhang et al. 2019, Algorithm 1, with plain SGD as the inner optimizer.

    Returns the fast weights the user holds after every step (reset to the slow
    weights at each sync) and the slow weights after every step.
    """
    slow = np.array(w0, dtype=np.float64)
    fast = slow.copy()
    fasts, slows = [], []
    for t in range(1, steps + 1):
        fast = fast - learning_rate * grad_fn(fast)
        if t % sync_period == 0:
            slow = slow + alpha * (fast - slow)
            fast = slow.copy()
        fasts.append(fast.copy())
        slows.append(slow.copy())
    return np.array(fasts), np.array(slows)


def ema_of_iterates(iterates: np.ndarray, w0: np.ndarray, decay: float, debias: bool):
    """EMA of p_1..p_T: from zero with Adam's bias correction, or from w0 without."""
    ema = np.zeros_like(w0) if debias else np.array(w0, dtype=np.float64)
    out = []
    for t, p in enumerate(iterates, start=1):
        ema = decay * ema + (1 - decay) * p
        out.append(ema / (1 - decay**t) if debias else ema.copy())
    return np.array(out)


def local_gains(grads: np.ndarray, increase, decrease, min_gain, max_gain):
    """Local gain rule with the previous gradient: +increase on agreement, *decrease on
    a sign flip, clipped; returns the gains and the steps gain * g for every t."""
    gains = np.ones(grads.shape[1:])
    previous = np.zeros(grads.shape[1:])
    all_gains, steps = [], []
    for g in grads:
        for i in np.ndindex(g.shape):
            if g[i] * previous[i] > 0:
                gains[i] = gains[i] + increase
            elif g[i] * previous[i] < 0:
                gains[i] = gains[i] * decrease
            gains[i] = min(max(gains[i], min_gain), max_gain)
        previous = g.copy()
        all_gains.append(gains.copy())
        steps.append(gains * g)
    return np.array(all_gains), np.array(steps)


def ista(a: np.ndarray, b: np.ndarray, l1: float, learning_rate: float, steps: int):
    """Proximal gradient descent on 0.5 ||A x - b||^2 + l1 ||x||_1 (Beck & Teboulle)."""
    x = np.zeros(a.shape[1])
    for _ in range(steps):
        z = x - learning_rate * a.T @ (a @ x - b)
        x = np.sign(z) * np.maximum(np.abs(z) - learning_rate * l1, 0.0)
    return x


def max_norm_projection(w: np.ndarray, max_value: float, axis: int | tuple[int, ...]) -> np.ndarray:
    """Rescales the slices along ``axis`` whose l2 norm exceeds max_value onto the sphere."""
    norms = np.sqrt(np.sum(w * w, axis=axis, keepdims=True))
    return np.where(norms > max_value, w * max_value / np.where(norms > 0, norms, 1), w)
