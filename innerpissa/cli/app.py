"""`innerpissa` command line: train, generate, merge, eval, compare, sweep, report."""

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

    from .loop import TrainResult

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
    from .concepts import ConceptError
    from .models import ModelLoadError

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


# Written out, not computed: importing the recipes at startup would load torch for every `--help` (a test checks
# these numbers against innerpissa.recipes).
TRAIN_STEPS_HELP = ("optimizer steps, overriding the recipe's length (default: the recipe's. antipasto: 2 epochs, at "
                    "most 60 steps, early stopping; seed: 2 epochs, at most 60 steps, early stopping; reprpo-v0: 24 "
                    "steps; reprpo-conv: 3 epochs, at most 120 steps, early stopping); a first look: --steps 8")


# --- commands are registered below by their modules (one import per command) ---


@app.command()
def train(
    concept: str | None = typer.Option(None, help="built-in concept name or path to a YAML spec [default: honesty]"),
    positive: str | None = typer.Option(None, help="instead of --concept: the positive persona word, e.g. honest"),
    negative: str | None = typer.Option(None, help="with --positive: the contrasting word, e.g. dishonest"),
    model: str = typer.Option("smollm2-135m", help="smollm2-135m, a .gguf file, a model dir or a HF id"),
    out: Path = typer.Option(Path("runs/honesty"), help="output directory for the adapter"),
    config: Path | None = typer.Option(None, help="YAML with `recipe:` and `adapter:`, `loss:`, `train:` overrides"),
    recipe: str | None = typer.Option(None, help="named preset (reprpo-v0, seed, antipasto; overrides the config's)"),
    steps: int | None = typer.Option(None, help=TRAIN_STEPS_HELP),
    seed: int | None = typer.Option(None, help="random seed (overrides config)"),
    resume: bool = typer.Option(False, help="continue from the checkpoint in OUT/checkpoint"),
    overwrite: bool = typer.Option(False, help="retrain into an OUT that already holds an adapter or checkpoint"),
    precision: str | None = typer.Option(None, help="auto | fp32 | bf16 (overrides config; default auto)"),
) -> None:
    """Train an InnerPiSSA adapter on a concept's contrastive pairs and save it to OUT."""
    from .concepts import concept_from_words, load_concept
    from .concepts.fit_data import PAIRS_FILE, fit_pairs, pairs_record
    from .config import AdapterConfig, LossConfig, TrainConfig, parse_section
    from .io import atomic_write_json, read_yaml
    from .models import load_model
    from .experiments.figures import loss_curve
    from .recipes import DEFAULT_RECIPE, get_recipe
    from .steerers.innerpissa import InnerPiSSASteerer

    overrides: dict = {}
    if config is not None:
        if not config.is_file():
            raise UserError(f"config file not found: {config}")
        overrides = read_yaml(config)
        if not overrides:
            raise UserError(f"{config} is empty; give at least one section, e.g. `train: {{steps: 40}}` or "
                            "`recipe: reprpo-v0`, or drop --config to train with the recipe's defaults")
        if not isinstance(overrides, dict) or not all(isinstance(v or {}, dict) for k, v in overrides.items() if k != "recipe"):
            raise UserError(f"{config}: expected sections of `field: value` mappings, e.g. `train: {{steps: 40}}`")
        unknown = set(overrides) - {"recipe", "adapter", "loss", "train"}
        if unknown:
            raise UserError(f"{config}: unknown sections {sorted(unknown)}; use recipe, adapter, loss, train")
    recipe = recipe or overrides.get("recipe") or DEFAULT_RECIPE
    get_recipe(recipe)  # an unknown name: one line listing the recipes
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
    steerer = InnerPiSSASteerer(recipe, **sections, model=model, concept=concept or spec.name)
    train_pairs, val_pairs = fit_pairs(spec, recipe=recipe)  # the sweep's pairs too: split by PAIR_SEED, not --seed
    _check_train_out(out, resume, overwrite)
    ckpt = out / "checkpoint"
    on_interrupt(_checkpoint_note(ckpt, steerer.train_cfg.checkpoint_every, resume))
    with loading(model):
        m, tok = load_model(model)
    steerer.fit(m, tok, train_pairs, val_pairs, ckpt_dir=ckpt, resume=resume)
    steerer.save(out)
    atomic_write_json(out / PAIRS_FILE, pairs_record(spec, train_pairs, val_pairs, recipe=recipe))  # for eval's leakage check
    loss_curve(steerer.result.history, out / "loss_curve.png")
    typer.echo(f"saved adapter to {out}; {train_note(steerer.result)}")


def train_note(r: TrainResult) -> str:
    """What training ended with, in words: the best validation step, the validation shift (how much further c = +1
    than c = -1 moves the held-out pairs along the preference direction) and whether the adapter was negated."""
    flipped = ("; training had made +c the negative persona's direction, so the adapter was negated (exactly "
               "c -> -c: sign flipped) and +c now steers toward the positive one" if r.sign_flipped else "")
    return (f"best validation step {r.best_step}; val shift {r.val_shift:.3f}: on held-out pairs, c = +1 moves the "
            "positive-minus-negative hidden-state gap along the preference direction that much further than c = -1, "
            f"in units of the gap's unsteered size (0: no separation){flipped}")


def _checkpoint_note(ckpt: Path, every: int, resume: bool) -> Callable[[], str]:
    """The interrupt note of `train`: the step its checkpoint holds, and how to continue. A checkpoint already in
    OUT counts only under --resume (it is the run being continued); under --overwrite it is another run's."""
    from .io import read_json
    from .loop import CHECKPOINT_META

    meta = ckpt / CHECKPOINT_META
    before = meta.stat().st_mtime_ns if meta.is_file() and not resume else None

    def note() -> str:
        if meta.is_file() and meta.stat().st_mtime_ns != before:
            return (f"{ckpt} holds the checkpoint of step {read_json(meta)['step']} (saved every {every} steps); "
                    "rerun the same command with --resume to continue from it")
        return f"no checkpoint saved yet (the first comes after step {every}); rerun the same command to start again"

    return note


def _check_train_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, to train into an OUT holding an adapter, a checkpoint (without --resume) or other
    files, and to --resume where there is no checkpoint (it would silently start from scratch)."""
    from .loop import CHECKPOINT_META

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory path")
    if resume and not (out / "checkpoint" / CHECKPOINT_META).is_file():
        raise UserError(f"--resume: no checkpoint to continue from ({out / 'checkpoint' / CHECKPOINT_META} does not "
                        "exist); drop --resume to train from scratch")
    if overwrite or not out.exists() or not any(out.iterdir()):
        return
    if (out / "steerer.json").exists() and not resume:
        raise UserError(f"--out {out} already holds a trained adapter; pass --overwrite to retrain or choose another --out")
    if (out / "checkpoint").exists() and not resume:
        raise UserError(f"--out {out} holds an unfinished run's checkpoint; pass --resume to continue or --overwrite")
    if not (out / "checkpoint").exists() and not (out / "steerer.json").exists():
        raise UserError(f"--out {out} exists and is not an adapter directory; pass --overwrite or choose another --out")


def _load_adapter_model(adapter: Path, model: str | None):
    """(model, tok, steerer) for a saved steerer directory; the base model spec is read from it if not given."""
    from .io import read_json
    from .models import load_model
    from .steerers import load_steerer

    meta = adapter / "steerer.json"
    if not meta.is_file():
        raise UserError(f"{adapter} is not a trained adapter directory (no steerer.json); run `innerpissa train` first")
    spec = model or read_json(meta).get("params", {}).get("model")
    if not spec:
        raise UserError(f"{adapter}/steerer.json names no base model; pass --model")
    with loading(spec):
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
    from rich.table import Table

    from .generate import generate_table
    from .precision import check as check_precision

    cs = check_coeffs(coeffs)
    check_precision(precision)
    m, tok, steerer = _load_adapter_model(adapter, model)
    df = generate_table(m, tok, steerer, prompt, cs, max_new_tokens, precision)
    out = console()
    for p in prompt:
        t = Table(title=p, show_lines=True)
        for c in cs:
            t.add_column(f"c = {c:+g}")
        t.add_row(*[df[(df.prompt == p) & (df.coeff == c)].completion.iloc[0] for c in cs])
        out.print(t)


@app.command()
def merge(
    adapter: Path = typer.Option(..., help="directory written by `innerpissa train`"),
    coeff: float = typer.Option(..., help="coefficient to bake into the weights"),
    out: Path = typer.Option(..., help="output directory for a plain transformers model"),
    model: str | None = typer.Option(None, help="base model spec (default: the one the adapter was trained on)"),
    overwrite: bool = typer.Option(False, help="replace an existing OUT"),
) -> None:
    """Fold the adapter at COEFF into plain weights and save a normal transformers model."""
    from .adapter import merge as merge_adapter
    from .io import atomic_dir, check_finite

    check_coeffs([coeff], "--coeff")
    check_out(out, overwrite)
    m, tok, steerer = _load_adapter_model(adapter, model)
    if steerer.name != "innerpissa":
        raise UserError(f"{adapter} holds a {steerer.name!r} steerer; merge folds InnerPiSSA adapters only")
    merge_adapter(m, coeff)
    check_finite(m.state_dict(), f"the merged model at c={coeff:g} to {out}")
    with atomic_dir(out) as tmp:
        m.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    typer.echo(f"merged adapter at c={coeff:g} into {out}")


@app.command()
def export(
    adapter: Path = typer.Option(..., help="directory written by `innerpissa train`"),
    coeff: list[float] = typer.Option(..., help="coefficient to freeze (repeatable: one adapter per value)"),
    out: Path = typer.Option(..., help="output (one --coeff: the adapter dir / .gguf file; several: OUT/c+0.8[.gguf], ...)"),
    format: str = typer.Option("peft-lora", "--format", help="peft-lora: a standard peft LoRA adapter; "
                               "gguf-lora: a llama.cpp / ollama GGUF LoRA adapter file"),
    dtype: str = typer.Option("f32", "--dtype", help="gguf-lora tensor type: f32 or f16"),
    model: str | None = typer.Option(None, help="base model spec (default: the one the adapter was trained on)"),
    overwrite: bool = typer.Option(False, help="replace an existing OUT"),
) -> None:
    """Write the adapter at each COEFF as an exact LoRA adapter (peft, or GGUF for llama.cpp / ollama)."""
    from .adapter.export import save_peft_lora
    from .io import atomic_dir

    if format not in ("peft-lora", "gguf-lora"):
        raise UserError(f"unknown export format {format!r}; use --format peft-lora or --format gguf-lora")
    if dtype not in ("f32", "f16") or (format == "peft-lora" and dtype != "f32"):
        raise UserError(f"--dtype {dtype}: use f32 or f16, and only with --format gguf-lora (peft-lora writes f32)")
    check_coeffs(coeff, "--coeff")
    if format == "gguf-lora":
        if out.exists() and out.is_dir() == (len(coeff) == 1):
            raise UserError(f"--out {out} is a {'directory' if out.is_dir() else 'file'}; one --coeff writes a .gguf "
                            "file, several write a directory of them")
        if out.exists() and not overwrite:
            raise UserError(f"--out {out} already exists; pass --overwrite to replace it or choose another --out")
    else:
        check_out(out, overwrite)
    m, _, steerer = _load_adapter_model(adapter, model)
    if steerer.name != "innerpissa":
        raise UserError(f"{adapter} holds a {steerer.name!r} steerer; export supports InnerPiSSA adapters only")
    names = "" if len(coeff) == 1 else " (" + ", ".join(f"c{c:+g}" for c in coeff) + ")"
    if format == "gguf-lora":
        from .adapter.gguf_export import base_gguf_hint, save_gguf_loras

        save_gguf_loras(m, coeff, out, dtype)
        typer.echo(f"exported GGUF LoRA adapter(s) ({dtype}) at c={', '.join(f'{c:g}' for c in coeff)} to {out}"
                   f"{names.replace(',', '.gguf,').replace(')', '.gguf)')}; pair with {base_gguf_hint(m)}")
        return
    with atomic_dir(out) as tmp:
        for c in coeff:
            save_peft_lora(m, c, tmp if len(coeff) == 1 else tmp / f"c{c:+g}")
    typer.echo(f"exported peft LoRA adapter(s) at c={', '.join(f'{c:g}' for c in coeff)} to {out}{names}")


from .experiments import commands as _experiment_commands  # noqa: E402,F401  (sweep, compare)
from .experiments import report_cli as _report_cli  # noqa: E402,F401  (report)
from .experiments import eval_cli as _eval_cli  # noqa: E402,F401  (eval)
