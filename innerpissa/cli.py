"""`innerpissa` command line: train, generate, merge, eval, compare, sweep, report."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def main() -> None:
    """Entry point: run the app, turning known input errors into a one-line message and exit 2."""
    from .concepts import ConceptError
    from .models import ModelLoadError

    try:
        app(standalone_mode=False)
    except (UserError, ConceptError, ModelLoadError, FileNotFoundError, ValueError) as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        sys.exit(2)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


# --- commands are registered below by their modules (one import per command) ---

from .experiments import report_cli as _report_cli  # noqa: E402,F401  (report)
