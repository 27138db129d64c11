"""Torch-version compatibility: the few APIs dlrm-bench uses that differ between torch releases.

The main venv runs torch 2.13; the IPEX venv (``make ipex-venv``) runs torch 2.8, the last
release intel-extension-for-pytorch supports. What differs:

- oneDNN's fp32 matmul math mode (bf32 on AMX). torch >= 2.9:
  ``torch.backends.mkldnn.matmul.fp32_precision`` in ``{"none", "ieee", "bf16", "tf32"}``.
  torch 2.8 has no such attribute; there ``torch.set_float32_matmul_precision("medium")`` makes
  oneDNN run fp32 matmuls in bf16 on AMX (measured: a 2048^3 fp32 matmul goes from ~58 to ~175
  GFLOP/s on 2 Sapphire Rapids cores) and ``"highest"`` is plain fp32.

Call sites that must go through this module to run under torch 2.8:
``dlrm_bench.engine.training.set_fp32_matmul_mode`` (done) and
``dlrm_bench.backends.native._fp32_matmul_precision`` (amx_bfloat32; owned by the native backend).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# torch 2.8 spelling of each fp32_precision value, and back.
_TO_LEGACY = {"bf16": "medium", "tf32": "high", "ieee": "highest", "none": "highest"}
_FROM_LEGACY = {"medium": "bf16", "high": "tf32", "highest": "ieee"}


def has_fp32_precision_api() -> bool:
    """Whether this torch has ``torch.backends.mkldnn.matmul.fp32_precision`` (2.9+)."""
    try:
        return hasattr(torch.backends.mkldnn.matmul, "fp32_precision")
    except AttributeError:
        return False


def get_fp32_matmul_precision() -> str:
    """oneDNN's fp32 matmul mode: ``none`` / ``ieee`` / ``bf16`` / ``tf32`` (2.8: mapped)."""
    if has_fp32_precision_api():
        return str(torch.backends.mkldnn.matmul.fp32_precision)
    return _FROM_LEGACY.get(torch.get_float32_matmul_precision(), "ieee")


def set_fp32_matmul_precision(mode: str) -> None:
    """``bf16``: oneDNN runs fp32 matmuls in bf16 on AMX (bf32); ``ieee`` / ``none``: fp32."""
    if mode not in _TO_LEGACY:
        raise ValueError(f"fp32 matmul precision {mode!r} is not one of {', '.join(_TO_LEGACY)}")
    if has_fp32_precision_api():
        torch.backends.mkldnn.matmul.fp32_precision = mode
    else:
        torch.set_float32_matmul_precision(_TO_LEGACY[mode])


@contextlib.contextmanager
def fp32_matmul_precision(mode: str | None) -> Iterator[None]:
    """Scope the process-global fp32 matmul mode to a block (``None``: leave it alone)."""
    if mode is None:
        yield
        return
    previous = get_fp32_matmul_precision()
    set_fp32_matmul_precision(mode)
    try:
        yield
    finally:
        set_fp32_matmul_precision(previous)
