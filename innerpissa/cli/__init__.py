"""`innerpissa` command line: train, generate, merge, export, sweep, compare, report, eval.

`app` holds the typer app and the shared option checks; each command group is one module that registers its
commands on it, imported here in the order `--help` lists them.
"""

from . import train  # noqa: F401, I001  (each import registers its commands, in this order)
from . import adapter  # noqa: F401
from . import runs  # noqa: F401
from . import report  # noqa: F401
from . import eval  # noqa: F401
from .app import main

__all__ = ["main"]
