"""`innerpissa` command line: train, generate, merge, export, sweep, compare, report, eval.

`app` holds the typer app and the shared option checks; each command group is one module that registers its
commands on it, imported here in the order `--help` lists them.
"""

from . import adapter, eval, report, runs, train  # noqa: F401  (registers the commands)
from .app import main

__all__ = ["main"]
