"""Whether and how the IPEX backend can run here; imports neither torch nor IPEX.

``dlrm_bench.config.resolve`` calls ``check_backend`` for ``--backend ipex`` so that a missing
intel-extension-for-pytorch (or an unsupported use) fails in one line before any model is built,
also in ``dlrm-bench launch`` before instances start.
"""

from __future__ import annotations

import importlib.util
import os

from dlrm_bench.errors import UserError

IPEX_MODULE = "intel_extension_for_pytorch"
IPEX_MISSING = ("the ipex backend needs intel-extension-for-pytorch: run `make ipex-venv` and use "
                ".venv-ipex/bin/dlrm-bench")
IPEX_NO_TRAINING = ("the ipex backend runs inference only; train with --backend native "
                    "(IPEX training, MergedEmbeddingBagWithSGD, is not implemented)")

# IPEX dispatches its own kernels (interaction, embedding bag, int8 ops) by its ISA level, read
# once at import from ATEN_CPU_CAPABILITY; its bundled oneDNN reads ONEDNN_MAX_CPU_ISA (set by
# dlrm_bench.cpu). For avx_* the IPEX level is capped at AVX512-VNNI (no AMX, no AVX512-BF16),
# like the seed's ONEDNN_MAX_CPU_ISA=avx512_core_vnni. Torch itself ignores this value with a
# warning and keeps its own (AVX512, which has no AMX kernels anyway).
_AVX_IPEX_ENV: dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx512_vnni"}


def ipex_installed() -> bool:
    """Whether intel-extension-for-pytorch can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(IPEX_MODULE) is not None
    except (ImportError, ValueError):
        return False


def check_backend(function: str) -> None:
    """Refuse, with one ``UserError`` line, what the ipex backend cannot do in this venv."""
    if function != "inference":
        raise UserError(IPEX_NO_TRAINING)
    if not ipex_installed():
        raise UserError(IPEX_MISSING)


def ipex_isa_environment(precision: str) -> dict[str, str]:
    """Variables pinning IPEX's own kernels to ``precision``'s ISA (set before IPEX is imported)."""
    return dict(_AVX_IPEX_ENV) if precision.startswith("avx_") else {}


def apply_ipex_isa_environment(precision: str) -> dict[str, str]:
    """Set ``ipex_isa_environment(precision)`` in ``os.environ``; returns what it changed.

    For amx_* the avx_* cap, if an earlier avx_* run left it in this environment, is removed.
    """
    changed: dict[str, str] = {}
    wanted = ipex_isa_environment(precision)
    for key, value in wanted.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
            changed[key] = value
    leftover = _AVX_IPEX_ENV["ATEN_CPU_CAPABILITY"]
    if not wanted and os.environ.get("ATEN_CPU_CAPABILITY") == leftover:
        del os.environ["ATEN_CPU_CAPABILITY"]
        changed["ATEN_CPU_CAPABILITY"] = ""
    return changed
