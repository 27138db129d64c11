"""The IPEX backend: per precision, what Intel's benchmark script (``dlrm_s_pytorch.py``) does.

Needs intel-extension-for-pytorch 2.8 with torch 2.8 in its own venv (``make ipex-venv``, then
``.venv-ipex/bin/dlrm-bench run --backend ipex ...``); without it every entry point raises one
``UserError`` line (``ipex_support.IPEX_MISSING``), never a silent fall-back to ``native``.
Inference only.

``prepare(model, precision)`` builds ``ipex_model.IpexDLRM`` (Intel's module layout, IPEX's
interaction) from the ``DLRM``'s weights and returns an ``IpexPrepared``, a callable
``(dense [B,13] f32, offsets [T,B] i64, indices [T,B] i64) -> probabilities [B, 1] f32``:

============== ==========================================================================
precision      steps (Intel's script)
============== ==========================================================================
avx_fp32       ``ipex.optimize(model, dtype=torch.float, auto_kernel_selection=True)``
               (oneDNN prepacked linears), then TorchScript trace + freeze
amx_bfloat32   ``ipex.set_fp32_math_mode(mode=ipex.FP32MathMode.BF32, device="cpu")`` (oneDNN
               runs fp32 GEMMs in bf16 on AMX), then the avx_fp32 steps
amx_bfloat16   tables to bf16 (``emb_l.bfloat16()``), ``ipex.optimize(dtype=torch.bfloat16)``,
               trace + freeze under ``torch.autocast("cpu", bfloat16)``
avx_int8,      ``ipex.quantization.prepare`` with activations MinMax per-tensor symmetric
amx_int8       qint8 and weights per-channel symmetric qint8, calibration batches (or the
               qconf summary of ``calibration_file``), ``ipex.quantization.convert``, trace +
               freeze. IPEX quantizes the tables (int8 per table) and the interaction too.
============== ==========================================================================

ISA: the avx_* / amx_* pairs differ only by the process's caps, set before torch / IPEX load:
``ONEDNN_MAX_CPU_ISA`` (``dlrm_bench.cpu``, read by IPEX's bundled oneDNN too) and, for IPEX's
own kernels, ``ATEN_CPU_CAPABILITY=avx512_vnni`` for avx_* (``ipex_support``).

Tracing happens at the first call, with that call's batch (Intel traces with the first test
batch; the engine's warmup makes the first call), so the graph is specialised for the batch size
that is measured; the traced graph runs other batch sizes too. After it the eager modules are
dropped (for int8 this frees the fp32 tables).

Weight sharing (``save_prepared`` / ``load_prepared``): the file holds the module's tensors
before IPEX rewrote them (tables in their final float dtype) and, for int8, the qconf summary;
each instance maps it (``mmap=True``) and redoes the IPEX steps, which are cheap apart from int8's
table quantization (int8 tables are then private to each instance, as with IPEX itself).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch

from dlrm_bench.backends import ipex_model as im
from dlrm_bench.backends.ipex_support import IPEX_MISSING, apply_ipex_isa_environment
from dlrm_bench.cpu import check_supported
from dlrm_bench.errors import UserError
from dlrm_bench.model import DLRM
from dlrm_bench.presets import ModelSpec
from dlrm_bench.results import atomic_torch_save

PREPARED_FORMAT = "dlrm-bench-ipex-prepared"
PREPARED_VERSION = 1
FLOAT_TABLES = {"avx_fp32": torch.float32, "amx_bfloat32": torch.float32,
                "amx_bfloat16": torch.bfloat16}


class BatchLike(Protocol):
    dense: torch.Tensor
    offsets: torch.Tensor
    indices: torch.Tensor


def import_ipex(precision: str) -> Any:
    """``intel_extension_for_pytorch``, imported after pinning its ISA for ``precision``."""
    apply_ipex_isa_environment(precision)
    try:
        import intel_extension_for_pytorch as ipex
    except ImportError:
        raise UserError(IPEX_MISSING) from None
    return ipex


def _autocast(precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "amx_bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class IpexPrepared:
    """A DLRM prepared by IPEX in one precision; traced and frozen at its first call."""

    def __init__(self, precision: str, spec: ModelSpec, net: torch.nn.Module,
                 state: dict[str, torch.Tensor], calibration: dict[str, Any] | None,
                 ipex_version: str) -> None:
        self.precision, self.spec = precision, spec
        self.net: torch.nn.Module | None = net
        self.state: dict[str, torch.Tensor] | None = state
        self.calibration = calibration
        self.ipex_version = ipex_version
        self.traced: Any = None
        self.traced_batch: int | None = None

    def _trace(self, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        assert self.net is not None
        with torch.inference_mode(False), torch.no_grad(), _autocast(self.precision):
            traced = torch.jit.trace(self.net, inputs, check_trace=False)
            traced = torch.jit.freeze(traced)
            for _ in range(2):  # the JIT's profiling runs (Intel's script runs it twice too)
                traced(*inputs)
        self.traced, self.traced_batch = traced, int(inputs[0].shape[0])
        self.net = self.state = None

    def __call__(self, dense: torch.Tensor, offsets: torch.Tensor,
                 indices: torch.Tensor) -> torch.Tensor:
        """``dense [B, 13]``, ``offsets [T, B]``, ``indices [T, B]`` -> ``[B, 1]`` float32."""
        if self.traced is None:
            self._trace((dense, offsets, indices))
        with torch.no_grad(), _autocast(self.precision):
            out = self.traced(dense, offsets, indices)
        return out if out.dtype == torch.float32 else out.float()


def _quantize(ipex: Any, net: im.IpexDLRM, spec: ModelSpec, summary: dict[str, Any] | None,
              calibration: Iterable[BatchLike] | None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """IPEX static int8: prepare, calibrate (or load the summary), convert."""
    batches = list(calibration) if (summary is None and calibration is not None) else []
    example = ((batches[0].dense, batches[0].offsets, batches[0].indices) if batches
               else im.example_inputs(spec))
    prepared = ipex.quantization.prepare(net, im.int8_qconfig_mapping(), example_inputs=example,
                                         inplace=True)
    if summary is None:
        if not batches:
            raise UserError("int8 needs calibration batches or an existing calibration file")
        with torch.no_grad():
            for b in batches:
                prepared(b.dense, b.offsets, b.indices)
        summary = im.qconf_summary(prepared)
    else:
        im.load_qconf_summary(prepared, summary)
    return ipex.quantization.convert(prepared).eval(), summary


def _ipex_steps(ipex: Any, precision: str, net: im.IpexDLRM, spec: ModelSpec,
                summary: dict[str, Any] | None, calibration: Iterable[BatchLike] | None
                ) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """Intel's per-precision preparation of ``net`` (before tracing); see the module docstring."""
    if precision.endswith("int8"):
        return _quantize(ipex, net, spec, summary, calibration)
    if precision == "amx_bfloat16":
        return ipex.optimize(net, dtype=torch.bfloat16, inplace=True), None
    mode = ipex.FP32MathMode.BF32 if precision == "amx_bfloat32" else ipex.FP32MathMode.FP32
    ipex.set_fp32_math_mode(mode=mode, device="cpu")
    return ipex.optimize(net, dtype=torch.float, inplace=True, auto_kernel_selection=True), None


def prepare(
    model: DLRM, precision: str, calibration: Iterable[BatchLike] | None = None,
    calibration_file: Path | None = None,
) -> IpexPrepared:
    """An ``IpexPrepared`` of the fp32 ``model`` in ``precision`` (``model`` is left unchanged;
    fp32 tables are used in place, bf16 tables converted once).

    int8: the qconf summary is read from ``calibration_file`` when that file exists, otherwise
    measured on the ``calibration`` batches and written there.
    """
    check_supported(precision, "inference")
    ipex = import_ipex(precision)
    spec = model.spec
    with torch.no_grad():
        net = im.build(ipex, model.eval(), FLOAT_TABLES.get(precision, torch.float32))
    state = im.state_of(net)
    summary = None
    if precision.endswith("int8") and calibration_file is not None and \
            Path(calibration_file).exists():
        summary = im.load_calibration(Path(calibration_file), spec)
    prepared_net, summary = _ipex_steps(ipex, precision, net, spec, summary, calibration)
    if precision.endswith("int8") and calibration_file is not None and summary is not None \
            and not Path(calibration_file).exists():
        im.save_calibration(summary, spec, Path(calibration_file), ipex.__version__)
    return IpexPrepared(precision, spec, prepared_net, state, summary, ipex.__version__)


def save_prepared(prepared: IpexPrepared, path: Path) -> None:
    """Write the tensors ``load_prepared`` rebuilds ``prepared`` from (tmp + atomic rename)."""
    if prepared.state is None:
        raise RuntimeError("save_prepared must come before the first call (which traces)")
    path = Path(path)
    payload = {"format": PREPARED_FORMAT, "version": PREPARED_VERSION,
               "precision": prepared.precision, "model": im.model_identity(prepared.spec),
               "state": prepared.state, "calibration": prepared.calibration}
    atomic_torch_save(payload, path)


def load_prepared(path: Path, mmap: bool = True) -> IpexPrepared:
    """Load a ``save_prepared`` file (tables memory-mapped with ``mmap``) and redo IPEX's steps."""
    try:
        payload = torch.load(Path(path), mmap=mmap, weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"cannot load prepared weights {path}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != PREPARED_FORMAT:
        raise UserError(f"{path} is not a dlrm-bench ipex prepared-weights file")
    if payload.get("version") != PREPARED_VERSION:
        raise UserError(f"prepared-weights file {path} has version {payload.get('version')}; "
                        f"this dlrm-bench reads version {PREPARED_VERSION}")
    ident, precision = payload["model"], payload["precision"]
    spec = ModelSpec(tuple(ident["table_sizes"]), ident["embedding_dim"],
                     tuple(ident["bottom_mlp"]), tuple(ident["top_mlp"]))
    check_supported(precision, "inference")
    ipex = import_ipex(precision)
    state = payload["state"]
    net = im.from_state(ipex, spec, state)
    prepared_net, summary = _ipex_steps(ipex, precision, net, spec, payload.get("calibration"),
                                        None)
    return IpexPrepared(precision, spec, prepared_net, state, summary, ipex.__version__)
