"""Adam for complex parameters, as a plain NumPy loop of Kingma & Ba's Algorithm 1.

For complex z the first moment is complex and the second moment is the running mean
of |g|^2 (real), so the step m_hat / (sqrt(v_hat) + eps) keeps the gradient's phase.
Written from the equations, independently of gradtx.
"""

from __future__ import annotations

import numpy as np


def adam_complex(grads, params, learning_rate, b1=0.9, b2=0.999, eps=1e-8):
    """Parameters after applying Adam to each gradient of ``grads`` in turn."""
    params = np.array(params, dtype=np.complex128)
    m = np.zeros_like(params)
    v = np.zeros(params.shape, dtype=np.float64)
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, dtype=np.complex128)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g.real**2 + g.imag**2)
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        params = params - learning_rate * m_hat / (np.sqrt(v_hat) + eps)
    return params
