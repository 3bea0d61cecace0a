"""Plain NumPy references for the classic optimizers, written from the published equations.

Nothing here imports gradtx. Every algorithm is elementwise, so a reference works on one
flat float64 vector (the test concatenates the leaves of its tree). A block is a small
class whose ``step(g)`` returns the direction ``d`` the parameters move against
(``p <- p - lr * d``); an optimizer is a loop over the steps that returns the parameter
trajectory, one row per step.

Notation: g the gradient, t the step counted from 1, p the parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import numpy as np


def directions(block, grads: np.ndarray) -> np.ndarray:
    """The directions a block returns for each row of ``grads`` (shape [steps, n])."""
    return np.stack([block.step(np.asarray(g, np.float64)) for g in grads])


# --- blocks -----------------------------------------------------------------------------


class HeavyBall:
    """Polyak's heavy ball; with ``nesterov`` the look-ahead of Sutskever et al. (2013).

    b_t = mu b_{t-1} + g_t;  d_t = b_t, or g_t + mu b_t (nesterov).
    """

    def __init__(self, n: int, momentum: float, nesterov: bool = False):
        self.mu, self.nesterov = momentum, nesterov
        self.b = np.zeros(n)

    def step(self, g):
        self.b = self.mu * self.b + g
        return g + self.mu * self.b if self.nesterov else self.b


class MovingAverage:
    """e_t = decay e_{t-1} + (1-decay) g_t; d_t = e_t / (1 - decay^t) when debiased."""

    def __init__(self, n: int, decay: float, debias: bool = True):
        self.decay, self.debias = decay, debias
        self.e, self.t = np.zeros(n), 0

    def step(self, g):
        self.t += 1
        self.e = self.decay * self.e + (1 - self.decay) * g
        return self.e / (1 - self.decay**self.t) if self.debias else self.e


class Adam:
    """Kingma & Ba (2015), Algorithm 1; ``nesterov``: Dozat's NAdam in Optax's form.

    m_t = b1 m + (1-b1) g;  v_t = b2 v + (1-b2) g^2;  m^ = m_t/(1-b1^t);  v^ = v_t/(1-b2^t)
    NAdam: m^ = b1 m_t/(1-b1^(t+1)) + (1-b1) g/(1-b1^t).
    d = m^ / (sqrt(v^ + eps_root) + eps).
    """

    def __init__(self, n, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, nesterov=False):
        self.b1, self.b2, self.eps, self.eps_root, self.nesterov = b1, b2, eps, eps_root, nesterov
        self.m, self.v, self.t = np.zeros(n), np.zeros(n), 0

    def step(self, g):
        b1, b2 = self.b1, self.b2
        self.t += 1
        t = self.t
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g**2
        if self.nesterov:
            m_hat = b1 * self.m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = self.m / (1 - b1**t)
        v_hat = self.v / (1 - b2**t)
        return m_hat / (np.sqrt(v_hat + self.eps_root) + self.eps)


class RAdam:
    """Liu et al. (2020), Algorithm 2, with Adam's m^ and v^ as above.

    rho_inf = 2/(1-b2) - 1;  rho_t = rho_inf - 2 t b2^t / (1-b2^t);  where rho_t >= threshold
    (> with ``strict``): r = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))
    and d = r m^ / (sqrt(v^) + eps); else d = m^. ``nesterov``: m^ is NAdam's, as in
    ``Adam`` (Optax's option).
    """

    def __init__(self, n, b1=0.9, b2=0.999, eps=1e-8, threshold=5.0, strict=False, nesterov=False):
        self.b1, self.b2, self.eps, self.threshold, self.strict = b1, b2, eps, threshold, strict
        self.nesterov = nesterov
        self.m, self.v, self.t = np.zeros(n), np.zeros(n), 0

    def step(self, g):
        b1, b2 = self.b1, self.b2
        self.t += 1
        t = self.t
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g**2
        if self.nesterov:
            m_hat = b1 * self.m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = self.m / (1 - b1**t)
        # In exact rational arithmetic: in double precision rho_t is itself off by ~3e-3
        # at b2 = 1 - 1e-7 (2 t b2^t / (1 - b2^t) ~ 2e7 from a 1 - b2^t ~ 1e-6).
        b2_, power = Fraction(b2), Fraction(b2) ** t
        rho_inf = float(2 / (1 - b2_) - 1)
        rho_t = float(2 / (1 - b2_) - 1 - 2 * t * power / (1 - power))
        if rho_t > self.threshold or (not self.strict and rho_t == self.threshold):
            r = np.sqrt(
                (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            )
            return r * m_hat / (np.sqrt(self.v / (1 - b2**t)) + self.eps)
        return m_hat


class AMSGrad:
    """Reddi, Kale & Kumar (2018), with Optax's bias corrections (switchable).

    v_max_t = max(v_max_{t-1}, v_t / (1 - b2^t))
    d = m_t / (1 - b1^t) / (sqrt(v_max_t + eps_root) + eps)
    Without bias corrections: the paper's Algorithm 2.
    """

    def __init__(
        self, n, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, correct_mu=True, correct_nu=True
    ):
        self.b1, self.b2, self.eps, self.eps_root = b1, b2, eps, eps_root
        self.correct_mu, self.correct_nu = correct_mu, correct_nu
        self.m, self.v, self.v_max, self.t = np.zeros(n), np.zeros(n), np.zeros(n), 0
        self.denominators = []  # kept so a test can inspect them

    def step(self, g):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g**2
        m_hat = self.m / (1 - self.b1**self.t) if self.correct_mu else self.m
        v_hat = self.v / (1 - self.b2**self.t) if self.correct_nu else self.v
        self.v_max = np.maximum(self.v_max, v_hat)
        denominator = np.sqrt(self.v_max + self.eps_root) + self.eps
        self.denominators.append(denominator)
        return m_hat / denominator


class AdaMax:
    """Kingma & Ba (2015), sec. 7: u_t = max(b2 u_{t-1}, |g| + eps); d = m_t/(1-b1^t) / u_t."""

    def __init__(self, n, b1=0.9, b2=0.999, eps=1e-8):
        self.b1, self.b2, self.eps = b1, b2, eps
        self.m, self.u, self.t = np.zeros(n), np.zeros(n), 0

    def step(self, g):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.u = np.maximum(self.b2 * self.u, np.abs(g) + self.eps)
        return self.m / (1 - self.b1**self.t) / self.u


class RMSProp:
    """Tieleman & Hinton (2012); centered: Graves (2013) eq. 38-45.

    v_t = rho v + (1-rho) g^2 (v_0 = initial_scale); centered: m_t = rho m + (1-rho) g and
    the denominator uses v_t - m_t^2. Optional bias correction divides v_t and m_t by
    1 - rho^t. d = g / sqrt(s + eps) (eps_in_sqrt) or g / (sqrt(s) + eps).
    """

    def __init__(
        self,
        n,
        decay=0.9,
        eps=1e-8,
        initial_scale=0.0,
        eps_in_sqrt=True,
        centered=False,
        bias_correction=False,
    ):
        self.rho, self.eps, self.eps_in_sqrt = decay, eps, eps_in_sqrt
        self.centered, self.bias_correction = centered, bias_correction
        self.v, self.m, self.t = np.full(n, float(initial_scale)), np.zeros(n), 0

    def step(self, g):
        self.t += 1
        self.v = self.rho * self.v + (1 - self.rho) * g**2
        self.m = self.rho * self.m + (1 - self.rho) * g
        correction = (1 - self.rho**self.t) if self.bias_correction else 1.0
        s = self.v / correction
        if self.centered:
            s = s - (self.m / correction) ** 2
        if self.eps_in_sqrt:
            return g / np.sqrt(s + self.eps)
        return g / (np.sqrt(s) + self.eps)


class Adagrad:
    """Duchi, Hazan & Singer (2011), Optax's form: d = g / sqrt(s0 + sum_tau g_tau^2 + eps).

    ``eps_in_sqrt=False``: the paper's diagonal form, d = g / (delta + sqrt(sum_tau
    g_tau^2)) with H_t = delta I + diag(sum_tau g_tau^2)^(1/2) (s0 = 0 in the paper).
    """

    def __init__(self, n, initial_accumulator_value=0.1, eps=1e-7, eps_in_sqrt=True):
        self.s0, self.eps, self.eps_in_sqrt = initial_accumulator_value, eps, eps_in_sqrt
        self.history = []

    def step(self, g):
        self.history.append(g)
        total = self.s0 + np.sum(np.square(self.history), axis=0)
        if not self.eps_in_sqrt:
            return g / (self.eps + np.sqrt(total))
        return np.where(total > 0, g / np.sqrt(total + self.eps), 0.0)


class Adadelta:
    """Zeiler (2012), Algorithm 1.

    E[g^2]_t = rho E[g^2] + (1-rho) g^2;  dx = RMS[dx]_{t-1} / RMS[g]_t * g;
    E[dx^2]_t = rho E[dx^2] + (1-rho) dx^2;  RMS[y] = sqrt(E[y^2] + eps).
    """

    def __init__(self, n, rho=0.9, eps=1e-6):
        self.rho, self.eps = rho, eps
        self.mean_g2, self.mean_dx2 = np.zeros(n), np.zeros(n)

    def step(self, g):
        self.mean_g2 = self.rho * self.mean_g2 + (1 - self.rho) * g**2
        dx = np.sqrt(self.mean_dx2 + self.eps) / np.sqrt(self.mean_g2 + self.eps) * g
        self.mean_dx2 = self.rho * self.mean_dx2 + (1 - self.rho) * dx**2
        return dx


class Rprop:
    """iRprop- (Igel & Hüsken 2000, after Riedmiller & Braun 1993), element by element.

    If the gradient kept its sign, grow the step (at most step_max); if it flipped,
    shrink it (at least step_min), skip this step and forget the gradient. The direction
    is step * sign(g). Initial step ``learning_rate`` (within [step_min, step_max]).
    """

    def __init__(self, n, learning_rate, eta_minus=0.5, eta_plus=1.2, step_min=1e-6, step_max=50.0):
        self.eta_minus, self.eta_plus = eta_minus, eta_plus
        self.step_min, self.step_max = step_min, step_max
        self.step_size = np.full(n, float(learning_rate))
        self.previous = np.zeros(n)

    def step(self, g):
        g = np.array(g, np.float64)
        d = np.zeros_like(g)
        for i in range(g.size):
            if g[i] * self.previous[i] > 0:
                self.step_size[i] = min(self.step_size[i] * self.eta_plus, self.step_max)
            elif g[i] * self.previous[i] < 0:
                self.step_size[i] = max(self.step_size[i] * self.eta_minus, self.step_min)
                g[i] = 0.0
            d[i] = np.sign(g[i]) * self.step_size[i]
        self.previous = g
        return d


# --- the Sutskever et al. form of Nesterov's method ---------------------------------------


def sutskever_nesterov(
    theta0: np.ndarray, grad: Callable[[np.ndarray], np.ndarray], lr: float, mu: float, steps: int
) -> np.ndarray:
    """Sutskever, Martens, Dahl & Hinton (2013), eq. 3-4, with the gradient evaluated at
    the look-ahead point; returns the look-ahead points ``theta_t + mu v_t`` for t = 1..steps.

    v_{t+1} = mu v_t - lr grad(theta_t + mu v_t);  theta_{t+1} = theta_t + v_{t+1}.
    """
    theta, v = np.array(theta0, np.float64), np.zeros_like(theta0, np.float64)
    lookaheads = []
    for _ in range(steps):
        v = mu * v - lr * grad(theta + mu * v)
        theta = theta + v
        lookaheads.append(theta + mu * v)
    return np.stack(lookaheads)


# --- optimizers: parameter trajectories ---------------------------------------------------


def _descend(params0, grads, lr, block, l2=0.0, decoupled=0.0):
    """p <- p - lr * (d(g + l2 p) + decoupled p), one row of the trajectory per step."""
    p = np.array(params0, np.float64)
    trajectory = []
    for g in grads:
        d = block.step(np.asarray(g, np.float64) + l2 * p)
        p = p - lr * (d + decoupled * p)
        trajectory.append(p)
    return np.stack(trajectory)


def sgd(params0, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """SGD; momentum as PyTorch (dampening 0); weight_decay is L2, added to g first."""
    n = np.size(params0)
    if momentum == 0.0:
        return _descend(params0, grads, lr, HeavyBall(n, 0.0), l2=weight_decay)
    return _descend(params0, grads, lr, HeavyBall(n, momentum, nesterov), l2=weight_decay)


def adagrad(params0, grads, lr, initial_accumulator_value=0.1, eps=1e-7):
    return _descend(params0, grads, lr, Adagrad(np.size(params0), initial_accumulator_value, eps))


def rmsprop(
    params0,
    grads,
    lr,
    decay=0.9,
    eps=1e-8,
    initial_scale=0.0,
    eps_in_sqrt=True,
    centered=False,
    momentum=0.0,
    nesterov=False,
    bias_correction=False,
):
    """RMSProp; momentum in PyTorch's form, b <- mu b + g/denominator, p <- p - lr b."""
    n = np.size(params0)
    rms = RMSProp(n, decay, eps, initial_scale, eps_in_sqrt, centered, bias_correction)
    p, b = np.array(params0, np.float64), np.zeros(n)
    trajectory = []
    for g in grads:
        d = rms.step(np.asarray(g, np.float64))
        b = momentum * b + d
        p = p - lr * ((d + momentum * b) if nesterov else b)
        trajectory.append(p)
    return np.stack(trajectory)


def adadelta(params0, grads, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    return _descend(params0, grads, lr, Adadelta(np.size(params0), rho, eps), l2=weight_decay)


def adam(params0, grads, lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, nesterov=False):
    block = Adam(np.size(params0), b1, b2, eps, eps_root, nesterov)
    return _descend(params0, grads, lr, block)


def adam_l2(params0, grads, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """Adam with L2 regularization: the decay term is rescaled by the preconditioner."""
    return _descend(params0, grads, lr, Adam(np.size(params0), b1, b2, eps), l2=weight_decay)


def adamw(
    params0, grads, lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, weight_decay=1e-4, nesterov=False
):
    """Loshchilov & Hutter (2019), with the decay multiplied by lr (Optax, PyTorch)."""
    block = Adam(np.size(params0), b1, b2, eps, eps_root, nesterov)
    return _descend(params0, grads, lr, block, decoupled=weight_decay)


def amsgrad(params0, grads, lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0):
    return _descend(params0, grads, lr, AMSGrad(np.size(params0), b1, b2, eps, eps_root))


def adamax(params0, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    return _descend(params0, grads, lr, AdaMax(np.size(params0), b1, b2, eps))


def nadam(params0, grads, lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0):
    return adam(params0, grads, lr, b1, b2, eps, eps_root, nesterov=True)


def nadamw(params0, grads, lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, weight_decay=1e-4):
    return adamw(params0, grads, lr, b1, b2, eps, eps_root, weight_decay, nesterov=True)


def rprop(params0, grads, lr, eta_minus=0.5, eta_plus=1.2, min_step_size=1e-6, max_step_size=50.0):
    block = Rprop(np.size(params0), lr, eta_minus, eta_plus, min_step_size, max_step_size)
    return _descend(params0, grads, 1.0, block)
