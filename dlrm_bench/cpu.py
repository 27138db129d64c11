"""CPU instruction-set handling: host flags, precision support checks, oneDNN / MKL ISA caps.

This module must not import torch: ``apply_isa_environment`` has to run before torch (and with it
oneDNN and MKL) is loaded, because both libraries read their ISA caps once per process.

Precisions and what they need (flags as spelled in ``/proc/cpuinfo``):

============== ================================ ==========================================
precision      needs                            ISA environment
============== ================================ ==========================================
avx_fp32       avx512f                          oneDNN capped at AVX512_CORE_VNNI, MKL AVX512
avx_int8       avx512f, avx512_vnni             oneDNN capped at AVX512_CORE_VNNI, MKL AVX512
amx_bfloat16   amx_tile, amx_bf16               oneDNN uncapped (ALL)
amx_bfloat32   amx_tile, amx_bf16               oneDNN uncapped (ALL)
amx_int8       amx_tile, amx_int8               oneDNN uncapped (ALL)
============== ================================ ==========================================

Override for tests and dry runs: ``DLRM_BENCH_CPU_FLAGS`` (comma- or space-separated flag list)
replaces the host's flags, e.g. ``DLRM_BENCH_CPU_FLAGS="avx512f avx512_vnni"`` simulates a
Cascade Lake host without AMX.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

from dlrm_bench.errors import UserError

PRECISIONS: tuple[str, ...] = (
    "avx_fp32", "avx_int8", "amx_int8", "amx_bfloat16", "amx_bfloat32",
)
TRAINING_PRECISIONS: tuple[str, ...] = ("avx_fp32", "amx_bfloat16", "amx_bfloat32")
FUNCTIONS: tuple[str, ...] = ("inference", "training")

FLAGS_ENV = "DLRM_BENCH_CPU_FLAGS"
CPUINFO = Path("/proc/cpuinfo")

REQUIRED_FLAGS: dict[str, tuple[str, ...]] = {
    "avx_fp32": ("avx512f",),
    "avx_int8": ("avx512f", "avx512_vnni"),
    "amx_int8": ("amx_tile", "amx_int8"),
    "amx_bfloat16": ("amx_tile", "amx_bf16"),
    "amx_bfloat32": ("amx_tile", "amx_bf16"),
}

# oneDNN reads ONEDNN_MAX_CPU_ISA (and, in builds before v3.0, DNNL_MAX_CPU_ISA) once, at its first
# ISA query. AVX512_CORE_VNNI is the highest level below AMX, i.e. what a Cascade Lake offers.
_AVX_ENV: dict[str, str] = {
    "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI",
    "DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI",
    # MKL (torch's fp32 GEMM) picks AMX kernels only for bf16/int8 GEMMs, never for sgemm; the
    # cap makes "no AMX" hold for every MKL call too, and MKL_VERBOSE then reports "AVX-512".
    "MKL_ENABLE_INSTRUCTIONS": "AVX512",
}
# For amx_* the cap is set explicitly to ALL (oneDNN's default) rather than AVX512_CORE_AMX:
# ALL only adds ISA levels newer than AMX-BF16/INT8 (AVX10.1, AMX-FP16), which oneDNN uses for
# fp16 data only, so the kernels for our bf16/int8 data are the same; setting it explicitly
# overrides a cap left in the environment by an earlier avx_* run in the same shell.
_AMX_ENV: dict[str, str] = {
    "ONEDNN_MAX_CPU_ISA": "ALL",
    "DNNL_MAX_CPU_ISA": "ALL",
}


def parse_flags(text: str) -> frozenset[str]:
    """Flags from a ``/proc/cpuinfo`` text (first ``flags`` line) or a comma/space list."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    if ":" in text:  # a cpuinfo text without any flags line
        return frozenset()
    return frozenset(flag for flag in re.split(r"[\s,]+", text.strip()) if flag)


def cpu_flags(environ: Mapping[str, str] | None = None, cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The host's CPU flags (``/proc/cpuinfo``), or ``DLRM_BENCH_CPU_FLAGS`` when set."""
    env = os.environ if environ is None else environ
    override = env.get(FLAGS_ENV)
    if override is not None:
        return parse_flags(override)
    try:
        return parse_flags(cpuinfo.read_text())
    except OSError:
        return frozenset()


def check_precision_name(precision: str) -> None:
    """Raise ``UserError`` unless ``precision`` is one of ``PRECISIONS``."""
    if precision not in PRECISIONS:
        raise UserError(
            f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}"
        )


def check_supported(
    precision: str, function: str = "inference", flags: frozenset[str] | None = None
) -> None:
    """Refuse, with one clear ``UserError`` line, what this host or this benchmark cannot run."""
    check_precision_name(precision)
    if function not in FUNCTIONS:
        raise UserError(f"unknown function {function!r}: choose one of {', '.join(FUNCTIONS)}")
    if function == "training" and precision not in TRAINING_PRECISIONS:
        raise UserError(
            f"precision {precision} cannot train: training supports "
            f"{', '.join(TRAINING_PRECISIONS)}; int8 training is not supported"
        )
    have = cpu_flags() if flags is None else flags
    needed = REQUIRED_FLAGS[precision]
    missing = [flag for flag in needed if flag not in have]
    if missing:
        source = f" (from {FLAGS_ENV})" if flags is None and FLAGS_ENV in os.environ else ""
        raise UserError(
            f"precision {precision} needs the CPU flags {', '.join(needed)}; "
            f"this host lacks: {', '.join(missing)}{source}"
        )


def isa_environment(precision: str) -> dict[str, str]:
    """Environment variables that pin oneDNN / MKL to the precision's ISA (set before torch)."""
    check_precision_name(precision)
    return dict(_AVX_ENV if precision.startswith("avx_") else _AMX_ENV)


def _acceptable(key: str, current: str | None, wanted: str) -> bool:
    """Whether a value already in the environment meets the precision's intent.

    A oneDNN cap is fine when it allows AMX for amx_* (``ALL`` or an ``*AMX*`` level, e.g. the
    seed's AVX512_CORE_AMX) and forbids it for avx_* (any level below AMX, e.g. AVX2); any other
    variable must have exactly the wanted value.
    """
    if current is None:
        return False
    value = current.strip().upper()
    if key.endswith("_MAX_CPU_ISA"):
        allows_amx = value == "ALL" or "AMX" in value
        return allows_amx == (wanted == "ALL")
    return value == wanted


def isa_mismatches(precision: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of ``isa_environment(precision)`` that ``environ`` does not satisfy.

    Unset oneDNN caps count as ``ALL`` (oneDNN's default), i.e. fine for amx_* only.
    """
    env = os.environ if environ is None else environ
    wanted = isa_environment(precision)
    return {key: value for key, value in wanted.items()
            if not _acceptable(key, env.get(key, "ALL" if key.endswith("_MAX_CPU_ISA") else None),
                               value)}


def apply_isa_environment(precision: str) -> dict[str, str]:
    """Set ``isa_environment(precision)`` in ``os.environ``; returns the variables it changed.

    The precision's intent wins over values already in the environment: ``avx_*`` runs without
    AMX whatever the shell exported (an AMX-enabling value is replaced, with a warning), while a
    value that already meets the intent (say ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_AMX`` for amx_*,
    or ``AVX2`` for avx_*) is kept. When torch is already imported the change may come too late
    (oneDNN and MKL read their caps once, at first use) and a ``RuntimeWarning`` says so: call
    this before ``import torch``.
    """
    changed: dict[str, str] = {}
    for key, value in isa_mismatches(precision).items():
        old = os.environ.get(key)
        if old is not None:
            warnings.warn(f"{key}={old} replaced by {value} for precision {precision}",
                          RuntimeWarning, stacklevel=2)
        os.environ[key] = value
        changed[key] = value
    if changed and "torch" in sys.modules:
        warnings.warn(
            f"torch is already imported: {', '.join(sorted(changed))} may not take effect "
            "(oneDNN and MKL read their ISA caps once per process); set them before torch",
            RuntimeWarning, stacklevel=2,
        )
    return changed
