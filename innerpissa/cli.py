"""`innerpissa` command line: train, generate, merge, eval, compare, sweep, report."""

from __future__ import annotations

import sys
from pathlib import Path

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

def _coeffs(values: list[float] | None, default: tuple[float, ...] = (-1.0, 0.0, 1.0)) -> list[float]:
    return list(values) if values else list(default)


@app.command()
def train(
    concept: str | None = typer.Option(None, help="built-in concept name or path to a YAML spec [default: honesty]"),
    positive: str | None = typer.Option(None, help="instead of --concept: the positive persona word, e.g. honest"),
    negative: str | None = typer.Option(None, help="with --positive: the contrasting word, e.g. dishonest"),
    model: str = typer.Option("smollm2-135m", help="smollm2-135m, a .gguf file, a model dir or a HF id"),
    out: Path = typer.Option(Path("runs/honesty"), help="output directory for the adapter"),
    config: Path | None = typer.Option(None, help="YAML with `adapter:`, `loss:`, `train:` overrides"),
    steps: int | None = typer.Option(None, help="optimizer steps (overrides config)"),
    seed: int | None = typer.Option(None, help="random seed (overrides config)"),
    resume: bool = typer.Option(False, help="continue from the checkpoint in OUT/checkpoint"),
    precision: str | None = typer.Option(None, help="auto | fp32 | bf16 (overrides config; default auto)"),
) -> None:
    """Train an InnerPiSSA adapter on a concept's contrastive pairs and save it to OUT."""
    import yaml

    from .concepts import concept_from_words, load_concept
    from .concepts.fit_data import PAIRS_FILE, fit_pairs, pairs_record
    from .io import atomic_write_json
    from .config import AdapterConfig, LossConfig, TrainConfig, parse_section
    from .models import load_model
    from .steerers.innerpissa import InnerPiSSASteerer

    overrides: dict = {}
    if config is not None:
        if not config.is_file():
            raise UserError(f"config file not found: {config}")
        overrides = yaml.safe_load(config.read_text()) or {}
        unknown = set(overrides) - {"adapter", "loss", "train"}
        if unknown:
            raise UserError(f"{config}: unknown sections {sorted(unknown)}; use adapter, loss, train")
    tr = dict(overrides.get("train", {}))
    if steps is not None:
        tr["steps"] = steps
    if seed is not None:
        tr["seed"] = seed
    if precision is not None:
        tr["precision"] = precision
    sections = {"adapter": overrides.get("adapter") or {}, "loss": overrides.get("loss") or {}, "train": tr}
    for name, cls in (("adapter", AdapterConfig), ("loss", LossConfig), ("train", TrainConfig)):
        parse_section(cls, sections[name], name)  # one-line error naming the bad key/value (exit 2)
    if (positive is None) != (negative is None) or (positive is not None and concept is not None):
        raise UserError("give --concept NAME_OR_YAML, or both --positive WORD and --negative WORD (not both forms)")
    spec = concept_from_words(positive, negative) if positive is not None else load_concept(concept or "honesty")
    steerer = InnerPiSSASteerer(**sections, model=model, concept=concept or spec.name)
    train_pairs, val_pairs = fit_pairs(spec)  # the sweep's pairs too: split by PAIR_SEED, not --seed
    m, tok = load_model(model)
    ckpt = out / "checkpoint"
    if out.exists() and (out / "steerer.json").exists() and not resume:
        raise UserError(f"{out} already holds a trained adapter; choose another --out or delete it")
    steerer.fit(m, tok, train_pairs, val_pairs, ckpt_dir=ckpt, resume=resume)
    steerer.save(out)
    atomic_write_json(out / PAIRS_FILE, pairs_record(spec, train_pairs, val_pairs))  # for eval's leakage check
    r = steerer.result
    typer.echo(
        f"saved adapter to {out} (best val step {r.best_step}, val shift +1 vs -1 = {r.val_shift:.3f}"
        f"{', sign flipped' if r.sign_flipped else ''})"
    )


def _load_adapter_model(adapter: Path, model: str | None):
    """(model, tok, steerer) for a saved steerer directory; the base model spec is read from it if not given."""
    import json

    from .models import load_model
    from .steerers import load_steerer

    meta = adapter / "steerer.json"
    if not meta.is_file():
        raise UserError(f"{adapter} is not a trained adapter directory (no steerer.json); run `innerpissa train` first")
    spec = model or json.loads(meta.read_text()).get("params", {}).get("model")
    if not spec:
        raise UserError(f"{adapter}/steerer.json names no base model; pass --model")
    m, tok = load_model(spec)
    return m, tok, load_steerer(m, adapter)


@app.command()
def generate(
    adapter: Path = typer.Option(..., help="directory written by `innerpissa train`"),
    prompt: list[str] = typer.Option(..., help="user prompt (repeatable)"),
    coeffs: list[float] = typer.Option(None, help="steering coefficients (default -1 0 1)"),
    model: str | None = typer.Option(None, help="base model spec (default: the one the adapter was trained on)"),
    max_new_tokens: int = typer.Option(48, min=1),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 (auto: bf16 where the hardware has it)"),
) -> None:
    """Greedy completions side by side at each coefficient."""
    from rich.console import Console
    from rich.table import Table

    from .generate import generate_table
    from .precision import check as check_precision

    check_precision(precision)
    m, tok, steerer = _load_adapter_model(adapter, model)
    cs = _coeffs(coeffs)
    df = generate_table(m, tok, steerer, prompt, cs, max_new_tokens, precision)
    for p in prompt:
        t = Table(title=p, show_lines=True)
        for c in cs:
            t.add_column(f"c = {c:+g}")
        t.add_row(*[df[(df.prompt == p) & (df.coeff == c)].completion.iloc[0] for c in cs])
        Console().print(t)


@app.command()
def merge(
    adapter: Path = typer.Option(..., help="directory written by `innerpissa train`"),
    coeff: float = typer.Option(..., help="coefficient to bake into the weights"),
    out: Path = typer.Option(..., help="output directory for a plain transformers model"),
    model: str | None = typer.Option(None, help="base model spec (default: the one the adapter was trained on)"),
) -> None:
    """Fold the adapter at COEFF into plain weights and save a normal transformers model."""
    import shutil
    import tempfile

    from .adapter import merge as merge_adapter

    if out.exists():
        raise UserError(f"{out} already exists; choose a new --out")
    m, tok, _ = _load_adapter_model(adapter, model)
    merge_adapter(m, coeff)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        m.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    typer.echo(f"merged adapter at c={coeff:g} into {out}")


@app.command()
def export(
    adapter: Path = typer.Option(..., help="directory written by `innerpissa train`"),
    coeff: list[float] = typer.Option(..., help="coefficient to freeze (repeatable: one adapter per value)"),
    out: Path = typer.Option(..., help="output directory (one --coeff: the adapter; several: OUT/c+0.8, ...)"),
    format: str = typer.Option("peft-lora", "--format", help="peft-lora: a standard peft LoRA adapter"),
    model: str | None = typer.Option(None, help="base model spec (default: the one the adapter was trained on)"),
) -> None:
    """Write the adapter at each COEFF as an exact peft LoRA adapter (PeftModel.from_pretrained loads it)."""
    import math
    import shutil
    import tempfile

    from .adapter.export import save_peft_lora

    if format != "peft-lora":
        raise UserError(f"unknown export format {format!r}; use --format peft-lora")
    bad = [c for c in coeff if not math.isfinite(c)]
    if bad or len(set(coeff)) != len(coeff):
        raise UserError(f"--coeff values must be finite and distinct, got {coeff}")
    if out.exists():
        raise UserError(f"{out} already exists; choose a new --out")
    m, _, steerer = _load_adapter_model(adapter, model)
    if steerer.name != "innerpissa":
        raise UserError(f"{adapter} holds a {steerer.name!r} steerer; export supports InnerPiSSA adapters only")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for c in coeff:
            save_peft_lora(m, c, tmp if len(coeff) == 1 else tmp / f"c{c:+g}")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    names = "" if len(coeff) == 1 else " (" + ", ".join(f"c{c:+g}" for c in coeff) + ")"
    typer.echo(f"exported peft LoRA adapter(s) at c={', '.join(f'{c:g}' for c in coeff)} to {out}{names}")



from .experiments import commands as _experiment_commands  # noqa: E402,F401  (sweep, compare)
from .experiments import report_cli as _report_cli  # noqa: E402,F401  (report)
from .experiments import eval_cli as _eval_cli  # noqa: E402,F401  (eval)
