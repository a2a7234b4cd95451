"""Compute precision for training, evaluation and generation: `auto` | `fp32` | `bf16`.

`auto` resolves to bf16 on CUDA (when the GPU supports it) and on CPUs whose flags report native bf16
arithmetic (x86 `avx512_bf16` / `amx_bf16`, ARM `bf16`), else fp32; `$INNERPISSA_PRECISION` (fp32 | bf16)
overrides what `auto` means (the test suite sets fp32, so its numbers do not depend on the CPU). bf16 means autocast: matmuls run in
bf16, the weights, SVDs, adapter parameters, optimizer state and loss reductions stay fp32 (the loss
functions and the adapter's r×r core cast to float themselves), and on CPU so does attention (`fp32_attention`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
ENV = "INNERPISSA_PRECISION"
HELP = "auto | fp32 | bf16 (auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32)"
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX512/AMX, aarch64 Features


@functools.cache
def _cpuinfo(keys: tuple[str, ...]) -> str:
    """The value of the first /proc/cpuinfo line whose key is in `keys`; empty where unreadable or absent."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return ""


def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (`flags` on x86, `Features` on ARM); empty where unreadable."""
    return frozenset(_cpuinfo(("flags", "Features")).split())


def cpu_record() -> dict[str, object]:
    """The CPU model and its bf16 flags, for run records: AMX and AVX512-BF16 kernels round bf16 differently, so
    the same run on two CPUs gives slightly different scores (bench/cpu_recheck.py measures how much)."""
    return {"model": _cpuinfo(("model name", "Model")) or None, "bf16_flags": sorted(BF16_FLAGS & cpu_flags())}


def cpu_has_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU reports native bf16 arithmetic (not oneDNN's AVX512 emulation)."""
    return bool(BF16_FLAGS & (cpu_flags() if flags is None else flags))


def check(precision: str) -> str:
    """`precision` if it is auto | fp32 | bf16, else a ValueError naming the choices (CLI: one-line error)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


def pick_device(name: str) -> torch.device:
    """A fit's device (`TrainConfig.device`): `auto` -> cuda if available else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve(precision: str, device: torch.device | str) -> Literal["fp32", "bf16"]:
    """The concrete precision for `device`: `auto` -> bf16 where the hardware has it, else fp32."""
    if check(precision) != "auto":
        return precision  # type: ignore[return-value]
    env = os.environ.get(ENV, "")
    if env:
        if env not in ("fp32", "bf16"):
            raise ValueError(f"${ENV}={env!r}: set it to fp32 or bf16, or unset it")
        return env  # type: ignore[return-value]
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if dev.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when `precision` resolves to bf16 (on CPU with fp32 attention, see
    `fp32_attention`); a no-op context for fp32."""
    dev = torch.device(device)
    if resolve(precision, dev) == "fp32":
        return contextlib.nullcontext()
    return _bf16(dev)


@contextlib.contextmanager
def _bf16(dev: torch.device) -> Iterator[None]:
    with torch.autocast(dev.type, dtype=torch.bfloat16), (fp32_attention() if dev.type == "cpu" else contextlib.nullcontext()):
        yield


@contextlib.contextmanager
def bf16_frozen_linears(model: torch.nn.Module) -> Iterator[int]:
    """Inside: every frozen fp32 `nn.Linear` weight and bias of `model` is a bf16 copy; the originals (ties
    included) are put back exactly on exit. Yields how many tensors were swapped.

    Why: autocast caches its bf16 casts only for trainable leaves, so it re-casts every frozen weight (tied
    lm_head included) on every forward; casting once per fit gives the same bf16 matmuls (autocast leaves a bf16
    operand as it is) without that copy. Only for adapters whose layers use the base weight solely through its
    `forward` (`TrainableAdapter.base_weights_in_forward_only`): one that reads it (DoRA's norm) would see the copy."""
    swapped = [(m, name, p) for m in model.modules() if type(m) is torch.nn.Linear
               for name, p in m.named_parameters(recurse=False)
               if p.dtype == torch.float32 and not p.requires_grad]
    try:
        for m, name, p in swapped:
            m._parameters[name] = torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False)
        yield len(swapped)
    finally:
        for m, name, p in swapped:
            m._parameters[name] = p


@contextlib.contextmanager
def fp32_attention() -> Iterator[None]:
    """transformers' `sdpa` attention runs in fp32 inside this context, autocast or not.

    Why: torch's CPU flash-attention backward is ~5x slower in bf16 than in fp32 on these CPUs (0.83 s vs 0.17 s
    of a 9.9 s antipasto step, bench/speed.py `phases`), while attention is a small share of the FLOPs; fp32 is
    also the more exact of the two. Models on other attention implementations are untouched."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        with torch.autocast(query.device.type, enabled=False):
            out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
        return out.to(query.dtype), weights

    local = ALL_ATTENTION_FUNCTIONS._local_mapping  # the per-process overrides, restored exactly on exit
    had, prev = "sdpa" in local, local.get("sdpa")
    ALL_ATTENTION_FUNCTIONS["sdpa"] = forward
    try:
        yield
    finally:
        if had:
            local["sdpa"] = prev
        else:
            local.pop("sdpa", None)
