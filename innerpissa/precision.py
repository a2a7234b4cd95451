"""Compute precision for training, evaluation and generation: `auto` | `fp32` | `bf16`.

`auto` resolves to bf16 on CUDA (when the GPU supports it) and on CPUs whose flags report native bf16
arithmetic (x86 `avx512_bf16` / `amx_bf16`, ARM `bf16`), else fp32; `$INNERPISSA_PRECISION` (fp32 | bf16)
overrides what `auto` means (the test suite sets fp32, so its numbers do not depend on the CPU). bf16 means autocast: matmuls run in
bf16, the weights, SVDs, adapter parameters, optimizer state and loss reductions stay fp32 (the loss
functions and the adapter's r×r core cast to float themselves).
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
ENV = "INNERPISSA_PRECISION"
HELP = "auto | fp32 | bf16 (auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32)"
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX512/AMX, aarch64 Features


@functools.cache
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (`flags` on x86, `Features` on ARM); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU reports native bf16 arithmetic (not oneDNN's AVX512 emulation)."""
    return bool(BF16_FLAGS & (cpu_flags() if flags is None else flags))


def check(precision: str) -> str:
    """`precision` if it is auto | fp32 | bf16, else a ValueError naming the choices (CLI: one-line error)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


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
    """bf16 autocast on `device` when `precision` resolves to bf16; a no-op context for fp32."""
    dev = torch.device(device)
    if resolve(precision, dev) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16)
