"""One run = fit a steerer (cached by its fit hash) + evaluate it at fixed coefficients, on disk under ROOT.

    ROOT/fits/<fit-hash>/  the fitted steerer (steerer.json + tensors), pairs.json, fit.json and DONE. Shared by every run
                           whose fit-relevant fields (model, concept, method, params incl. seed) match; it appears
                           atomically (built in a temp dir, then renamed), so a crash never leaves half a fit.
    ROOT/runs/<hash>/      config.json (RunConfig + environment), scores.parquet, summary.json, samples.json and,
                           written last, DONE. A dir without DONE is partial (or failed: error.json) and is redone.

Seeds: a method says where its seed goes (`SteererBase.seed_param`, e.g. `params.seed` or `params.train.seed`);
a deterministic one (seed_param None) ignores the seed, so all its seeds share one fit. What else a run needs to know
about its method (params checks, hashed resolved configs, the recipe shaping the pairs) it asks the method's class
(`steerers.steerer_class`). The contrastive pairs come from `concepts.fit_data.fit_pairs`
(fixed `PAIR_SEED`), the function `innerpissa train` uses too, so every method and seed is fit on the same pairs;
the leakage check tests the evaluation rows against all of them (train and validation). Evaluation rows are the
same for every run (`DATA_SEED`); the bootstrap CIs use the run's seed. The split into the "tune" and "report" halves applies to DailyDilemmas sets
(`dd-*`, by dilemma), never to TruthfulQA.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import shutil
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .. import steerers
from ..concepts import ContrastPairs
from ..concepts.fit_data import PAIRS_FILE, fit_pairs, joined, pairs_record, pairs_sha256
from ..config import set_path
from ..io import atomic_write_json, atomic_write_text, json_safe
from ..precision import autocast, cpu_record
from ..precision import resolve as resolve_precision
from ..models import DEFAULT_MODEL, load_model, tensors_sha256
from ..eval.calibrate import Calibration, CalibratedSteerer, calibrate
from ..loop import CHECKPOINT_META
from ..steerers import Steerer, SteererBase, method_class

TINY_MODELS = {"tiny-llama": "llama", "tiny-qwen2": "qwen2"}
DATA_SEED = 0
SAMPLE_TOKENS = 48

Loaded = tuple[PreTrainedModel, PreTrainedTokenizerBase]


class RunConfig(BaseModel):
    """Everything that defines one run; its `content_hash()` names ROOT/runs/<hash>/."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = DEFAULT_MODEL
    concept: str = "honesty"
    method: str = steerers.DEFAULT_METHOD
    params: dict[str, Any] = Field(default_factory=dict, description="steerer hyper-parameters (nested for trained)")
    n_pairs: int | None = Field(None, gt=0, description="fit on this many training pairs (one seeded subset for all)")
    seed: int = Field(0, ge=0, lt=2**32)
    preset: str | None = Field(None, description="ablation preset name (already applied to method/params)")
    datasets: tuple[str, ...] = Field(("dd-honesty",), min_length=1)
    coeffs: tuple[float, ...] = (-1.0, 0.0, 1.0)
    eval_limit: int | None = Field(None, gt=0, description="rows per dataset (whole dilemmas, seeded) or all")
    eval_part: Literal["report", "tune", "all"] = Field("report", description="DailyDilemmas half, by dilemma")
    max_length: int = Field(256, gt=8)
    batch_size: int = Field(16, gt=0)
    pmass_min: float = Field(0.1, ge=0, le=1, description="log-ratio is NaN where P(yes)+P(no) is below this")
    samples: int = Field(0, ge=0, description="prompts with steered generations at c=-1,0,1 (0 = none)")
    kl: float | None = Field(None, gt=0, description="KL budget: coeffs become budget units, ±1 = the calibrated "
                             "per-sign c at which KL(base || steered) on neutral prompts equals this (None: raw c)")
    kl_stat: Literal["mean", "p95"] = Field("mean", description="per-token KL statistic the budget applies to")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="evaluation precision (innerpissa.precision); the resolved one is in config.json")

    @field_validator("coeffs")
    @classmethod
    def _has_zero(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(math.isfinite(c) for c in v):
            raise ValueError(f"coeffs {list(v)} must be finite numbers")
        if 0.0 not in v:
            raise ValueError(f"coeffs {list(v)} must include 0 (the unsteered baseline for ΔNLL and flips)")
        return tuple(sorted(set(v)))

    @model_validator(mode="before")
    @classmethod
    def _explicit_params(cls, data: Any) -> Any:
        """The method's params with what a changing default would change spelled out (`explicit_params`: an
        InnerPiSSA run always names its recipe), so a stored config keeps its meaning."""
        if isinstance(data, dict):
            params = data.get("params") or {}
            explicit = method_class(data.get("method", steerers.DEFAULT_METHOD)).explicit_params(params)
            if explicit is not params:
                data = {**data, "params": explicit}
        return data

    @model_validator(mode="after")
    def _check_params(self) -> "RunConfig":
        self.steerer_class().check_params(self.params)
        return self

    def steerer_class(self) -> type[SteererBase]:
        """The class of the run's method (`method_class`): what the run needs to know about it."""
        return method_class(self.method)

    def content_hash(self, n: int = 12) -> str:
        """Short sha256 of the canonical JSON of the whole config (raw-c runs omit the KL fields, so hashes of
        runs made before calibration existed still match)."""
        d = self.model_dump(mode="json")
        if d["kl"] is None:
            d = {k: v for k, v in d.items() if k not in ("kl", "kl_stat")}
        if d["precision"] == "auto":  # like the device, `auto` is not hashed: runs made before it still match
            del d["precision"]
        resolved = self.resolved_configs()
        if resolved is not None:
            d["resolved"] = resolved
        return _hash(d, n)

    def resolved_configs(self) -> dict[str, Any] | None:
        """What the params mean beyond their text (`SteererBase.resolved`: InnerPiSSA's recipe resolved onto the
        config defaults), None if they say it all: part of both hashes, so editing a recipe or a default can never
        reuse a fit or a run made with the old one."""
        return self.steerer_class().resolved(self.steerer_params())

    def recipe(self) -> str | None:
        """The recipe whose data overrides shape this run's pairs (`SteererBase.data_recipe`), None for defaults."""
        return self.steerer_class().data_recipe(self.params)

    def seeded(self) -> bool:
        """Whether the method uses the seed; a deterministic method's seeds are all one fit."""
        return self.steerer_class().seed_param is not None

    def steerer_params(self) -> dict[str, Any]:
        """Constructor kwargs for the steerer: `params` with the seed injected where the method takes it."""
        path = self.steerer_class().seed_param
        return copy.deepcopy(self.params) if path is None else set_path(self.params, path, self.seed)

    def fit_key(self) -> dict[str, Any]:
        """The fit-relevant fields: two runs with equal keys share one fitted steerer."""
        key = {"model": self.model, "concept": self.concept, "method": self.method, "params": self.steerer_params()}
        resolved = self.resolved_configs()
        if resolved is not None:
            key["resolved"] = resolved
        return key if self.n_pairs is None else {**key, "n_pairs": self.n_pairs}

    def fit_hash(self, n: int = 12) -> str:
        return _hash(self.fit_key(), n)


def _hash(obj: Any, n: int) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def run_dir(cfg: RunConfig, root: Path) -> Path:
    """Where the run's results live."""
    return Path(root) / "runs" / cfg.content_hash()


def is_done(cfg: RunConfig, root: Path) -> bool:
    """A run is complete only when its DONE marker exists (written last)."""
    return (run_dir(cfg, root) / "DONE").is_file()


# --- models: loaded once per spec per process, evicted if a run left the model modified ---

_MODEL_CACHE: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase, tuple]] = {}


def _fingerprint(model: PreTrainedModel) -> tuple:
    """Module structure, hook count and the state's sha256: any change means a run left the model dirty. The
    output-capturing hooks transformers installs on a model's first forward are part of the model, not a leak."""
    mods = tuple((n, type(m).__name__) for n, m in model.named_modules())
    hooks = sum(not getattr(h, "__module__", "").startswith("transformers.")
                for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()))
    return mods, hooks, tensors_sha256(model.state_dict().items())


_PROBE_BASES: dict[tuple[str, str], Any] = {}  # (model spec, pairs sha256) -> eval.control.ProbeBasis


def load_cached(spec: str) -> Loaded:
    """(model, tok) for `spec` (incl. the test specs tiny-llama / tiny-qwen2), reusing a clean cached copy."""
    hit = _MODEL_CACHE.get(spec)
    if hit is not None and _fingerprint(hit[0]) == hit[2]:
        return hit[0], hit[1]
    _MODEL_CACHE.clear()  # one model in memory at a time
    _PROBE_BASES.clear()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if spec in TINY_MODELS:
        from ..testing import tiny_model

        model, tok = tiny_model(TINY_MODELS[spec])
        model.to(device)
    else:
        model, tok = load_model(spec, device=device)
    _MODEL_CACHE[spec] = (model, tok, _fingerprint(model))
    return model, tok


# --- fitting, cached by fit hash ---

def fit_cached(cfg: RunConfig, model: PreTrainedModel, tok: PreTrainedTokenizerBase, train: ContrastPairs,
               val: ContrastPairs, root: Path) -> tuple[Steerer, dict[str, Any]]:
    """Load the fitted steerer from ROOT/fits/<fit-hash>/ if complete, else fit it and save it there atomically."""
    fits = Path(root) / "fits"
    fdir = fits / cfg.fit_hash()
    data = pairs_sha256(train, val)  # a cached fit is never reused on different data
    if (fdir / "DONE").is_file():
        info = json.loads((fdir / "fit.json").read_text())
        if info.get("pairs_sha256", data) != data:  # fits cached before this check have no hash
            raise ValueError(f"cached fit {fdir} was made on other pairs (did concept {cfg.concept!r} change?): "
                             "delete that directory or use another --root")
        return steerers.load_steerer(model, fdir), {**info, "reused": True}
    steerer = steerers.get_steerer(cfg.method, **cfg.steerer_params())
    # a steerer whose fit checkpoints (InnerPiSSA) writes ROOT/checkpoints/<fit-hash>/ as it trains and continues
    # from there when a fit was interrupted, so a long fit survives the end of a session (commit that folder)
    ckpt = Path(root) / "checkpoints" / cfg.fit_hash()
    trainable = getattr(steerer, "trainable", False)
    resume = trainable and (ckpt / CHECKPOINT_META).is_file()
    t0 = time.perf_counter()
    steerer.fit(model, tok, train, val, **({"ckpt_dir": ckpt, "resume": resume} if trainable else {}))
    info = {
        "fit_hash": cfg.fit_hash(), "key": cfg.fit_key(), "seconds": round(time.perf_counter() - t0, 3),
        "seed_dependent": cfg.seeded(), "n_train_pairs": len(train), "n_val_pairs": len(val),
        "pairs_sha256": data, "resumed_from_checkpoint": resume,
    }
    tmp = fits / f".{cfg.fit_hash()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.mkdir(parents=True)
        steerer.save(tmp)
        atomic_write_json(tmp / PAIRS_FILE, pairs_record(cfg.concept, train, val, cfg.n_pairs, recipe=cfg.recipe()))
        atomic_write_json(tmp / "fit.json", info)
        atomic_write_text(tmp / "DONE", "")
        os.rename(tmp, fdir)
    except OSError:
        if not (fdir / "DONE").is_file():  # not a lost race with a concurrent worker: a real error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(ckpt, ignore_errors=True)  # the finished fit replaces its checkpoint
    return steerer, {**info, "reused": False}


CALIBRATION = {"n_prompts": 8, "max_new_tokens": 16, "rollout": "steered"}  # KL measurement of every run


def calibrate_cached(cfg: RunConfig, model: PreTrainedModel, tok: PreTrainedTokenizerBase, steerer: Steerer,
                     root: Path) -> Calibration:
    """The run's calibration (c at the budget `cfg.kl`, or for raw-c runs the KL measured at c = ±1), stored with
    its fit as ROOT/fits/<fit-hash>/calibration/<key>.json, so every run of that fit and budget reuses it."""
    key = {"budget": cfg.kl, "stat": cfg.kl_stat, **CALIBRATION}
    path = Path(root) / "fits" / cfg.fit_hash() / "calibration" / f"{_hash(key, 12)}.json"
    if path.is_file():
        return Calibration(**json.loads(path.read_text()))
    cal = calibrate(model, tok, steerer, cfg.kl, cfg.kl_stat, **CALIBRATION)
    atomic_write_json(path, cal.to_json())
    return cal


# --- one run ---

def eval_sets(cfg: RunConfig) -> list[Any]:
    """The evaluation sets of a run: DailyDilemmas sets cut to `eval_part` by dilemma, then to `eval_limit` rows."""
    from ..eval.datasets import limit_rows, load_dataset, split_by_dilemma

    out = []
    for name in cfg.datasets:
        es = load_dataset(name, seed=DATA_SEED)
        if name.startswith("dd-") and cfg.eval_part != "all":
            es = split_by_dilemma(es, cfg.eval_part, seed=DATA_SEED)
        if cfg.eval_limit is not None:
            es = limit_rows(es, cfg.eval_limit, seed=DATA_SEED)
        out.append(es)
    return out


def write_samples(cfg: RunConfig, model: PreTrainedModel, tok: PreTrainedTokenizerBase, steerer: Steerer,
                  sets: list[Any], out: Path) -> None:
    """Greedy steered generations at c = -1, 0, +1 for the first `cfg.samples` questions of the first dataset."""
    from ..generate import generate_table

    msgs = sets[0].rows["messages"].head(cfg.samples)
    prompts = [next(m["content"] for m in reversed(conv) if m["role"] == "user") for conv in msgs]
    table = generate_table(model, tok, steerer, prompts, (-1.0, 0.0, 1.0), max_new_tokens=SAMPLE_TOKENS)
    atomic_write_json(out / "samples.json", table.to_dict(orient="records"))


def probe_basis_cached(spec: str, model: PreTrainedModel, tok: PreTrainedTokenizerBase, train: ContrastPairs,
                       val: ContrastPairs, precision: str = "auto") -> Any:
    """`eval.control.probe_basis` of the cached model `spec` on these pairs in `precision`, computed once per process
    (it is ~85 % of the probe control's forwards and the same for every method fit on the same pairs)."""
    from ..eval.control import probe_basis

    key = (spec, pairs_sha256(train, val), resolve_precision(precision, model.device))
    if key not in _PROBE_BASES:
        with autocast(precision, model.device):
            _PROBE_BASES[key] = probe_basis(model, tok, train, val)
    return _PROBE_BASES[key]


def write_control(spec: str, model: PreTrainedModel, tok: PreTrainedTokenizerBase, steerer: Steerer,
                  train: ContrastPairs, val: ContrastPairs, seed: int, out: Path, precision: str = "auto") -> None:
    """Both positive controls (`eval.control`: token log-probs and the hidden-state probe) on the held-out
    validation pairs at c = ±1 (run units), in the run's evaluation precision -> control.json; the unsteered
    forwards are shared per pair set."""
    from ..eval.control import controls

    basis = probe_basis_cached(spec, model, tok, train, val, precision)
    with autocast(precision, model.device):
        got = controls(model, tok, steerer, train, val, basis, seed=seed)
    atomic_write_json(out / "control.json", json_safe({**got, "precision": resolve_precision(precision, model.device)}))


def run_steerer(cfg: RunConfig, model: PreTrainedModel, tok: PreTrainedTokenizerBase, train: ContrastPairs,
                val: ContrastPairs, root: Path) -> tuple[Steerer, dict[str, Any], Calibration]:
    """The run's steerer as it is scored: fitted (or reused), calibrated, and under a KL budget wrapped so that its
    coefficients are budget units."""
    steerer, fit_info = fit_cached(cfg, model, tok, train, val, root)
    calibration = calibrate_cached(cfg, model, tok, steerer, root)
    if cfg.kl is not None:
        steerer = CalibratedSteerer(steerer, calibration)
    return steerer, fit_info, calibration


def stored_run(run: dict[str, Any]) -> dict[str, Any]:
    """A stored config.json `run` section with what its method spells out today filled in with the value that run
    used (`SteererBase.stored_params`: an InnerPiSSA run stored before the recipe was explicit trained with
    reprpo-v0), so it is never read as today's default."""
    if run.get("method") is None:
        return run
    params = run.get("params") or {}
    stored = method_class(run["method"]).stored_params(params)
    return run if stored is params else {**run, "params": stored}


def write_loss_curve(cfg: RunConfig, root: Path, out: Path) -> bool:
    """OUT/loss_curve.png from the fit's train_log.csv (trained methods: the plateau, or its absence, per run);
    False when the fit logged no curve."""
    import pandas as pd

    from .figures import loss_curve

    log = Path(root) / "fits" / cfg.fit_hash() / "train_log.csv"
    if not log.is_file():
        return False
    loss_curve(pd.read_csv(log).to_dict("records"), out / "loss_curve.png")
    return True


def backfill(root: Path, samples: int = 0, progress: bool = True) -> list[Path]:
    """Add to finished runs under ROOT what runs made before it lack: the hidden-state probe control (control.json
    without `probe_score`), the fit's loss curve (loss_curve.png) and, with `samples` > 0, steered generations
    (samples.json) for runs that saved none.
    Uses the cached fits and calibrations only (a run whose fit is gone is skipped, never refit); the unsteered
    probe basis is computed once per model and pair set. Returns the runs updated."""
    from ..eval.control import probe_control

    done = []
    runs = sorted(d for d in (Path(root) / "runs").glob("*") if (d / "DONE").is_file() and (d / "control.json").is_file())
    for d in tqdm(runs, desc="backfill", disable=not progress):
        control = json.loads((d / "control.json").read_text())
        cfg = RunConfig(**stored_run(json.loads((d / "config.json").read_text())["run"]))
        updated = not (d / "loss_curve.png").is_file() and write_loss_curve(cfg, root, d)
        need_probe, need_samples = "probe_score" not in control, samples > 0 and not (d / "samples.json").is_file()
        if (need_probe or need_samples) and (Path(root) / "fits" / cfg.fit_hash() / "DONE").is_file():
            model, tok = load_cached(cfg.model)
            train, val = fit_pairs(cfg.concept, cfg.n_pairs, recipe=cfg.recipe())
            steerer, _, _ = run_steerer(cfg, model, tok, train, val, root)
            if need_probe:
                basis = probe_basis_cached(cfg.model, model, tok, train, val, cfg.precision)
                with autocast(cfg.precision, model.device):
                    control.update(probe_control(model, tok, steerer, train, val, basis=basis, seed=cfg.seed),
                                   probe_added=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                atomic_write_json(d / "control.json", json_safe(control))
            if need_samples:
                write_samples(cfg.model_copy(update={"samples": samples}), model, tok, steerer, eval_sets(cfg), d)
            updated = True
        if updated:
            done.append(d)
    return done


def run_one(cfg: RunConfig, root: Path) -> Path:
    """Fit (or reuse) the steerer, evaluate it, and write ROOT/runs/<hash>/ ending with DONE; returns the dir.

    A complete run is returned as is; a partial or failed one is deleted and redone. On failure error.json
    (type, message, traceback) is written and the exception re-raised for the executor to record.
    """
    from .evaluate import evaluate_run

    out = run_dir(cfg, root)
    if (out / "DONE").is_file():
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    atomic_write_json(out / "config.json", {"run": cfg.model_dump(mode="json"), "run_hash": cfg.content_hash()})
    t0 = time.perf_counter()
    try:
        model, tok = load_cached(cfg.model)
        train, val = fit_pairs(cfg.concept, cfg.n_pairs, recipe=cfg.recipe())
        steerer, fit_info, calibration = run_steerer(cfg, model, tok, train, val, root)
        write_control(cfg.model, model, tok, steerer, train, val, cfg.seed, out, cfg.precision)
        sets = eval_sets(cfg)
        evaluate_run(model, tok, steerer, sets, list(cfg.coeffs), out, seed=cfg.seed, calibration=calibration,
                     train_pairs=joined(train, val), batch_size=cfg.batch_size, max_length=cfg.max_length, pmass_min=cfg.pmass_min,
                     precision=cfg.precision)
        if cfg.samples:
            write_samples(cfg, model, tok, steerer, sets, out)
        write_loss_curve(cfg, root, out)
        eval_cfg = json.loads((out / "config.json").read_text())
        atomic_write_json(out / "config.json", {
            **eval_cfg, "run": cfg.model_dump(mode="json"), "run_hash": cfg.content_hash(), "fit": fit_info,
            "host": platform.node(), "cpu": cpu_record(), "wall_seconds": round(time.perf_counter() - t0, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        atomic_write_text(out / "DONE", "")
    except Exception as e:
        atomic_write_json(out / "error.json", {
            "type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc(),
            "run": cfg.model_dump(mode="json"),
        })
        raise
    return out
