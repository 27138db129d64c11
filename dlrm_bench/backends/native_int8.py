"""Static int8 for the native backend: calibration (and its JSON file) and oneDNN int8 linears.

Scheme (the x86 / oneDNN convention, close to IPEX's static int8 recipe):

- activations: per-tensor, asymmetric **uint8**, MinMax observer over the calibration batches
  (``scale = (max - min) / 255``, ``zero_point = round(-min / scale)`` with ``min <= 0 <= max``).
  uint8 rather than IPEX's symmetric int8 because every hidden activation is a ReLU output (>= 0):
  asymmetric uint8 gives those the full 8 bits instead of 7.
- weights: per output channel, symmetric int8 (``scale = max|w| / 127``, zero point 0).
- each hidden linear writes uint8 directly in the next layer's input quantization (requantization
  fused into the oneDNN GEMM epilogue together with bias and ReLU); the last bottom layer writes
  float for the interaction, the last top layer float32 for the sigmoid.
- embedding tables: rowwise asymmetric uint8 (see ``native_ops.TABLE_KINDS``).

The calibration file is JSON (``CALIBRATION_FORMAT``, version ``CALIBRATION_VERSION``) holding the
model identity (table sizes and MLP widths, which must match to be reused, plus a fingerprint of
the MLP weights, which only warns) and, per linear, the observed input range with its scale and
zero point. Several instances or hosts use one file so they run the same quantized model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from dlrm_bench.errors import UserError
from dlrm_bench.model import DLRM
from dlrm_bench.presets import ModelSpec

CALIBRATION_FORMAT = "dlrm-bench-int8-calibration"
CALIBRATION_VERSION = 1
SCHEME = {"activations": "per_tensor_affine_uint8_minmax",
          "weights": "per_channel_symmetric_int8", "tables": "rowwise_affine_uint8"}


class BatchLike(Protocol):
    """Any batch object with the ``dlrm_bench.data.reader.Batch`` input fields."""

    dense: torch.Tensor    # [B, 13] float32
    offsets: torch.Tensor  # [T, B] int64
    indices: torch.Tensor  # [T, B] int64


def linear_names(model: DLRM) -> list[str]:
    """``bot_l.0``, ``bot_l.2``, ..., ``top_l.8``: the Linear modules in forward order."""
    return [f"{arch}.{i}" for arch in ("bot_l", "top_l")
            for i, layer in enumerate(getattr(model, arch)) if isinstance(layer, nn.Linear)]


def model_identity(spec: ModelSpec) -> dict[str, Any]:
    return {"table_sizes": list(spec.table_sizes), "embedding_dim": spec.embedding_dim,
            "bottom_mlp": list(spec.bottom_mlp), "top_mlp": list(spec.top_mlp)}


def weights_fingerprint(model: DLRM) -> str:
    """SHA-256 (16 hex digits) of the MLP weights: tells calibrations of other checkpoints apart."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith("emb_l."):
            digest.update(name.encode())
            digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def qparams(lo: float, hi: float) -> tuple[float, int]:
    """Per-tensor asymmetric uint8 scale and zero point for the range ``[lo, hi]``."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zero_point = int(min(255, max(0, round(-lo / scale))))
    return scale, zero_point


@torch.no_grad()
def calibrate(model: DLRM, batches: Iterable[BatchLike]) -> dict[str, Any]:
    """Observe the input range of every Linear of the fp32 ``model`` over ``batches``."""
    ranges: dict[str, list[float]] = {}
    hooks = []
    for name in linear_names(model):
        def observe(_m: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
            x = args[0]
            lo, hi = float(x.min()), float(x.max())
            old = ranges.setdefault(name, [lo, hi])
            old[0], old[1] = min(old[0], lo), max(old[1], hi)
        hooks.append(model.get_submodule(name).register_forward_pre_hook(observe))
    count = samples = 0
    try:
        for batch in batches:
            model(batch.dense.float(), batch.offsets, batch.indices)
            count += 1
            samples += int(batch.dense.shape[0])
    finally:
        for hook in hooks:
            hook.remove()
    if count == 0:
        raise UserError("int8 calibration got no batches")
    layers = {}
    for name, (lo, hi) in ranges.items():
        scale, zero_point = qparams(lo, hi)
        layers[name] = {"min": lo, "max": hi, "scale": scale, "zero_point": zero_point}
    return {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION,
            "model": model_identity(model.spec), "weights_fingerprint": weights_fingerprint(model),
            "scheme": SCHEME, "batches": count, "samples": samples, "layers": layers}


def save_calibration(calibration: dict[str, Any], path: Path) -> None:
    """Write ``calibration`` as JSON atomically (tmp file + rename: readers never see half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(calibration, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load_calibration(path: Path, model: DLRM) -> dict[str, Any]:
    """Read a calibration file and check it belongs to ``model``'s architecture."""
    try:
        calibration = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read calibration file {path}: {exc}") from None
    if not isinstance(calibration, dict) or calibration.get("format") != CALIBRATION_FORMAT:
        raise UserError(f"{path} is not a dlrm-bench int8 calibration file")
    if calibration.get("version") != CALIBRATION_VERSION:
        raise UserError(f"calibration file {path} has version {calibration.get('version')}; "
                        f"this dlrm-bench reads version {CALIBRATION_VERSION}")
    if calibration.get("model") != model_identity(model.spec):
        raise UserError(f"calibration file {path} was made for another model architecture "
                        "(table sizes / MLP widths differ); remove it or choose another file")
    layers = calibration.get("layers", {})
    missing = [name for name in linear_names(model) if name not in layers]
    if missing:
        raise UserError(f"calibration file {path} lacks layers: {', '.join(missing)}")
    if calibration.get("weights_fingerprint") != weights_fingerprint(model):
        warnings.warn(f"calibration file {path} was made with other MLP weights; "
                      "its activation ranges may not fit this model", RuntimeWarning, stacklevel=2)
    return calibration


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, K]`` float -> int8 ``[N, K]`` and per-channel scales ``[N]`` (symmetric)."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


class QuantizeInput:
    """Float ``[M, K]`` -> uint8 ``[M, K]`` with a per-tensor scale and zero point."""

    def __init__(self, scale: float, zero_point: int) -> None:
        self.inv_scale, self.zero_point = 1.0 / scale, float(zero_point)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # fused by hand: one temporary, in-place round/clamp, one narrowing copy
        y = torch.addcmul(torch.full((), self.zero_point), x.float(),
                          torch.full((), self.inv_scale))
        return y.round_().clamp_(0.0, 255.0).to(torch.uint8)


class QLinear:
    """oneDNN int8 linear: uint8 ``[M, K]`` -> uint8 (next layer's qparams) or float ``[M, N]``.

    ``qlinear_pointwise`` computes ``post(((x - x_zp) * x_scale) @ (w * w_scale)^T + bias)`` and,
    for uint8 output, requantizes with ``out_scale`` / ``out_zp``; float output needs scale 1, zp 0.
    """

    def __init__(
        self, weight_q: torch.Tensor, w_scales: torch.Tensor, bias: torch.Tensor,
        x_qparams: tuple[float, int], out_qparams: tuple[float, int] | None,
        out_dtype: torch.dtype, relu: bool, batch_hint: int,
    ) -> None:
        self.weight_q, self.w_scales = weight_q, w_scales.float().contiguous()
        self.bias = bias.detach().float().contiguous()
        self.w_zps = torch.zeros(weight_q.shape[0], dtype=torch.int64)
        self.packed = torch.ops.onednn.qlinear_prepack(
            weight_q, [batch_hint, int(weight_q.shape[1])]
        )
        self.x_scale, self.x_zp = float(x_qparams[0]), int(x_qparams[1])
        if out_qparams is None:
            self.out_scale, self.out_zp, self.out_dtype = 1.0, 0, out_dtype
        else:
            self.out_scale, self.out_zp = float(out_qparams[0]), int(out_qparams[1])
            self.out_dtype = None  # uint8
        self.post = "relu" if relu else "none"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.onednn.qlinear_pointwise(
            x, self.x_scale, self.x_zp, self.packed, self.w_scales, self.w_zps, self.bias,
            self.out_scale, self.out_zp, self.out_dtype, self.post, [], "",
        )


def build_qmlp(
    layers: list[dict[str, torch.Tensor]], in_qparams: list[tuple[float, int]],
    out_dtype: torch.dtype, final_relu: bool, batch_hint: int,
) -> list[QLinear]:
    """Chain int8 linears: hidden layers emit uint8 in the next layer's input qparams.

    ``layers[i]`` holds ``weight_q`` int8 ``[N, K]``, ``w_scales`` ``[N]``, ``bias`` ``[N]``.
    """
    out: list[QLinear] = []
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        out.append(QLinear(
            layer["weight_q"], layer["w_scales"], layer["bias"], in_qparams[i],
            None if last else in_qparams[i + 1], out_dtype,
            relu=final_relu if last else True, batch_hint=batch_hint,
        ))
    return out


def layer_qparams(calibration: dict[str, Any], names: list[str]) -> list[tuple[float, int]]:
    layers = calibration["layers"]
    result = []
    for name in names:
        scale, zero_point = float(layers[name]["scale"]), int(layers[name]["zero_point"])
        if not (math.isfinite(scale) and scale > 0 and 0 <= zero_point <= 255):
            raise UserError(f"calibration layer {name} has invalid scale/zero point")
        result.append((scale, zero_point))
    return result
