"""dlrm-bench: the DLRM Criteo Terabyte benchmark for Intel Xeon CPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dlrm_bench.model import DLRM


def load_model(
    checkpoint: str | None = None, preset: str | None = None, seed: int = 0
) -> DLRM:
    """A DLRM ready for ``forward``, from a checkpoint (mmap, ``weights_only``) or a preset.

    Importing torch is deferred so ``dlrm-bench --help`` stays fast.
    """
    from dlrm_bench.checkpoint import load_checkpoint_model
    from dlrm_bench.model import build_model
    from dlrm_bench.presets import get_preset

    if checkpoint is not None:
        return load_checkpoint_model(checkpoint)
    return build_model(get_preset(preset or "tiny"), seed=seed)


__all__ = ["__version__", "load_model"]


def __getattr__(name: str) -> Any:  # pragma: no cover - convenience re-export
    if name == "DLRM":
        from dlrm_bench.model import DLRM

        return DLRM
    raise AttributeError(name)
