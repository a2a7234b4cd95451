"""The typer app every command registers on, its entry point (one-line errors, Ctrl-C notes) and the option checks
the commands share."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import typer.main

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


INTERRUPTED = 130  # typer's exit code for Ctrl-C (KeyboardInterrupt), the shell's 128 + SIGINT
_interrupt_note: list[Callable[[], str]] = []  # the running command's answer to "what survives a Ctrl-C now?"


def on_interrupt(note: Callable[[], str]) -> None:
    """Register what a Ctrl-C from here on leaves on disk and how to continue; `main` prints `note()` as one line.

    A command that registers nothing writes its output atomically at the end, so an interrupt leaves nothing."""
    _interrupt_note[:] = [note]


def main() -> None:
    """Entry point: run the app; bad input (ours or a usage error) is one `error:` line on stderr and exit 2; Ctrl-C
    is one `interrupted:` line saying what was saved and how to continue (`on_interrupt`), exit 130."""
    from ..concepts import ConceptError
    from ..models import ModelLoadError

    _interrupt_note.clear()
    try:
        code = app(args=expand_list_options(sys.argv[1:]) or ["--help"], prog_name="innerpissa", standalone_mode=False)
    except typer.TyperException as e:  # typer's own click errors: unknown command/option, missing or bad value
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _fail(f"{e.format_message()}{hint}")
    except (UserError, ConceptError, ModelLoadError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    except typer.Abort:
        sys.exit(1)
    if code == INTERRUPTED:
        note = _interrupt_note[0]() if _interrupt_note else "nothing was written (outputs are only written complete)"
        typer.secho("interrupted: " + " ".join(note.split()), err=True, fg="yellow")
    sys.exit(code if isinstance(code, int) else 0)  # `typer.Exit(n)` arrives here as a return value


def _fail(message: str) -> None:
    typer.secho("error: " + " ".join(message.split()), err=True, fg="red")  # always one line
    sys.exit(2)


def warn(message: str) -> None:
    """One `warning:` line on stderr."""
    typer.secho(f"warning: {message}", err=True, fg="yellow")


def expand_list_options(args: list[str]) -> list[str]:
    """`--coeffs -1 0 1` -> `--coeffs -1 --coeffs 0 --coeffs 1` for the repeatable options of the invoked command,
    so every list option takes the README's space-separated form (negative numbers too) as well as repetition."""
    command = typer.main.get_command(app)
    sub = getattr(command, "commands", {}).get(args[0]) if args else None
    if sub is None:
        return args  # no such command (click reports it) or a top-level option
    multi = {o for p in sub.params if getattr(p, "multiple", False) and p.param_type_name == "option" for o in p.opts}
    out, i = [args[0]], 1
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if args[i] == "--":
            return out + args[i:]
        if name not in multi:
            out.append(args[i])
            i += 1
            continue
        values = [value] if eq else args[i + 1:i + 2]  # the option's own value, taken as-is (may start with "-")
        i += 1 if eq else 2
        while i < len(args) and (not args[i].startswith("-") or _is_number(args[i])):
            values.append(args[i])
            i += 1
        out += [x for v in values for x in (name, v)] if values else [name]
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


COEFF_MAX = 2.0  # |c| past this is outside the range adapters are trained (±1) and documented (README) for


def check_coeffs(values: list[float] | None, option: str = "--coeffs", default: tuple[float, ...] = (-1.0, 0.0, 1.0),
                 need_zero: bool = False) -> list[float]:
    """Coefficients validated before any work: finite, distinct (and with 0 where needed) or UserError; a warning
    names the coherent range |c| <= COEFF_MAX for any value past it."""
    cs = [float(c) for c in values] if values else list(default)
    bad = [c for c in cs if not math.isfinite(c)]
    if bad:
        example = "-1 0 1" if option == "--coeffs" else "0.8"
        raise UserError(f"{option} {' '.join(f'{c:g}' for c in bad)}: coefficients must be finite numbers, e.g. {option} {example}")
    if len(set(cs)) != len(cs):
        raise UserError(f"{option} has duplicates ({' '.join(f'{c:g}' for c in cs)}): give each coefficient once")
    if need_zero and 0.0 not in cs:
        raise UserError(f"{option} {' '.join(f'{c:g}' for c in cs)} must include 0 (the unsteered baseline for the "
                        f"effect and ΔNLL), e.g. {option} -1 0 1")
    far = [c for c in cs if abs(c) > COEFF_MAX]
    if far:
        warn(f"{option} {' '.join(f'{c:g}' for c in far)} outside the coherent range |c| <= {COEFF_MAX:g} "
             "(adapters are trained at c = ±1); expect degenerate output")
    return cs


def check_out(out: Path, overwrite: bool, option: str = "--out") -> None:
    """Refuse an existing output before any work unless --overwrite; an existing file is never a valid output dir."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} is a file; pass a directory path")
    if out.exists() and not overwrite:
        raise UserError(f"{option} {out} already exists; pass --overwrite to replace it or choose another {option}")


PIPE_WIDTH = 400  # columns when stdout is not a terminal: tables keep their natural width


def console() -> "Console":
    """A rich console: the terminal's width, or wide enough never to cut a table when piped (rich would use 80)."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=PIPE_WIDTH)


def loading(spec: str) -> Status:
    """A spinner on stderr while a model loads (its first use downloads and converts it: minutes); a terminal shows
    it and it vanishes, so piped output and one-line errors stay as they are."""
    from rich.console import Console

    return Console(stderr=True).status(f"loading {spec} (the first use of a model downloads and converts it)")
