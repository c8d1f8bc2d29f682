"""The CPU this process runs on, read once: the machine block of every result names it, and a converter
picks CPU-dependent defaults from it (an int8 artifact that saturates without VNNI). Never imports torch."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

# Any of these gives x86 an int8 dot product with 32-bit accumulation (VNNI or AMX).
INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@lru_cache(maxsize=1)
def cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    """(model name, feature flags) from /proc/cpuinfo; no flags where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model or platform.processor() or platform.machine(), flags


def int8_saturates(flags: frozenset[str] | None = None) -> bool:
    """True on an x86 CPU without VNNI or AMX: there int8 kernels multiply u8 x s8 pairs with
    VPMADDUBSW, whose 16-bit intermediate sums saturate when weights use all 8 bits (OpenVINO's
    "saturation issue"; ONNX Runtime's reduce_range). ``flags`` defaults to this CPU's."""
    if flags is None:
        flags = cpu_model_and_flags()[1]
    is_x86 = "sse2" in flags or "avx2" in flags
    return is_x86 and not flags & INT8_DOT_PRODUCT_FLAGS


__all__ = ["INT8_DOT_PRODUCT_FLAGS", "cpu_model_and_flags", "int8_saturates"]
