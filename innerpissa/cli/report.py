"""CLI command `innerpissa report` (registered on the app by importing this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .app import app, check_out, warn


@app.command()
def report(
    runs_root: Annotated[Path, typer.Argument(help="results root of `sweep`/`compare` (holding runs/<hash>/), or runs/ itself")],
    out: Annotated[Path, typer.Option(help="output directory for tables, figures, report.md and report.html")] = Path("report"),
    overwrite: Annotated[bool, typer.Option(help="replace an existing OUT")] = False,
) -> None:
    """Build the paper report: Tables 1–2, ideas that failed, Figures 1–3, samples; markdown, LaTeX and one HTML file."""
    from ..io import atomic_dir
    from ..experiments.collect import skipped_dirs
    from ..experiments.report import build_report

    check_out(out, overwrite)
    if runs_root.is_dir():  # a missing root is build_report's one-line error
        for _, row in skipped_dirs(runs_root).iterrows():
            warn(f"report skips {runs_root / row['path']}: {row['reason']}")
    with Console(stderr=True).status(f"building report from {runs_root}"), atomic_dir(out) as tmp:
        page = out / build_report(runs_root, tmp).relative_to(tmp)
    typer.echo(f"report written to {out} (open {page} in a browser)")
