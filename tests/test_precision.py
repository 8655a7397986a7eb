"""The build runs bfloat16 only where the hardware multiplies it natively."""

from __future__ import annotations

from pathlib import Path

from explorer.core.precision import BF16_CPU_FLAGS, cpu_flags, fast_bfloat16

AVX2_ONLY = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"


def test_cpu_flags_read_the_first_processor() -> None:
    assert cpu_flags(AVX2_ONLY) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu_flags(AVX512_BF16) & BF16_CPU_FLAGS == {"avx512_bf16"}
    assert cpu_flags("processor\t: 0\n") == frozenset()


def test_fast_bfloat16_is_false_where_it_would_be_emulated() -> None:
    assert not fast_bfloat16("meta")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        assert fast_bfloat16("cpu") == bool(cpu_flags(cpuinfo.read_text()) & BF16_CPU_FLAGS)
