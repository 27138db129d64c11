"""Checkpoints in the reference ``tb00_40M.pt`` layout.

The file is a dict with ``state_dict`` (``emb_l.{i}.weight``, ``bot_l.{0,2,4}.{weight,bias}``,
``top_l.{0,2,4,6,8}.{weight,bias}``) beside bookkeeping keys (``epoch``, ``nbatches``,
``test_auc``, ...). The real file is ~90 GB, so it is loaded memory-mapped and the model's
parameters are *assigned* the mapped tensors: nothing is copied into RAM. ``weights_only=True``
means a checkpoint can never execute code.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dlrm_bench.errors import UserError
from dlrm_bench.model import DLRM
from dlrm_bench.presets import ModelSpec
from dlrm_bench.results import atomic_torch_save

_EMB_KEY = re.compile(r"^emb_l\.(\d+)\.weight$")
_MLP_KEY = re.compile(r"^(bot_l|top_l)\.(\d+)\.(weight|bias)$")


def load_checkpoint_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw checkpoint dict, memory-mapped and with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint {p} does not exist")
    if p.stat().st_size == 0:
        raise UserError(f"checkpoint {p} is empty")
    try:
        # mmap needs the zip (torch.save >= 1.6) format; the legacy format cannot be mapped.
        mmap = zipfile.is_zipfile(p)
        obj = torch.load(p, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"checkpoint {p} was refused: it holds objects other than tensors and plain data "
            f"(weights_only load): {first}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {p} cannot be read (truncated or corrupt?): {first}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        return dict(obj)
    if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": dict(obj)}  # a bare state_dict is accepted too
    raise UserError(f"checkpoint {p} has no 'state_dict' entry")


def spec_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> ModelSpec:
    """Infer table sizes, embedding dim and MLP widths from tensor shapes.

    Raises ``UserError`` naming the first missing key or inconsistent shape.
    """
    tables: dict[int, torch.Tensor] = {}
    mlp: dict[str, dict[int, dict[str, torch.Tensor]]] = {"bot_l": {}, "top_l": {}}
    for key, tensor in state_dict.items():
        if m := _EMB_KEY.match(key):
            tables[int(m.group(1))] = tensor
        elif m := _MLP_KEY.match(key):
            mlp[m.group(1)].setdefault(int(m.group(2)), {})[m.group(3)] = tensor
    if not tables:
        raise UserError(f"{source}: no embedding tables (missing key emb_l.0.weight)")
    for i in range(len(tables)):
        if i not in tables:
            raise UserError(f"{source}: missing key emb_l.{i}.weight")
    dims = {t.shape[1] for t in tables.values() if t.dim() == 2}
    if len(dims) != 1 or any(t.dim() != 2 for t in tables.values()):
        raise UserError(f"{source}: embedding tables must be 2-D with one common width")
    dim = dims.pop()
    widths: dict[str, list[int]] = {}
    for name, layers in mlp.items():
        if not layers:
            raise UserError(f"{source}: missing key {name}.0.weight")
        expected = [2 * i for i in range(len(layers))]
        if sorted(layers) != expected:
            missing = min(set(expected) - set(layers))
            raise UserError(f"{source}: missing key {name}.{missing}.weight")
        sizes: list[int] = []
        for idx in expected:
            parts = layers[idx]
            for part in ("weight", "bias"):
                if part not in parts:
                    raise UserError(f"{source}: missing key {name}.{idx}.{part}")
            w, b = parts["weight"], parts["bias"]
            if w.dim() != 2 or b.shape != (w.shape[0],):
                raise UserError(
                    f"{source}: {name}.{idx}.bias has shape {tuple(b.shape)}, "
                    f"weight {tuple(w.shape)}"
                )
            if sizes and w.shape[1] != sizes[-1]:
                raise UserError(
                    f"{source}: {name}.{idx}.weight has {w.shape[1]} inputs, "
                    f"the previous layer gives {sizes[-1]}"
                )
            if not sizes:
                sizes.append(int(w.shape[1]))
            sizes.append(int(w.shape[0]))
        widths[name] = sizes
    spec = ModelSpec(
        table_sizes=tuple(int(tables[i].shape[0]) for i in range(len(tables))),
        embedding_dim=int(dim),
        bottom_mlp=tuple(widths["bot_l"]),
        top_mlp=tuple(widths["top_l"][1:]),
    )
    if spec.bottom_mlp[-1] != dim:
        raise UserError(
            f"{source}: bot_l ends at width {spec.bottom_mlp[-1]}, the tables have width {dim}"
        )
    if widths["top_l"][0] != spec.interaction_width:
        # A top MLP sized for more tables than present means the last tables' keys are missing.
        for n in range(len(tables) + 1, 1024):
            width = dim + (n + 1) * n // 2
            if width == widths["top_l"][0]:
                raise UserError(f"{source}: missing key emb_l.{len(tables)}.weight "
                                f"(top_l.0.weight is sized for {n} tables)")
            if width > widths["top_l"][0]:
                break
        raise UserError(
            f"{source}: top_l.0.weight takes {widths['top_l'][0]} inputs, "
            f"{len(tables)} tables of width {dim} give {spec.interaction_width}"
        )
    return spec


def model_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> DLRM:
    """A DLRM whose parameters *are* the given tensors (assigned, not copied)."""
    spec = spec_from_state_dict(state_dict, source)
    with torch.device("meta"):
        model = DLRM(spec, init_weights=False)
    wanted = {k: v for k, v in state_dict.items() if _EMB_KEY.match(k) or _MLP_KEY.match(k)}
    floats = {k: (v if v.dtype == torch.float32 else v.float()) for k, v in wanted.items()}
    model.load_state_dict(floats, strict=True, assign=True)
    # Buffers created on meta (the interaction's index pairs) are rebuilt on the CPU.
    model.interaction = type(model.interaction)(spec.num_tables + 1)
    return model.eval()


def load_checkpoint_model(path: str | os.PathLike[str]) -> DLRM:
    """Load ``path`` and return the DLRM it describes, ready for ``forward``."""
    ckpt = load_checkpoint_file(path)
    return model_from_state_dict(ckpt["state_dict"], source=str(path))


def checkpoint_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """The architecture of a checkpoint, read from shapes only (memory-mapped, cheap)."""
    return spec_from_state_dict(load_checkpoint_file(path)["state_dict"], source=str(path))


def save_checkpoint(model: DLRM, path: str | os.PathLike[str], **bookkeeping: Any) -> Path:
    """Write ``{"state_dict": ..., **bookkeeping}`` atomically in the reference layout."""
    payload: dict[str, Any] = {"state_dict": model.state_dict(), **bookkeeping}
    return atomic_torch_save(payload, path, what="checkpoint ")
