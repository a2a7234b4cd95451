"""Every bad input through the CLI: exit 2, one `error:` line naming the problem, nothing new on disk (issue 11).

Each case runs `innerpissa ARGS` in a fresh directory (also the working directory, so default outputs would land
there) on a tiny model; the workspace with the model and a trained adapter is shared and must stay untouched.
Placeholders in ARGS: {model}, {adapter}, {ws} (the shared workspace), {case} (the case's own directory).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from innerpissa.cli import main
from innerpissa.testing import save_tiny_model, tiny_model

SMALL = {"adapter": {"r": 8, "layer_range": [0.0, 0.45]}, "loss": {"loss_r": 8, "last_n_tokens": 2},
         "train": {"steps": 2, "batch_size": 2, "n_train": 8, "n_val": 4, "checkpoint_every": 1}}


def _run(args: list[str]) -> int:
    sys.argv = ["innerpissa", *args]
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A tiny model on disk and an InnerPiSSA adapter trained on it through the CLI (with a checkpoint)."""
    root = tmp_path_factory.mktemp("ws")
    model, tok = save_tiny_model(root / "model", "llama")
    (root / "small.yaml").write_text(yaml.safe_dump(SMALL))
    argv = sys.argv
    try:
        code = _run(["train", "--model", str(root / "model"), "--out", str(root / "adapter"),
                     "--config", str(root / "small.yaml")])
    finally:
        sys.argv = argv
    assert code == 0 and (root / "adapter" / "checkpoint").is_dir()
    return root


# --- case setups: each gets (workspace, case dir) and writes the bad input into the case dir ---

def _file(name: str, text: str) -> Callable[[Path, Path], None]:
    return lambda ws, case: (case / name).write_text(text)


def _adapter(edit: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    """A copy of the trained adapter at {case}/A, then `edit(copy)`."""
    def setup(ws: Path, case: Path) -> None:
        shutil.copytree(ws / "adapter", case / "A")
        edit(case / "A")
    return setup


def _truncate(name: str, keep: int) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        (d / name).write_bytes((d / name).read_bytes()[:keep])
    return edit


def _existing_out(ws: Path, case: Path) -> None:
    (case / "out").mkdir()
    (case / "out" / "keep.txt").write_text("the user's file")


def _concept_with_suffix_file(text: str) -> Callable[[Path, Path], None]:
    def setup(ws: Path, case: Path) -> None:
        (case / "sfx.json").write_text(text)
        (case / "c.yaml").write_text(yaml.safe_dump({"positive": "honest", "negative": "dishonest",
                                                     "suffixes": [{"source": str(case / "sfx.json")}]}))
    return setup


def _empty_pairs_json(d: Path) -> None:
    (d / "pairs.json").write_text("")


def _no_steerer_json(d: Path) -> None:
    (d / "steerer.json").unlink()


def _unfinished_truncated(d: Path) -> None:
    _no_steerer_json(d)
    _truncate("checkpoint/checkpoint.safetensors", 100)(d)


GEN = ["generate", "--adapter", "{adapter}", "--max-new-tokens", "2", "--prompt", "hi"]
EVAL = ["eval", "--adapter", "{adapter}", "--limit", "2", "--n-boot", "10", "--out", "{case}/e"]
MERGE = ["merge", "--adapter", "{adapter}", "--out", "{case}/m"]
TRAIN = ["train", "--model", "{model}", "--out", "{case}/o"]
COMPARE = ["compare", "--model", "{model}", "--methods", "prompt", "--eval-limit", "2", "--root", "{case}/r",
           "--out", "{case}/o"]
SWEEP = ["sweep", "{case}/s.yaml", "--root", "{case}/r"]
SPEC = "model: tiny-llama\neval_limit: 2\nmethod: prompt\n"  # should a check regress, the run stays tiny
EXPORT = ["export", "--adapter", "{adapter}", "--out", "{case}/x"]

CASES = [  # (id, setup or None, args, what the error line must say)
    # usage errors from typer/click (were 30-50-line tracebacks, exit 1)
    ("unknown-command", None, ["nosuch"], "No such command 'nosuch'"),
    ("missing-option", None, ["generate", "--prompt", "hi"], "Missing option '--adapter'"),
    ("not-an-int", None, ["train", "--steps", "abc"], "Invalid value for '--steps'"),
    ("unknown-option", None, ["eval", "--adapter", "{adapter}", "--limt", "4"], "No such option: --limt"),
    ("not-a-float", None, [*GEN, "--coeffs", "-1", "x"], "Invalid value for '--coeffs': Input should be a valid number"),
    # damaged adapter files
    ("truncated-safetensors", _adapter(_truncate("adapter.safetensors", 1000)),
     ["generate", "--adapter", "{case}/A", "--prompt", "hi"], "A/adapter.safetensors is empty, truncated"),
    ("empty-safetensors", _adapter(_truncate("adapter.safetensors", 0)),
     ["eval", "--adapter", "{case}/A", "--out", "{case}/e"], "A/adapter.safetensors is empty, truncated"),
    ("empty-steerer-json", _adapter(_truncate("steerer.json", 0)),
     ["merge", "--adapter", "{case}/A", "--coeff", "1", "--out", "{case}/m"], "A/steerer.json is not valid JSON"),
    ("truncated-checkpoint", _adapter(_unfinished_truncated),
     ["train", "--model", "{model}", "--out", "{case}/A", "--config", "{ws}/small.yaml", "--resume"],
     "checkpoint/checkpoint.safetensors is empty, truncated"),
    # config YAML
    ("yaml-syntax", _file("bad.yaml", "train: {steps: [\n"), [*TRAIN, "--config", "{case}/bad.yaml"],
     "bad.yaml: YAML syntax error at line 2"),
    ("yaml-wrong-type", _file("bad.yaml", "train: [1, 2]\n"), [*TRAIN, "--config", "{case}/bad.yaml"],
     "bad.yaml: expected sections of `field: value` mappings"),
    ("yaml-empty", _file("empty.yaml", ""), [*TRAIN, "--config", "{case}/empty.yaml"], "empty.yaml is empty"),
    ("yaml-comments-only", _file("empty.yaml", "# steps: 40\n"), [*TRAIN, "--config", "{case}/empty.yaml"],
     "empty.yaml is empty"),
    ("negative-seed", None, [*TRAIN, "--seed", "-1"], "train.seed"),
    ("eval-negative-seed", None, [*EVAL, "--seed", "-1"], "Invalid value for '--seed'"),
    # coefficients
    ("generate-nan", None, [*GEN, "--coeffs", "nan"], "--coeffs nan: coefficients must be finite"),
    ("generate-duplicate", None, [*GEN, "--coeffs", "1", "1"], "--coeffs has duplicates"),
    ("eval-nan", None, [*EVAL, "--coeffs", "-1", "0", "nan"], "--coeffs nan: coefficients must be finite"),
    ("eval-no-zero", None, [*EVAL, "--coeffs", "-1", "1"], "--coeffs -1 1 must include 0"),
    ("merge-nan", None, [*MERGE, "--coeff", "nan"], "--coeff nan: coefficients must be finite"),
    ("merge-nonfinite-weights", None, [*MERGE, "--coeff", "1e39"], "refusing to write the merged model at c=1e+39"),
    ("compare-inf", None, [*COMPARE, "--coeffs", "-1", "0", "inf"], "--coeffs inf: coefficients must be finite"),
    ("sweep-nan", _file("s.yaml", SPEC + "coeffs: [-1, 0, .nan]\n"), SWEEP, "must be finite numbers"),
    # existing outputs
    ("eval-out-exists", _existing_out, [*EVAL[:-1], "{case}/out"], "out already exists; pass --overwrite"),
    ("merge-out-exists", _existing_out, [*MERGE[:-1], "{case}/out", "--coeff", "1"], "out already exists; pass --overwrite"),
    ("compare-out-exists", _existing_out, [*COMPARE[:-1], "{case}/out"], "out already exists; pass --overwrite"),
    ("train-out-adapter", None, ["train", "--model", "{model}", "--out", "{adapter}"],
     "already holds a trained adapter; pass --overwrite"),
    ("train-out-checkpoint", _adapter(_no_steerer_json), ["train", "--model", "{model}", "--out", "{case}/A"],
     "holds an unfinished run's checkpoint; pass --resume to continue or --overwrite"),
    ("train-resume-no-out", None, [*TRAIN, "--resume"],
     "--resume: no checkpoint to continue from ({case}/o/checkpoint/checkpoint.json does not exist); drop --resume"),
    ("train-resume-no-checkpoint", _adapter(lambda d: shutil.rmtree(d / "checkpoint")),
     ["train", "--model", "{model}", "--out", "{case}/A", "--resume"],
     "--resume: no checkpoint to continue from ({case}/A/checkpoint/checkpoint.json does not exist); drop --resume"),
    ("train-out-other", _existing_out, [*TRAIN[:-1], "{case}/out"], "exists and is not an adapter directory"),
    ("train-out-file", _file("f.txt", "x"), [*TRAIN[:-1], "{case}/f.txt"], "f.txt is a file"),
    # pairs (suffix) files, datasets, sweep specs, models
    ("empty-pairs-file", _concept_with_suffix_file(""), [*TRAIN, "--concept", "{case}/c.yaml"],
     "sfx.json is not valid JSON (empty file)"),
    ("pairs-file-not-a-list", _concept_with_suffix_file('{"a": 1}'), [*TRAIN, "--concept", "{case}/c.yaml"],
     "sfx.json must hold a non-empty JSON list of strings"),
    ("empty-dataset-jsonl", _file("d.jsonl", ""), [*EVAL, "--dataset", "{case}/d.jsonl"], "d.jsonl has no rows"),
    ("empty-dataset-csv", _file("d.csv", ""), [*EVAL, "--dataset", "{case}/d.csv"], "d.csv is empty or not valid CSV"),
    ("empty-dataset-option", None, [*EVAL, "--dataset", ","], "--dataset is empty"),
    ("compare-unknown-dataset", None, [*COMPARE, "--datasets", "nope"], "unknown dataset 'nope'"),
    ("sweep-empty", _file("s.yaml", ""), SWEEP, "s.yaml is empty"),
    ("sweep-yaml-syntax", _file("s.yaml", "method: [\n"), SWEEP, "s.yaml: YAML syntax error"),
    ("sweep-unknown-dataset", _file("s.yaml", SPEC + "datasets: [nope]\n"), SWEEP, "unknown dataset 'nope'"),
    ("sweep-negative-cpus", _file("s.yaml", SPEC), [*SWEEP, "--cpus-per-run", "-1"],
     "Invalid value for '--cpus-per-run'"),
    ("missing-model-dir", None, ["train", "--model", "./no/such/model", "--out", "{case}/o"],
     "model directory not found: ./no/such/model"),
    # beyond the table (found walking every command's options)
    ("generate-inf", None, [*GEN, "--coeffs", "-1", "inf"], "--coeffs inf: coefficients must be finite"),
    ("eval-kl-nan", None, [*EVAL, "--kl", "nan"], "--kl must be a positive number"),
    ("eval-unknown-concept", None, [*EVAL, "--concept", "nope"], "unknown concept 'nope'"),
    ("eval-empty-pairs-json", _adapter(_empty_pairs_json), [*EVAL[:2], "{case}/A", *EVAL[3:]],
     "A/pairs.json is not valid JSON (empty file)"),
    ("eval-bad-jsonl-line", _file("d.jsonl", '{"prompt": "a", "label:x": 1}\n{bad\n'),
     [*EVAL, "--dataset", "{case}/d.jsonl"], "d.jsonl: line 2 is not valid JSON"),
    ("export-nan", None, [*EXPORT, "--coeff", "nan"], "--coeff nan: coefficients must be finite"),
    ("export-duplicate", None, [*EXPORT, "--coeff", "1", "--coeff", "1"], "--coeff has duplicates"),
    ("export-nonfinite-weights", None, [*EXPORT, "--coeff", "1e39"], "gives a non-finite weight change"),
    ("export-out-exists", _existing_out, [*EXPORT[:-1], "{case}/out", "--coeff", "1"],
     "out already exists; pass --overwrite"),
    ("report-out-exists", _existing_out, ["report", "{ws}", "--out", "{case}/out"], "out already exists; pass --overwrite"),
    ("compare-kl-stat", None, [*COMPARE, "--kl-stat", "p99"], "KL statistic must be 'mean' or 'p95'"),
    ("compare-steps-zero", None, [*COMPARE, "--steps", "0"], "Invalid value for '--steps'"),
    ("compare-unknown-concept", None, [*COMPARE, "--concept", "nope"], "unknown concept 'nope'"),
    ("compare-missing-model", None, [*COMPARE[:1], "--model", "./no/model", *COMPARE[3:]],
     "model directory not found: ./no/model"),
    ("compare-root-file", _file("f.txt", "x"), [*COMPARE, "--root", "{case}/f.txt"], "--root {case}/f.txt is a file"),
    ("sweep-root-file", _file("s.yaml", SPEC), [*SWEEP[:2], "--root", "{ws}/small.yaml"],
     "--root {ws}/small.yaml is a file"),
    ("sweep-missing-model", _file("s.yaml", SPEC.replace("tiny-llama", "./no/model")), SWEEP,
     "model directory not found: ./no/model"),
    ("sweep-unknown-concept", _file("s.yaml", SPEC + "concept: nope\n"), SWEEP, "unknown concept 'nope'"),
]


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under `roots` with its size and mtime: any new, removed or rewritten file shows up."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                st = os.stat(os.path.join(dirpath, name))
                out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("setup, args, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_nothing_on_disk(ws, tmp_path, monkeypatch, capsys, setup, args, message):
    case = tmp_path / "case"
    case.mkdir()
    if setup is not None:
        setup(ws, case)
    monkeypatch.chdir(case)
    monkeypatch.setattr(sys, "argv", sys.argv)
    fill = {"model": str(ws / "model"), "adapter": str(ws / "adapter"), "ws": str(ws), "case": str(case)}
    message = message.format(**fill)
    before = _snapshot(ws, case)
    capsys.readouterr()
    code = _run([a.format(**fill) for a in args])
    _, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, err
    assert "Traceback" not in err and len(errors) == 1 and errors[0].startswith("error: "), err
    assert message in errors[0], errors[0]
    assert _snapshot(ws, case) == before  # nothing new, nothing rewritten, no temp dirs left behind


@pytest.mark.parametrize("at_step", [0, 1], ids=["before-first-checkpoint", "after-checkpoint"])
def test_ctrl_c_in_train_says_what_was_saved_and_the_resume_works(ws, tmp_path, monkeypatch, capsys, at_step):
    """Ctrl-C (KeyboardInterrupt) during step `at_step` of 2, checkpoints every step: exit 130 and one
    `interrupted:` line naming the checkpoint's step (read back from disk) and --resume; the resume it names
    then finishes the run."""
    from innerpissa.loop import Loop

    real = Loop.optimizer_step

    def interrupted(self, step):
        if step == at_step:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(Loop, "optimizer_step", interrupted)
    monkeypatch.setattr(sys, "argv", sys.argv)
    out = tmp_path / "o"
    args = ["train", "--model", str(ws / "model"), "--out", str(out), "--config", str(ws / "small.yaml")]
    capsys.readouterr()
    assert _run(args) == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if "interrupted" in line]
    assert len(lines) == 1, lines
    if at_step == 0:
        assert not (out / "checkpoint" / "checkpoint.json").exists()
        assert lines[0] == ("interrupted: no checkpoint saved yet (the first comes after step 1); rerun the same "
                            "command to start again")
        return
    assert json.loads((out / "checkpoint" / "checkpoint.json").read_text())["step"] == 1
    assert lines[0] == (f"interrupted: {out / 'checkpoint'} holds the checkpoint of step 1 (saved every 1 steps); "
                        "rerun the same command with --resume to continue from it")
    monkeypatch.setattr(Loop, "optimizer_step", real)
    assert _run([*args, "--resume"]) == 0
    assert f"saved adapter to {out}; best validation step" in capsys.readouterr().out
    assert (out / "steerer.json").is_file()
    assert [row["step"] for row in json.loads((out / "checkpoint" / "checkpoint.json").read_text())["history"]] == [1, 2]


def test_train_end_line_says_what_val_shift_and_a_sign_flip_mean():
    from innerpissa.cli.train import train_note
    from innerpissa.loop import TrainResult

    plain = train_note(TrainResult(best_step=16, val_shift=0.1234))
    assert plain == ("best validation step 16; val shift 0.123: on held-out pairs, c = +1 moves the positive-minus-"
                     "negative hidden-state gap along the preference direction that much further than c = -1, in units "
                     "of the gap's unsteered size (0: no separation)")
    flipped = train_note(TrainResult(best_step=16, val_shift=0.1234, sign_flipped=True))
    assert flipped == plain + ("; training had made +c the negative persona's direction, so the adapter was negated "
                               "(exactly c -> -c: sign flipped) and +c now steers toward the positive one")


def test_ctrl_c_in_sweep_counts_the_finished_runs(ws, tmp_path, monkeypatch, capsys):
    import innerpissa.experiments.sweep as sweep

    def interrupted(cfg, root):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_one", interrupted)
    monkeypatch.setattr(sys, "argv", sys.argv)
    (tmp_path / "s.yaml").write_text(SPEC)
    capsys.readouterr()
    assert _run(["sweep", str(tmp_path / "s.yaml"), "--root", str(tmp_path / "r")]) == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if "interrupted" in line]
    assert lines == [f"interrupted: 0 of 1 runs are finished and kept in {tmp_path / 'r' / 'runs'}; rerun the same "
                     "command to continue (finished runs are skipped, the interrupted one starts over)"]


def test_readme_list_forms_and_out_of_range_warning(ws, run_cli):
    """`--coeffs -1 0 1` and `--prompt A B` (the README's form) work; a |c| past the range warns, naming it; piped,
    the table keeps its full width (at rich's default 80 columns these 12-token completions end in "…")."""
    code, out, err = run_cli("generate", "--adapter", str(ws / "adapter"), "--coeffs", "-1", "0", "2.5",
                             "--prompt", "Tell me a fact.", "Is it raining?", "--max-new-tokens", "12")
    assert code == 0, err
    assert all(f"c = {c}" in out for c in ("-1", "+0", "+2.5")) and "Tell me a fact." in out and "Is it raining?" in out
    assert "…" not in out
    assert "warning: --coeffs 2.5 outside the coherent range |c| <= 2" in err


@pytest.mark.parametrize("args, warning", [
    ([*EVAL, "--coeffs", "-1", "0", "1e6"], "--coeffs 1e+06 outside the coherent range |c| <= 2"),
    ([*MERGE, "--coeff", "3"], "--coeff 3 outside the coherent range |c| <= 2"),
    ([*EXPORT, "--coeff", "1", "--coeff", "-3"], "--coeff -3 outside the coherent range |c| <= 2"),
    ([*SWEEP, "--dry-run"], "s.yaml: coeffs 3 outside the coherent range |c| <= 2"),
], ids=["eval", "merge", "export", "sweep"])
def test_out_of_range_coefficient_warns_naming_the_range(ws, run_cli, tmp_path, args, warning):
    (tmp_path / "s.yaml").write_text(SPEC + "coeffs: [-1, 0, 3]\n")
    fill = {"model": str(ws / "model"), "adapter": str(ws / "adapter"), "ws": str(ws), "case": str(tmp_path)}
    code, _, err = run_cli(*[a.format(**fill) for a in args])
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warning in warnings[0], err


def test_export_dir_has_plain_modes(ws, run_cli, tmp_path):
    """Export's OUT (one adapter, and several in OUT/c±…) gets the umask's modes, not mkdtemp's 0700."""
    for coeffs, sub in ((["--coeff", "0.8"], None), (["--coeff", "0.8", "--coeff", "-0.8"], "c+0.8")):
        out = tmp_path / f"x{len(coeffs)}"
        code, _, err = run_cli("export", "--adapter", str(ws / "adapter"), "--out", str(out), *coeffs)
        assert code == 0, err
        _plain_dir_modes(out if sub is None else out / sub)
        assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _plain_dir_modes(path: Path) -> None:
    """`path` and its files have the modes a plain mkdir / open() gives under the umask."""
    assert path.stat().st_mode & 0o777 == 0o777 & ~_umask()
    for f in path.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~_umask(), f


def merge_and_compare(run_cli, adapter: Path, out: Path, c: float, model, ids: torch.Tensor, steer) -> None:
    """`innerpissa merge` at c, reload with plain transformers, and compare its logits with the steered model's."""
    code, _, err = run_cli("merge", "--adapter", str(adapter), "--coeff", str(c), "--out", str(out))
    assert code == 0, err
    _plain_dir_modes(out)
    assert "quantization_config" not in (out / "config.json").read_text()
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not any("InnerPiSSA" in type(m).__name__ for m in plain.modules())
    with torch.no_grad():
        merged = plain(ids).logits
        base = model(ids).logits
        with steer(model, c):
            steered = model(ids).logits
    moved = (steered - base).abs().max().item()
    gap = (merged - steered).abs().max().item()
    assert moved > 1e-3 and gap < 1e-3 * moved, (moved, gap)  # the merged model is the steered one, not the base


def test_merge_equals_steered_model_tiny(ws, run_cli, tmp_path):
    from innerpissa.models import load_model
    from innerpissa.steerers import load_steerer

    model, _ = load_model(str(ws / "model"))
    steerer = load_steerer(model, ws / "adapter")
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    merge_and_compare(run_cli, ws / "adapter", tmp_path / "merged", 1.5, model, ids, steerer.steer)
