"""The DLRM as Intel's benchmark script writes it for IPEX, built from our ``DLRM``'s weights.

``IpexDLRM`` has the layout of ``DLRM_Net`` in IntelAI's ``dlrm_s_pytorch.py``: ``bot_l`` and
``top_l`` plain ``nn.Sequential`` of ``Linear`` / ``ReLU`` / ``Sigmoid``, ``emb_l`` an
``nn.ModuleList`` of ``EmbeddingBag(sum)``, and the interaction
``ipex.nn.functional.interaction(x, *embeddings)`` (its ``--ipex-interaction``), which returns
the dense vector followed by the strictly lower triangle of the dot products row by row, the
order of ``dlrm_bench.model.DotInteraction`` (checked in tests/test_ipex_backend.py).
The weights are those of the ``DLRM`` it is built from, so both backends measure one model.

Also here: the int8 QConfig of Intel's script and the calibration file (IPEX's qconf summary
wrapped with the model's identity).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrm_bench.errors import UserError
from dlrm_bench.model import DLRM
from dlrm_bench.presets import NUM_DENSE, ModelSpec

CALIBRATION_FORMAT = "dlrm-bench-ipex-qconf"
CALIBRATION_VERSION = 1


def model_identity(spec: ModelSpec) -> dict[str, Any]:
    return {"table_sizes": list(spec.table_sizes), "embedding_dim": spec.embedding_dim,
            "bottom_mlp": list(spec.bottom_mlp), "top_mlp": list(spec.top_mlp)}


class IpexDLRM(nn.Module):
    """``forward(dense [B,13], offsets [T,B], indices [T,B]) -> [B, 1]`` with IPEX's interaction."""

    def __init__(self, ipex: Any, bot_l: nn.Sequential, emb_l: nn.ModuleList,
                 top_l: nn.Sequential) -> None:
        super().__init__()
        self.bot_l, self.emb_l, self.top_l = bot_l, emb_l, top_l
        self._interaction = ipex.nn.functional.interaction

    def forward(self, dense: torch.Tensor, offsets: torch.Tensor,
                indices: torch.Tensor) -> torch.Tensor:
        x = self.bot_l(dense)
        embeddings = [bag(indices[k], offsets[k]) for k, bag in enumerate(self.emb_l)]
        return self.top_l(self._interaction(x, *embeddings))


def _copy_mlp(arch: nn.Sequential) -> nn.Sequential:
    """A plain ``nn.Sequential`` with new ``Linear`` modules holding copies of the weights (small;
    ``ipex.optimize`` and ``convert`` rewrite them in place, the source model stays as it was)."""
    layers: list[nn.Module] = []
    for layer in arch:
        if isinstance(layer, nn.Linear):
            new = nn.Linear(layer.in_features, layer.out_features, device="meta")
            new.weight = nn.Parameter(layer.weight.detach().float().clone(), requires_grad=False)
            new.bias = nn.Parameter(layer.bias.detach().float().clone(), requires_grad=False)
            layers.append(new)
        else:
            layers.append(type(layer)())
    return nn.Sequential(*layers)


def _bags(tables: list[torch.Tensor]) -> nn.ModuleList:
    """``EmbeddingBag(sum)`` modules around ``tables`` as they are (no copy: fp32 tables and
    memory-mapped ones stay shared)."""
    return nn.ModuleList(nn.EmbeddingBag.from_pretrained(t, freeze=True, mode="sum")
                         for t in tables)


def build(ipex: Any, model: DLRM, table_dtype: torch.dtype) -> IpexDLRM:
    """An eval-mode ``IpexDLRM`` with ``model``'s weights; tables in ``table_dtype`` (fp32: the
    same tensors; bf16: converted once, as Intel's ``dlrm.emb_l.bfloat16()``)."""
    tables = [bag.weight.detach() for bag in model.emb_l]
    if table_dtype != torch.float32:
        tables = [t.to(table_dtype) for t in tables]
    return IpexDLRM(ipex, _copy_mlp(model.bot_l), _bags(tables), _copy_mlp(model.top_l)).eval()


def state_of(net: IpexDLRM) -> dict[str, torch.Tensor]:
    """The tensors that rebuild ``net`` before IPEX rewrote it (``from_state``)."""
    return {k: v.detach() for k, v in net.state_dict().items()}


def from_state(ipex: Any, spec: ModelSpec, state: dict[str, torch.Tensor]) -> IpexDLRM:
    """Rebuild an ``IpexDLRM`` from ``state_of``'s tensors (e.g. memory-mapped), without copies."""
    def mlp(prefix: str, widths: tuple[int, ...], sigmoid_last: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            lin = nn.Linear(widths[i], widths[i + 1], device="meta")
            lin.weight = nn.Parameter(state[f"{prefix}.{2 * i}.weight"], requires_grad=False)
            lin.bias = nn.Parameter(state[f"{prefix}.{2 * i}.bias"], requires_grad=False)
            last = i == len(widths) - 2
            layers += [lin, nn.Sigmoid() if last and sigmoid_last else nn.ReLU()]
        return nn.Sequential(*layers)

    tables = [state[f"emb_l.{k}.weight"] for k in range(spec.num_tables)]
    return IpexDLRM(ipex, mlp("bot_l", spec.bottom_mlp, False), _bags(tables),
                    mlp("top_l", (spec.interaction_width, *spec.top_mlp), True)).eval()


def example_inputs(spec: ModelSpec, batch: int = 128,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A one-hot batch ``(dense, offsets, indices)`` for quantization's example run."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.log1p(torch.rand(batch, NUM_DENSE, generator=g) * 100)
    indices = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in spec.table_sizes])
    offsets = torch.arange(batch).expand(spec.num_tables, batch).contiguous()
    return dense, offsets, indices


def int8_qconfig_mapping() -> Any:
    """Intel's QConfig: activations MinMax per-tensor symmetric qint8, weights per-channel
    symmetric qint8 (as a ``QConfigMapping`` global: the same thing, without IPEX's warning)."""
    from torch.ao.quantization import (
        MinMaxObserver,
        PerChannelMinMaxObserver,
        QConfig,
        QConfigMapping,
    )

    qconfig = QConfig(
        activation=MinMaxObserver.with_args(qscheme=torch.per_tensor_symmetric, dtype=torch.qint8),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                  qscheme=torch.per_channel_symmetric))
    return QConfigMapping().set_global(qconfig)


def qconf_summary(prepared: Any) -> dict[str, Any]:
    """IPEX's qconf summary (scales of every quantized op) of a calibrated ``prepare``d model."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qconf.json"
        prepared.save_qconf_summary(qconf_summary=str(path))
        return dict(json.loads(path.read_text()))


def load_qconf_summary(prepared: Any, summary: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qconf.json"
        path.write_text(json.dumps(summary))
        prepared.load_qconf_summary(qconf_summary=str(path))


def save_calibration(summary: dict[str, Any], spec: ModelSpec, path: Path,
                     ipex_version: str) -> None:
    """Write the qconf summary with the model's identity, atomically (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION,
           "model": model_identity(spec), "ipex": ipex_version, "qconf_summary": summary}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def load_calibration(path: Path, spec: ModelSpec) -> dict[str, Any]:
    """The qconf summary in ``path``; refuses another backend's or another model's file."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read calibration file {path}: {exc}") from None
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt != CALIBRATION_FORMAT:
        other = " (a native-backend calibration)" if fmt == "dlrm-bench-int8-calibration" else ""
        raise UserError(f"{path} is not an ipex-backend int8 calibration file{other}; "
                        "give the ipex backend its own --calibration-file")
    if doc.get("version") != CALIBRATION_VERSION:
        raise UserError(f"calibration file {path} has version {doc.get('version')}; "
                        f"this dlrm-bench reads version {CALIBRATION_VERSION}")
    if doc.get("model") != model_identity(spec):
        raise UserError(f"calibration file {path} was made for another model architecture; "
                        "remove it or choose another file")
    return dict(doc["qconf_summary"])
