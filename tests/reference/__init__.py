"""Plain NumPy loops of the published update equations, written independently of gradtx.

Each reference takes a list of gradient arrays (one per step) and returns the list of
parameters after each step, so tests compare whole trajectories.
"""
