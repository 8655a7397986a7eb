"""Whether bfloat16 is fast on a device: the build uses it for speed only where the hardware has it.

On a CPU without bfloat16 instructions (AVX2-only, or AVX-512 without its BF16 extension) PyTorch emulates
bfloat16 matrix products, about 80 times slower than float32 (a 512x576 by 576x1536 product: 9 ms in
float32, 760 ms in bfloat16 on a 2-core AVX2 EPYC), so the build's bfloat16 paths would turn a 20-minute
build into hours. They ask here first and run in float32 where bfloat16 would be slow.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""/proc/cpuinfo flags of x86 CPUs that multiply bfloat16 natively (AVX-512 BF16, AMX)."""


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text (empty if it lists none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        flags = cpu_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return False
    return bool(flags & BF16_CPU_FLAGS)


def fast_bfloat16(device: torch.device | str) -> bool:
    """True where bfloat16 compute is at least as fast as float32 on `device`.

    CUDA: the GPU supports bfloat16 (Ampere and later). CPU: the processor has AVX-512 BF16 or AMX
    (read from /proc/cpuinfo; other systems answer False, the safe choice). Other devices: False.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_bf16()
    return False
