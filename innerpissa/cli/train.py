"""`innerpissa train`: fit an InnerPiSSA adapter on a concept's pairs, with checkpoints and --resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from .app import UserError, app, loading, on_interrupt

if TYPE_CHECKING:
    from ..loop import TrainResult

# Written out, not computed: importing the recipes at startup would load torch for every `--help` (a test checks
# these numbers against innerpissa.recipes).
TRAIN_STEPS_HELP = ("optimizer steps, overriding the recipe's length (default: the recipe's. antipasto: 2 epochs, at "
                    "most 60 steps, early stopping; seed: 2 epochs, at most 60 steps, early stopping; reprpo-v0: 24 "
                    "steps; reprpo-conv: 3 epochs, at most 120 steps, early stopping); a first look: --steps 8")


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
    from ..concepts import concept_from_words, load_concept
    from ..concepts.fit_data import PAIRS_FILE, fit_pairs, pairs_record
    from ..config import AdapterConfig, LossConfig, TrainConfig, parse_section
    from ..io import atomic_write_json, read_yaml
    from ..models import load_model
    from ..experiments.figures import loss_curve
    from ..recipes import DEFAULT_RECIPE, get_recipe
    from ..steerers.innerpissa import InnerPiSSASteerer

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
    from ..io import read_json
    from ..loop import CHECKPOINT_META

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
    from ..loop import CHECKPOINT_META

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
