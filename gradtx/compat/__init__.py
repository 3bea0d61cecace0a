"""Exact parity with other libraries' optimizers: ``gradtx.compat.torch``, ``gradtx.compat.keras``.

Each function takes the other library's argument names and defaults and returns a plain
gradtx chain of building blocks that produces the same numbers, step for step. The chain
shows where the conventions differ (eps inside or outside the square root, the learning
rate inside or outside the momentum buffer, L2 or decoupled weight decay); see
``docs/conventions.md``.
"""
