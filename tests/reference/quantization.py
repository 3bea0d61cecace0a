"""NumPy reference of 8-bit block-wise quantization and of Adam on 8-bit state.

Written from Dettmers, Lewis, Shleifer & Zettlemoyer (2022), "8-bit Optimizers via
Block-wise Quantization", sec. 2, and Dettmers (2016), "8-Bit Approximations for
Parallelism in Deep Learning" (the dynamic data type). Nothing here imports gradtx.
"""

from __future__ import annotations

import numpy as np


def dynamic_map(signed: bool) -> np.ndarray:
    """The 256 values of the dynamic data type, sorted, as float32.

    A code is [sign bit] [e zero bits] [indicator 1] [fraction bits]: the value is
    ``+-10^-e * f`` with ``f`` one of the midpoints of a linear grid on [0.1, 1] with as
    many cells as the fraction bits can index. 8 bits, signed: 7 bits after the sign, e
    from 0 to 6, leaving 6 - e fraction bits; unsigned: one more fraction bit. The code
    with no indicator bit is 0, and 1.0 is added so that a block's absmax is exact.
    """
    bits_after_sign = 7 if signed else 8
    grid = []
    for e in range(7):
        fraction_bits = bits_after_sign - e - 1  # after e zeros and the indicator bit
        cells = 2**fraction_bits
        edges = np.linspace(0.1, 1.0, cells + 1)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            grid.append(10.0**-e * (lo + hi) / 2)
    magnitudes = np.asarray(grid)
    table = np.concatenate([magnitudes, -magnitudes] if signed else [magnitudes])
    table = np.concatenate([table, [0.0, 1.0]])
    return np.sort(table.astype(np.float32))


def quantize(x: np.ndarray, table: np.ndarray, block_size: int):
    """(codes, absmax): per block of the raveled x, the index of the nearest table value
    to x / max|x| (the first such index on a tie), found by trying all 256."""
    flat = np.ravel(x).astype(np.float32)
    codes = np.empty(flat.size, np.uint8)
    absmax = []
    for start in range(0, flat.size, block_size):
        block = flat[start : start + block_size]
        scale = np.max(np.abs(block)) if block.size else np.float32(0)
        absmax.append(scale)
        normalized = block / (scale if scale > 0 else np.float32(1))
        distance = np.abs(normalized[:, None] - table[None, :])
        codes[start : start + block_size] = np.argmin(distance, axis=1)
    return codes.reshape(np.shape(x)), np.asarray(absmax, np.float32)


def dequantize(codes: np.ndarray, absmax: np.ndarray, table: np.ndarray, block_size: int):
    flat = np.ravel(codes)
    scales = np.repeat(absmax, block_size)[: flat.size]
    return (table[flat] * scales).reshape(np.shape(codes))


def adam_8bit(grads, params, lr, b1=0.9, b2=0.999, eps=1e-8, block_size=2048):
    """Adam (Kingma & Ba 2015) whose m and v are stored block-wise quantized (m with the
    signed map, v with the unsigned one) between steps; the math in float32."""
    signed, unsigned = dynamic_map(True), dynamic_map(False)
    p = np.asarray(params, np.float32).copy()
    m_state = quantize(np.zeros_like(p), signed, block_size)
    v_state = quantize(np.zeros_like(p), unsigned, block_size)
    trajectory = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float32)
        m = dequantize(*m_state, signed, block_size)
        v = dequantize(*v_state, unsigned, block_size)
        m = np.float32(b1) * m + np.float32(1 - b1) * g
        v = np.float32(b2) * v + np.float32(1 - b2) * g * g
        m_hat = m / np.float32(1 - b1**t)
        v_hat = v / np.float32(1 - b2**t)
        p = p - np.float32(lr) * m_hat / (np.sqrt(v_hat) + np.float32(eps))
        m_state = quantize(m, signed, block_size)
        v_state = quantize(v, unsigned, block_size)
        trajectory.append(p.copy())
    return np.stack(trajectory)
