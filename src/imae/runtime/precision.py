"""Which precision a run computes in: bf16 autocast where the device has bf16 units, else fp32.

The rules (``docs/performance.md``):

- CUDA: bf16 autocast when ``amp`` (``train.amp`` / ``finetune.amp``) is on.
- CPU: bf16 autocast when ``amp`` is on *and* the CPU has bf16 units (``avx512_bf16`` or ``amx_bf16`` on x86,
  ``bf16`` on Arm, as the kernel lists them, and oneDNN's bf16 kernels in this torch). A CPU without them would
  emulate bf16 many times slower than fp32 (an AVX2 CPU: ``docs/performance.md``), so it runs fp32, silently.
- ``amp=false`` always gives fp32. Evaluation's feature extraction follows the same device rule.

Detection happens once per process; ``IMAE_CPU_BF16=1`` (or ``0``) overrides it, e.g. to test the bf16 path on
a CPU without the units or to force fp32 everywhere. Weights, optimiser state, loss terms and a frozen teacher's
targets stay fp32: autocast only runs matrix products (and what PyTorch lists with them) in bf16.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

ENV = "IMAE_CPU_BF16"
_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 (AVX-512 BF16, AMX), Arm (FEAT_BF16)


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel lists (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def _detected() -> bool:
    if not _FLAGS & _cpu_flags():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 units torch uses (detected once; ``IMAE_CPU_BF16=0/1`` overrides)."""
    forced = os.environ.get(ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _detected()


def uses_bf16(device: torch.device | str, amp: bool = True) -> bool:
    """Whether a step on ``device`` with ``amp`` runs under bf16 autocast."""
    kind = torch.device(device).type
    return bool(amp) and (kind == "cuda" or (kind == "cpu" and cpu_has_bf16()))


def name(device: torch.device | str, amp: bool = True) -> str:
    """``bf16`` or ``fp32``: what the start line and the logs say."""
    return "bf16" if uses_bf16(device, amp) else "fp32"


def autocast(device: torch.device | str, amp: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` where :func:`uses_bf16`, else a context that changes nothing."""
    if not uses_bf16(device, amp):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
