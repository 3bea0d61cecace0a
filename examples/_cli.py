"""The examples' shared command-line rules: an option given explicitly wins over
``--quick``'s value, and a bad value is a usage error raised before anything is loaded
or trained (not a traceback after minutes of work, not a silent clip).

Kept short on purpose, like ``_digits.py``: copy it next to an example and the example
runs on its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def apply_quick_defaults(args: argparse.Namespace, **defaults: tuple[object, object]) -> None:
    """Fills in the options that the command line left out.

    ``defaults`` maps an option's name to ``(its default, its value under --quick)``; the
    option is declared with ``default=None``, so ``None`` means "not given". An option
    given explicitly keeps its value, with or without ``--quick``::

        _cli.apply_quick_defaults(args, steps=(300, 20))  # --quick --steps 50: 50 steps
    """
    for name, (default, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)


def require(
    parser: argparse.ArgumentParser, ok: bool, option: str, value: object, expected: str
) -> None:
    """A usage error unless ``ok``: "``option`` must be ``expected``, got ``value``"."""
    if not ok:
        parser.error(f"{option} must be {expected}, got {value}")


def make_folder(parser: argparse.ArgumentParser, out: Path, option: str = "--out") -> None:
    """Creates ``out`` (and its parents) now, so that a file in the way is a usage error
    before the work, not a traceback after it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"{option} must be a folder that can be created, got {str(out)!r}: {error}")
