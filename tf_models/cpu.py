"""What this CPU is, in the terms that decide inference speed and int8 arithmetic.

The same model runs at very different speeds on an AVX2-only CPU, one with AVX-512 VNNI and one
with AMX (int8 kernels, oneDNN, XLA all dispatch on these flags), so a speed figure or a runtime
choice is only meaningful together with :func:`cpu_identity`. Benchmarks put it in their headers;
:mod:`tf_models.serve.serving` keys its cached runtime choice and int8 parity check on it.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

# The instruction-set extensions that change which kernels ONNX Runtime, oneDNN, XLA and XNNPACK
# pick. x86: AVX2 is the floor of TensorFlow's wheels; VNNI/AMX are the int8 dot-product units.
# ARM64: dot product (asimddp), int8 matrix multiply (i8mm), SVE.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
               "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "bf16")
# Environment variables that cap what the libraries use, whatever the CPU has: they change speed
# and (for int8) results just as the flags do, so they belong to the identity.
ISA_LIMIT_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "XLA_FLAGS")
# macOS names for the same ARM features (sysctl hw.optional.arm.FEAT_*).
_MACOS_FEATURES = {"hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm",
                   "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.AdvSIMD": "asimd"}


@functools.cache
def _proc_cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) from /proc/cpuinfo (Linux, x86 and ARM); ('', {}) elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "", frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 says flags, ARM says Features
            flags = frozenset(value.split())
    return model, flags


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    """The CPU's marketing name (``AMD EPYC 9654``, ``Apple M2``), or the architecture when unknown."""
    model, _ = _proc_cpuinfo()
    if not model and platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string")
    return model or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> tuple[str, ...]:
    """The :data:`SPEED_FLAGS` this CPU has, in that order."""
    _, flags = _proc_cpuinfo()
    if not flags and platform.system() == "Darwin":
        flags = frozenset(flag for key, flag in _MACOS_FEATURES.items() if _sysctl(key) == "1")
    return tuple(flag for flag in SPEED_FLAGS if flag in flags)


def usable_cores() -> int:
    """Cores this process may run on (its affinity: a container's share, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def isa_limits() -> dict[str, str]:
    """The :data:`ISA_LIMIT_VARIABLES` that are set, e.g. ``{"ONEDNN_MAX_CPU_ISA": "AVX2"}``."""
    return {name: os.environ[name] for name in ISA_LIMIT_VARIABLES if os.environ.get(name)}


def cpu_identity() -> dict[str, Any]:
    """What a runtime choice or an int8 parity check was measured on; equal dicts = same kind of CPU."""
    return {"machine": platform.machine(), "model": cpu_model(), "flags": list(cpu_flags()),
            "cores": usable_cores(), "isa_limits": isa_limits()}


def describe_cpu() -> str:
    """One line for logs and table headers: ``AMD EPYC (2 cores; avx2 fma avx512f ...)``."""
    identity = cpu_identity()
    limits = "".join(f"; {k}={v}" for k, v in identity["isa_limits"].items())
    return f"{identity['model']} ({identity['cores']} cores; {' '.join(identity['flags']) or 'no listed flags'}{limits})"


__all__ = ["ISA_LIMIT_VARIABLES", "SPEED_FLAGS", "cpu_flags", "cpu_identity", "cpu_model", "describe_cpu",
           "isa_limits", "usable_cores"]
