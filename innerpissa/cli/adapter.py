"""`innerpissa generate`, `merge` and `export`: use a trained adapter (side-by-side completions, plain weights,
LoRA files for peft or llama.cpp)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import UserError, app, check_coeffs, check_out, console, loading


def _load_adapter_model(adapter: Path, model: str | None):
    """(model, tok, steerer) for a saved steerer directory; the base model spec is read from it if not given."""
    from ..io import read_json
    from ..models import load_model
    from ..steerers import load_steerer

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

    from ..generate import generate_table
    from ..precision import check as check_precision

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
    from ..adapter import merge as merge_adapter
    from ..io import atomic_dir, check_finite

    check_coeffs([coeff], "--coeff")
    check_out(out, overwrite)
    m, tok, steerer = _load_adapter_model(adapter, model)
    if not steerer.foldable:
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
    from ..adapter.export import save_peft_lora
    from ..io import atomic_dir

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
    if not steerer.foldable:
        raise UserError(f"{adapter} holds a {steerer.name!r} steerer; export supports InnerPiSSA adapters only")
    names = "" if len(coeff) == 1 else " (" + ", ".join(f"c{c:+g}" for c in coeff) + ")"
    if format == "gguf-lora":
        from ..adapter.gguf_export import base_gguf_hint, save_gguf_loras

        save_gguf_loras(m, coeff, out, dtype)
        typer.echo(f"exported GGUF LoRA adapter(s) ({dtype}) at c={', '.join(f'{c:g}' for c in coeff)} to {out}"
                   f"{names.replace(',', '.gguf,').replace(')', '.gguf)')}; pair with {base_gguf_hint(m)}")
        return
    with atomic_dir(out) as tmp:
        for c in coeff:
            save_peft_lora(m, c, tmp if len(coeff) == 1 else tmp / f"c{c:+g}")
    typer.echo(f"exported peft LoRA adapter(s) at c={', '.join(f'{c:g}' for c in coeff)} to {out}{names}")
