"""The native backend: stock-PyTorch inference for every precision, no IPEX, no compile.

``prepare(model, precision)`` turns a fp32 ``DLRM`` into a ``PreparedModel``, a callable
``(dense [B, 13] f32, offsets [T, B] i64, indices [T, B] i64) -> probabilities [B, 1] f32``:

============== =========== ===================== =============================================
precision      tables      MLP weights           GEMMs
============== =========== ===================== =============================================
avx_fp32       fp32 (as    fp32, oneDNN-packed   oneDNN fp32, ReLU/sigmoid fused; ISA capped
               given)                            below AMX
amx_bfloat32   bf16 (the   fp32, oneDNN-packed   oneDNN, fp32 math mode bf16 (AMX), per call
               fp32 ones
               rounded,
               see (*))
amx_bfloat16   bf16        bf16, oneDNN-packed   oneDNN bf16 (AMX), ReLU/sigmoid fused
avx_int8,      int8 rows   int8 per channel      oneDNN u8 x s8 (AMX or AVX512-VNNI by the ISA
amx_int8                                         cap), requantize + ReLU fused
============== =========== ===================== =============================================

(*) amx_bfloat32 keeps the model's fp32 weights (checkpoints, training, the state dict) and runs
its matmuls in bf16, which round every embedding row they read to bf16: the interaction's Gram
matrix is the only use of the rows. So its prepared tables are those rows rounded once (round to
nearest even, as the matmuls round), which gives the same bits for one-hot bags (every batch the
data pipeline makes; multi-hot bags, which only the Python API can pass, then sum rounded rows)
with half the DRAM lines per lookup: batch 2048 on 2 cores of an AMX Xeon, same process,
alternating, 8 pairs: 286k -> 316k samples/s (+10%). Where the AMX bf16 tiles are not usable (or
the C kernels are off) the matmuls may run in fp32, and the tables stay fp32 as given.

With the C kernels of ``fused.py`` (every plan): one-hot lookups and the interaction in one
call (the amx_* plans' int8 / bf16 Gram matrices on AMX tiles); small batches through the whole
forward in one call (up to 128 rows per thread for avx_fp32 and avx_int8; the amx_* plans' chains
on AMX tiles up to 1024 rows per thread, from 64 rows per thread with each thread's rows in
32-row blocks of 2 x 2 tiles; without usable tiles on VNNI / AVX512-BF16 / FMA up to 32 / 8 /
16); avx_fp32 and the amx_* plans on tiles run bigger batches through that call too, in chunks
of that size (their MLPs then never go through oneDNN).

The two int8 precisions run the same code; what differs is the process's oneDNN ISA cap
(``dlrm_bench.cpu.isa_environment``), which must be set before torch is imported.

``save_prepared`` / ``load_prepared`` write and map the prepared tensors (tables in their final
dtype, MLP weights, calibration) in one ``torch.save`` file: loading with ``mmap=True`` maps the
tables from the page cache without copying them, so instances on a host share one copy.
``table_memory`` (``prepare``, ``load_prepared``) then moves the tables onto hugepages, one copy
per host as well (``dlrm_bench.hugepages``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrm_bench.backends import fused
from dlrm_bench.backends import native_int8 as q8
from dlrm_bench.backends.compat import fp32_matmul_precision
from dlrm_bench.backends.native_int8 import BatchLike
from dlrm_bench.backends.native_ops import DenseLinear, EmbeddingTables, Interaction, fuse_tables
from dlrm_bench.cpu import check_supported, isa_mismatches
from dlrm_bench.errors import UserError
from dlrm_bench.hugepages import TablePlacement, place_tables, tables_key
from dlrm_bench.model import DLRM
from dlrm_bench.presets import ModelSpec
from dlrm_bench.results import atomic_torch_save

PREPARED_FORMAT = "dlrm-bench-prepared"
PREPARED_VERSION = 1

# Per precision: table kind; ``dtype``, that of the float activations (for int8: the bottom MLP's
# output and the interaction); ``packed``, oneDNN-prepacked float linears (else F.linear = MKL);
# ``chunk``, the most rows run through the network at once (bigger batches go in chunks so that
# the [rows, 1024] activations stay in the 2 MB L2). Measured at terabyte-small, batch 2048,
# 2 pinned cores of an AMX Xeon (torch 2.11; run-to-run spread there was large, so these are
# same-run comparisons):
# - chunk 1024 vs whole 2048-row batches: bf16 +49%, bf32 +57%, int8 +6%, fp32 0..+36% (two
#   runs); 512 is no better than 1024. On another AMX Xeon (2 cores of a VM, 2 MB L2 per core,
#   torch 2.13, with the fused kernel; same process, alternating, 5 repeats, median samples/s at
#   batch 2048) whole batches won at amx_int8 (344k -> 398k) and amx_bfloat16 (167k -> 222k),
#   while amx_bfloat32 stayed ahead in chunks of 1024 (two runs: 139k / 88k, 101k / 93k):
#   those two plans now run 2048 rows at once.
# - avx_fp32: MKL sgemm and oneDNN prepacked fp32 within 3% there (MKL slightly ahead), but on an
#   AMD EPYC (Zen 5, AVX-512) MKL takes a slower code path: 156-179 vs 429-439 GFLOP/s for
#   oneDNN on the MLP shapes (2 threads). oneDNN prepacked is used on every CPU (one library for
#   a fair cross-vendor figure, and the ReLU fuses into the GEMM).
#   amx_bfloat32: packed and unpacked (F.linear -> oneDNN matmul in bf16 mode) equal; packed kept
#   for the fused ReLU.
# - amx_int8 interaction in bf16 (AMX bmm): 1.55x the int8 throughput (one core) of an fp32
#   interaction (MKL sgemm on 27x128 matrices is slow). avx_int8 stays fp32: without AMX /
#   AVX512-BF16 in the ISA cap oneDNN emulates bf16 and the bmm is 10x slower.
# - ``fused``: one-hot lookups + interaction in the C kernel of ``fused.py`` (rows gathered into
#   L1, only the lower triangle computed; int8 rows dequantized there and the output quantized
#   for the top MLP there). Per 1024 rows on the AMD VM: fp32 0.86 vs 7.9 ms for gather + bmm +
#   triangle in torch ops, int8 0.62 vs 5.0 ms. The amx_* plans use it too (bf16 tables: rows
#   widened to fp32 in L1, output rounded to bf16), although no AMX machine was at hand to
#   compare it with their torch path, whose bmm runs on AMX. The bmm is the only op that path
#   would run on AMX, and the others alone cost more than the whole kernel: the amx_* plans run
#   on the AMD VM (oneDNN uncapped: VNNI int8, AVX512-BF16 bf16), batch 2048, 2 threads, the
#   torch path's ops other than the bmm and the MLP GEMMs took 8.2 (int8), 7.6 (bf16) and 16
#   (bf32) ms per batch, the bmm 2.0, 1.7 and 3.2; with the kernel instead, same process,
#   alternating, 5 repeats: amx_int8 134k -> 207k samples/s, amx_bfloat16 122k -> 146k,
#   amx_bfloat32 46k -> 57k. DLRM_BENCH_FUSED=0 gives the torch path back, for the A/B on AMX.
PLANS: dict[str, dict[str, Any]] = {
    "avx_fp32": {"tables": "fp32", "dtype": torch.float32, "packed": True, "chunk": 1024,
                 "fused": True},
    # bf16 tables where the bf16 tiles round the rows anyway (see the module docstring and
    # ``_table_kind``); fp32 activations
    "amx_bfloat32": {"tables": "bf16", "dtype": torch.float32, "packed": True, "chunk": 1024,
                     "fused": True},
    "amx_bfloat16": {"tables": "bf16", "dtype": torch.bfloat16, "packed": True, "chunk": 2048,
                     "fused": True},
    "avx_int8": {"tables": "int8", "dtype": torch.float32, "packed": True, "chunk": 1024,
                 "fused": True},
    "amx_int8": {"tables": "int8", "dtype": torch.bfloat16, "packed": True, "chunk": 2048,
                 "fused": True},
}
PACK_BATCH_HINT = 1024
# Batches of at most this many rows per thread run the whole forward in one C call
# (fused.SmallForward: bottom MLP, gather + interaction, top MLP in one OpenMP region; MLP tiles
# of 4 rows x 64 outputs, int8 on VNNI, fp32 on FMA) instead of oneDNN layer by layer, whose fixed
# cost and blocking for big batches dominate there. benchmarks/small_batch.py on the AMD VM
# (its small-batch-vm.json was never committed), us per batch, one call / general path, same
# process, alternating, median of 5:
#   int8, 1 thread:  1 row 41 / 159, 16 rows 134 / 244, 64 461 / 567, 128 904 / 984,
#                    256 1779 / 1801
#   int8, 2 threads: 1 row 30 / 173, 16 rows 75 / 212, 128 492 / 593, 256 955 / 1042;
#                    512 2254 / 2008 (3 repeats: the general path ahead)
#   fp32, 1 thread:  1 row 106 / 202, 16 rows 402 / 517, 128 3015 / 3211, 256 5912 / 6058
#   fp32, 2 threads: 1 row 67 / 189, 16 rows 226 / 357, 256 3207 / 3321; 512 6296 / 6222
SMALL_INT8_ROWS_PER_THREAD = 128
SMALL_FLOAT_ROWS_PER_THREAD = 128
# The amx_* plans' one-call paths use no AMX GEMMs: amx_int8 the VNNI kernel (every AMX CPU has
# AVX512-VNNI), amx_bfloat16 a bf16 kernel (AVX512-BF16 vdpbf16ps; bf16 rows between layers as
# oneDNN's bf16 linears, the head in float32), amx_bfloat32 the fp32 kernel (fp32 is what the
# bf32 math mode approximates). Their limits are lower than at avx_*, because the general path's
# GEMMs run on AMX. Measured on an AMX Xeon (2 cores of a VM, terabyte-small,
# benchmarks/small_batch.py, benchmarks/results/small-batch-amx-xeon.json), us per batch, one
# call / general path, same process, alternating, median of 3:
#   amx_int8,     1 thread:  16 rows 270 / 517, 32 rows 473 / 613, 64 747 / 769, 128 1362 / 1049
#                 2 threads: 1 row 31 / 324, 64 rows 438 / 587, 128 798 / 788
#   amx_bfloat16, 1 thread:  4 rows 286 / 581, 16 rows 842 / 653
#                 2 threads: 1 row 120 / 390, 4 rows 177 / 403, 16 rows 496 / 469
#   amx_bfloat32, 1 thread:  16 rows 927 / 1231, 32 rows 1569 / 1764, 64 2538 / 1640
#                 2 threads: 1 row 276 / 1031, 16 rows 502 / 803, 128 2410 / 1407
# The bf16 and fp32 one-call paths are bound by streaming their weights (4.4 and 9.5 MB) from
# L3 at each batch, hence the early crossovers.
SMALL_AMX_INT8_ROWS_PER_THREAD = 32
SMALL_AMX_BF16_ROWS_PER_THREAD = 8
SMALL_AMX_BF32_ROWS_PER_THREAD = 16
# The amx_* plans where the one-call chains run on AMX tiles (fused.SmallForward(amx=True)):
# TDPBUSD for amx_int8, TDPBF16PS for amx_bfloat16 and amx_bfloat32 (its weights rounded to
# bf16, as oneDNN's bf16 math mode does), from 8 rows per call (fewer: the AVX-512 chains).
# Below 64 rows per thread each layer's groups of 64 outputs are shared out between the threads
# (16 rows x 64 outputs per tile group); from 64 rows per thread each thread runs every layer on
# its own rows, in 32-row blocks of 2 x 2 tiles with the epilogue overlapped (interaction.c
# chain_rows_amx). First limits, with the group split only (benchmarks/small_batch.py,
# small-batch-amx-tiles.json, -bf32-tiles, -int8-tiles; us per batch, one call / oneDNN path):
# amx_bfloat16 2 threads 16 rows 223 / 594, 1024 rows 4562 / 5509; amx_int8 2 threads 16 rows
# 86 / 490, 256 rows 796 / 1208, 1 thread 1024 rows 5005 / 5074 (a tie). With the row split
# they are ahead at every size measured, so these plans run every batch through that call, in
# chunks of this many rows per thread. Same machine, same process, alternating, samples/s,
# oneDNN path / one call: amx_int8 256 rows 127k / 248k, 512 188k / 282k, 1024 251k / 340k,
# 2048 249k / 299k (chunks of 512 rows per thread 291k); batch 2048, oneDNN path / group split
# / row split: amx_bfloat16 95-140k / 154k / 209-224k, amx_bfloat32 52k / 143k / 193k. The
# int8 top MLP's four GEMMs at 2048 rows: oneDNN 2.7 ms, the row-split tiles 2.2 ms (4.3 TOPS
# of the 12.4 TOPS that TDPBUSD alone reaches on these 2 cores; without the epilogue the tiles
# ran at 6.0). benchmarks/small_batch.py after the change (small-batch-amx-rowsplit.json, tables
# in normal memory, one call of the whole batch / oneDNN path, 2 threads): amx_int8 64 rows 3.40x,
# 1024 1.40x, 2048 1.23x; amx_bfloat16 1.66x at 1024, 1.06x at 2048; amx_bfloat32 1.64x at 1024.
# On 1 thread amx_bfloat16 was even at 1024 rows (0.98x) and behind at 2048 in one call (0.93x).
SMALL_AMX_TILES_ROWS_PER_THREAD = 1024
# avx_fp32 runs bigger batches through the same call too, in chunks of that many rows per
# thread: it allocates nothing per batch (its scratch is reused), where the layer-by-layer path
# allocates each layer's output. Under jemalloc with the seed's MALLOC_CONF (what the launcher
# and the harness preload) that path took ~2,600 minor page faults per 2048-row batch in some
# processes and ran at 25-45k samples/s instead of ~70k (AMD VM, 2 threads, same process,
# alternating: chunks 73k steady, layer by layer 25-66k; with glibc malloc both ~71k).
# int8 keeps oneDNN's VNNI GEMMs there: no faults, and the chunks were no faster (196k / 199k).
SMALL_FLOAT_CHUNKS_BIG_BATCHES = True
# Per precision with a one-call path: the ISA its kernel needs, its MLPs, rows per thread.
SMALL_PATHS: dict[str, tuple[str, str, int]] = {
    "avx_fp32": ("AVX-512", "AVX-512 fp32", SMALL_FLOAT_ROWS_PER_THREAD),
    "avx_int8": ("VNNI", "VNNI int8", SMALL_INT8_ROWS_PER_THREAD),
    "amx_int8": ("VNNI", "VNNI int8", SMALL_AMX_INT8_ROWS_PER_THREAD),
    "amx_bfloat16": ("AVX512-BF16", "AVX512-BF16 bf16", SMALL_AMX_BF16_ROWS_PER_THREAD),
    "amx_bfloat32": ("AVX-512", "AVX-512 fp32", SMALL_AMX_BF32_ROWS_PER_THREAD),
}


def _linears(arch: nn.Sequential) -> list[nn.Linear]:
    return [layer for layer in arch if isinstance(layer, nn.Linear)]


class PreparedModel:
    """A DLRM ready for fast inference in one precision (see the module docstring).

    ``state`` holds every tensor needed (what ``save_prepared`` writes): ``tables`` (list of
    tensors), ``bottom`` / ``top`` (per linear: ``weight``, ``bias`` for floats; ``weight_q``,
    ``w_scales``, ``bias`` for int8) and, for int8, ``calibration`` (the JSON dict).
    ``placement``: where ``state["tables"]`` live when they were moved (hugepages); kept here so
    that the mapping and its lock last as long as the model.
    """

    def __init__(self, precision: str, spec: ModelSpec, state: dict[str, Any],
                 placement: TablePlacement | None = None) -> None:
        self.precision, self.spec, self.state = precision, spec, state
        self.placement = placement or TablePlacement(list(state["tables"]), "normal",
                                                     "left where they were loaded")
        plan = PLANS[precision]
        self.chunk = int(plan["chunk"])
        self.dtype: torch.dtype = plan["dtype"]
        self.math_mode = "bf16" if precision == "amx_bfloat32" else None
        # the kind the tables were prepared in (amx_bfloat32: bf16 or fp32, see ``_table_kind``)
        kind = _stored_kind(state["tables"])
        self.tables = EmbeddingTables(kind, state["tables"], spec.table_sizes)
        self.interaction = Interaction(spec.num_tables)
        self.gather: fused.GatherInteraction | None = None
        self.kernels = {"interaction": "torch ops (bmm + triangle gather)"}
        if plan["fused"]:
            self._use_fused_kernel(kind)
        if precision == "amx_bfloat32":
            self.kernels["tables"] = (
                "bf16: the fp32 tables rounded as its bf16 matmuls round each row they read"
                if kind == "bf16" else "fp32 (prepared where the AMX bf16 tiles or the C kernels "
                                       "were unavailable, or by a dlrm-bench before bf16 tables)")
        self.bottom_in: Callable[[torch.Tensor], torch.Tensor]
        self.top_in: Callable[[torch.Tensor], torch.Tensor]
        self.finish: Callable[[torch.Tensor], torch.Tensor]
        self.top_qparams: tuple[float, int] | None = None  # int8: the top MLP input's qparams
        # int8 on the fused-kernel path: the first top layer for padded rows, the head in C
        self.top_first_padded: q8.QLinear | None = None
        self.z_width = 0
        self.head: fused.SmallQMLP | None = None
        # few rows (not amx_bfloat32): the whole forward in one C call, up to this many rows
        # per thread
        self.small_forward: fused.SmallForward | None = None
        self.small_rows_per_thread = 0
        self.small_chunks = False  # bigger batches too, in chunks of small_rows_per_thread
        with fp32_matmul_precision(self.math_mode):
            if kind == "int8":
                self._build_int8()
            else:
                self._build_float(bool(plan["packed"]))

    def _use_fused_kernel(self, kind: str) -> None:
        tables = self.tables
        bases = tables.bases.view(-1).tolist() if tables.fused else None
        try:
            self.gather = fused.GatherInteraction(tables.weights, tables.sizes, kind, bases=bases,
                                                  amx=self.precision.startswith("amx_"),
                                                  bf16_math=self.math_mode == "bf16")
        except fused.KernelUnavailable as exc:
            self.kernels = {"interaction": f"torch ops (fused kernel unavailable: {exc})"}
            return
        dots = {"float32": "float32", "stored": f"{kind} rows as stored",
                "amx": f"{kind} Gram matrix on AMX tiles",
                "rounded": "fp32 rows rounded to bf16, Gram matrix on AMX tiles"}[self.gather.dots]
        self.kernels = {"interaction": f"fused C kernel (one-hot batches; dot products: {dots}), "
                                       "torch ops otherwise"}

    def _build_float(self, packed: bool) -> None:
        gemv = self.precision == "avx_fp32"  # MKL sgemv for single rows (see DenseLinear)

        def build(layers: list[dict[str, torch.Tensor]], last: str) -> list[DenseLinear]:
            return [DenseLinear(layer["weight"], layer["bias"],
                                last if i == len(layers) - 1 else "relu", packed, PACK_BATCH_HINT,
                                gemv_unpacked=gemv)
                    for i, layer in enumerate(layers)]

        self.bottom = build(self.state["bottom"], "relu")
        self.top = build(self.state["top"], "sigmoid")
        dtype = self.dtype
        if dtype != torch.float32:
            # the 256 -> 1 head in fp32 (on upcast activations): a bf16 sigmoid would leave
            # probabilities on a 2^-8 grid above 0.5, i.e. ties that lower the measured AUC
            head = self.state["top"][-1]
            self.top[-1] = DenseLinear(head["weight"].float(), head["bias"].float(), "sigmoid",
                                       packed=False, batch_hint=PACK_BATCH_HINT)
        self.bottom_in = lambda dense: dense.to(dtype)
        self.top_in = lambda z: z
        self.finish = lambda out: out.float()
        if self.gather is not None and self.precision in SMALL_PATHS:
            self._use_small_forward()

    def _build_int8(self) -> None:
        calibration = self.state["calibration"]
        n_bottom = len(self.state["bottom"])
        names = [f"bot_l.{2 * i}" for i in range(n_bottom)]
        names += [f"top_l.{2 * i}" for i in range(len(self.state["top"]))]
        qp = q8.layer_qparams(calibration, names)
        self.bottom = q8.build_qmlp(self.state["bottom"], qp[:n_bottom], self.dtype,
                                    final_relu=True, batch_hint=PACK_BATCH_HINT)
        self.top = q8.build_qmlp(self.state["top"], qp[n_bottom:], torch.float32,
                                 final_relu=False, batch_hint=PACK_BATCH_HINT)
        self.bottom_in = q8.QuantizeInput(*qp[0])
        self.top_in = q8.QuantizeInput(*qp[n_bottom])
        self.top_qparams = qp[n_bottom]
        self.finish = torch.sigmoid
        if self.gather is not None:  # the same kernel library, the same conditions
            self._use_small_forward()
            if self.precision == "amx_int8":  # on VNNI (avx_int8) the padding lost: 177k -> 168k
                self._lean_int8_top()

    def _lean_int8_top(self) -> None:
        """The int8 top MLP's ends on the fused-kernel path: its input rows padded to a multiple
        of 64 (the kernel writes the 479 values, zero weights meet the pad: oneDNN's u8 GEMM at
        K = 479 took 0.72 ms per 2048 rows, at 512 0.57) and the 256 -> 1 head with the sigmoid
        in one C call (one oneDNN GEMM of one output column plus a torch op took ~0.1 ms).
        Batch 2048 on 2 cores of an AMX Xeon, same process, alternating: 367k -> 377k."""
        first, width = self.top[0], self.gather.width if self.gather else 0
        padded = -(-width // 64) * 64
        if width == 0 or int(first.weight_q.shape[1]) != width:
            return
        weight_q = torch.zeros(first.weight_q.shape[0], padded, dtype=torch.int8)
        weight_q[:, :width] = first.weight_q
        out_qparams = None if first.out_dtype is not None else (first.out_scale, first.out_zp)
        self.top_first_padded = q8.QLinear(
            weight_q, first.w_scales, first.bias, (first.x_scale, first.x_zp), out_qparams,
            first.out_dtype or torch.float32, first.post == "relu", PACK_BATCH_HINT)
        self.z_width = padded
        try:
            self.head = fused.SmallQMLP(self.top[-1:], sigmoid=True)
        except fused.KernelUnavailable:
            self.head = None

    def _use_small_forward(self) -> None:
        """Few rows: the whole forward in one C call (``fused.SmallForward``), int8, fp32 or
        bf16."""
        assert self.gather is not None
        int8 = self.top_qparams is not None
        # bf16 chains: amx_bfloat16's; amx_bfloat32's too where they run on AMX tiles (weights
        # rounded to bf16 as oneDNN's bf16 math mode does), else its fp32 chains
        bf32_tiles = self.precision == "amx_bfloat32" and fused.amx_bf16_ready()
        bf16 = self.precision == "amx_bfloat16" or bf32_tiles
        isa, mlps, limit = SMALL_PATHS[self.precision]
        try:
            if int8:
                bottom = fused.SmallQMLP(self.bottom, float_input=True)
                top = fused.SmallQMLP(self.top, sigmoid=True)
            elif bf16:
                bottom = fused.SmallBMLP(self.bottom, out="bf16-as-float32", float_input=True,
                                         round_weights=bf32_tiles)
                top = fused.SmallBMLP(self.top, out="float32", round_weights=bf32_tiles)
            else:
                bottom, top = fused.SmallFMLP(self.bottom), fused.SmallFMLP(self.top)
            self.small_forward = fused.SmallForward(self.gather, bottom, top, self.top_qparams,
                                                    amx=self.precision.startswith("amx_"))
        except fused.KernelUnavailable as exc:
            self.kernels["small_batches"] = f"as big ones ({isa} kernel unavailable: {exc})"
            return
        if self.small_forward.amx:
            mlps = "AMX int8" if int8 else "AMX bf16"
            limit = SMALL_AMX_TILES_ROWS_PER_THREAD
        self.small_rows_per_thread = limit
        # bigger batches in chunks of that call too: avx_fp32 (no per-batch allocations) and
        # the amx_* plans on AMX tiles (their chains' rows split between the threads from 64
        # rows per thread: ahead of oneDNN's linears at every size measured)
        self.small_chunks = self.small_forward.amx or (self.precision == "avx_fp32"
                                                       and SMALL_FLOAT_CHUNKS_BIG_BATCHES)
        self.kernels["small_batches"] = f"one C call ({mlps} MLPs) up to {limit} rows per thread"
        if self.small_chunks:
            self.kernels["big_batches"] = f"the same C call, in chunks of {limit} rows per thread"

    def _forward(
        self, dense: torch.Tensor, offsets: torch.Tensor, indices: torch.Tensor, one_hot: bool
    ) -> torch.Tensor:
        x = self.bottom_in(dense)
        for layer in self.bottom:
            x = layer(x)
        if self.gather is not None and one_hot:
            # int8: the kernel quantizes its output for the top MLP's first (u8) layer itself
            quantize = self.top_qparams
            if quantize is not None and self.top_first_padded is not None:
                return self._int8_top(x, indices)
            # bf16 for amx_bfloat16's top MLP, fp32 for the other float plans
            z = self.tables.workspace.get("z", (x.shape[0], self.gather.width),
                                          torch.uint8 if quantize else self.dtype)
            self.gather(x, indices, z, quantize=quantize)
        else:
            z = self.top_in(self.interaction(self.tables.stacked(x, offsets, indices, one_hot)))
        for layer in self.top:
            z = layer(z)
        return self.finish(z)

    def _int8_top(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Gather + interaction into rows padded for the padded first top layer, then the top
        MLP, its head in one C call where it built (``_lean_int8_top``)."""
        assert self.gather is not None and self.top_first_padded is not None
        z = self.tables.workspace.get("z-padded", (x.shape[0], self.z_width), torch.uint8)
        self.gather(x, indices, z[:, :self.gather.width], quantize=self.top_qparams)
        z = self.top_first_padded(z)
        for layer in self.top[1:-1]:
            z = layer(z)
        if self.head is not None:
            return self.head(z)
        return self.finish(self.top[-1](z))

    def __call__(
        self, dense: torch.Tensor, offsets: torch.Tensor, indices: torch.Tensor
    ) -> torch.Tensor:
        """``dense [B, 13]``, ``offsets [T, B]``, ``indices [T, B]`` -> ``[B, 1]`` float32."""
        # Entered here only when the caller is not in inference mode already (the engine's
        # loops are): the decorator form cost ~2-5 us per call, a tenth of a batch-1 forward.
        if not torch.is_inference_mode_enabled():
            with torch.inference_mode():
                return self(dense, offsets, indices)
        batch = dense.shape[0]
        rows = self.small_rows_per_thread * torch.get_num_threads()
        if self.small_forward is not None and batch <= rows and isinstance(offsets, torch.Tensor):
            out = self.small_forward(dense, offsets, indices)
            if out is not None:  # None: not one id per bag
                return out
        if self.gather is not None and isinstance(offsets, torch.Tensor):
            one_hot = self.gather.one_hot(offsets, indices)
        else:
            one_hot = self.tables.one_hot(offsets, indices)
        if one_hot and self.small_chunks and self.small_forward is not None and batch > rows > 0:
            out = self._in_chunks(self.small_forward, dense, indices, rows)
            if out is not None:  # None: a chunk it does not take (the general path then)
                return out
        with fp32_matmul_precision(self.math_mode) if self.math_mode else nullcontext():
            if batch <= self.chunk or not one_hot:
                return self._forward(dense, offsets, indices, one_hot)
            out = self._in_chunks(lambda d, o, i: self._forward(d, o, i, True), dense, indices,
                                  self.chunk)
            assert out is not None
            return out

    def _in_chunks(
        self, forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None],
        dense: torch.Tensor, indices: torch.Tensor, rows: int,
    ) -> torch.Tensor | None:
        """A one-hot batch ``rows`` at a time through ``forward(dense, offsets, indices)``
        (offsets: ``arange`` per table); None as soon as ``forward`` declines a chunk."""
        chunk_offsets = self.tables.arange(rows).expand(indices.shape[0], -1)
        outs = []
        for lo in range(0, dense.shape[0], rows):
            hi = min(dense.shape[0], lo + rows)
            out = forward(dense[lo:hi], chunk_offsets[:, :hi - lo], indices[:, lo:hi])
            if out is None:
                return None
            outs.append(out)
        return torch.cat(outs)

    @property
    def calibration(self) -> dict[str, Any] | None:
        return self.state.get("calibration")

    def table_tensors(self) -> list[torch.Tensor]:
        return list(self.state["tables"])


def _stored_kind(tables: list[torch.Tensor]) -> str:
    """The ``TABLE_KINDS`` entry of prepared tables, from their dtype (int8 rows are uint8)."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.uint8: "int8"}[tables[0].dtype]


def _table_kind(precision: str) -> str:
    """The table kind ``prepare`` makes for ``precision``: the plan's, except that amx_bfloat32
    keeps fp32 tables where its rows would not be rounded to bf16 by every use (no usable AMX
    bf16 tiles, or the C kernels off: oneDNN's bf16 math mode may then run in fp32)."""
    kind = str(PLANS[precision]["tables"])
    if precision == "amx_bfloat32":
        try:
            return kind if fused.amx_bf16_ready() else "fp32"
        except fused.KernelUnavailable:
            return "fp32"
    return kind


def _float_state(model: DLRM, dtype: torch.dtype, table_kind: str) -> dict[str, Any]:
    def layers(arch: nn.Sequential) -> list[dict[str, torch.Tensor]]:
        return [{"weight": lin.weight.detach().to(dtype).contiguous(),
                 "bias": lin.bias.detach().to(dtype).contiguous()} for lin in _linears(arch)]

    tables = [bag.weight.detach() for bag in model.emb_l]
    if table_kind != "fp32":
        tables = [fuse_tables(tables, table_kind)]
    return {"tables": tables, "bottom": layers(model.bot_l), "top": layers(model.top_l)}


def _int8_state(model: DLRM, calibration: dict[str, Any]) -> dict[str, Any]:
    def layers(arch: nn.Sequential) -> list[dict[str, torch.Tensor]]:
        out = []
        for lin in _linears(arch):
            weight_q, w_scales = q8.quantize_weight(lin.weight)
            out.append({"weight_q": weight_q, "w_scales": w_scales,
                        "bias": lin.bias.detach().float().contiguous()})
        return out

    tables = [fuse_tables([bag.weight.detach() for bag in model.emb_l], "int8")]
    return {"tables": tables, "bottom": layers(model.bot_l), "top": layers(model.top_l),
            "calibration": calibration}


def _int8_calibration(
    model: DLRM, calibration: Iterable[BatchLike] | None, calibration_file: Path | None
) -> dict[str, Any]:
    if calibration_file is not None and Path(calibration_file).exists():
        return q8.load_calibration(Path(calibration_file), model)
    if calibration is None:
        raise UserError("int8 needs calibration batches or an existing calibration file")
    result = q8.calibrate(model, calibration)
    if calibration_file is not None:
        q8.save_calibration(result, Path(calibration_file))
    return result


def _warn_isa(precision: str) -> None:
    wrong = isa_mismatches(precision)
    if wrong:
        warnings.warn(
            f"the environment does not set {precision}'s ISA "
            f"({', '.join(f'{k}={v}' for k, v in wrong.items())}); oneDNN/MKL may "
            f"{'use' if precision.startswith('avx_') else 'not use'} AMX. Set it before torch "
            "is imported (dlrm_bench.cpu.apply_isa_environment)", RuntimeWarning, stacklevel=3)


def prepare(
    model: DLRM, precision: str, calibration: Iterable[BatchLike] | None = None,
    calibration_file: Path | None = None, table_memory: str = "normal",
) -> PreparedModel:
    """A ``PreparedModel`` of the fp32 ``model`` in ``precision``.

    int8: the calibration is read from ``calibration_file`` when that file exists (so instances
    and hosts share one), otherwise measured on the (finite) ``calibration`` batches and written
    there. fp32 tables are used in place (no copy); bf16 / int8 tables are converted once
    (amx_bfloat32: see ``_table_kind``).
    ``table_memory`` (``dlrm_bench.hugepages.TABLE_MEMORY``): ``auto`` / ``hugepages`` copy the
    tables onto hugepages private to this process.
    """
    check_supported(precision, "inference")
    _warn_isa(precision)
    model = model.eval()
    plan = PLANS[precision]
    with torch.inference_mode():
        if plan["tables"] == "int8":
            calib = _int8_calibration(model, calibration, calibration_file)
            state = _int8_state(model, calib)
        else:
            state = _float_state(model, plan["dtype"], _table_kind(precision))
    placement = place_tables(state["tables"], table_memory)
    state["tables"] = placement.tables
    return PreparedModel(precision, model.spec, state, placement)


def save_prepared(prepared: PreparedModel, path: Path) -> None:
    """Write ``prepared``'s tensors to ``path`` (one ``torch.save`` file, tmp + atomic rename)."""
    path = Path(path)
    payload = {"format": PREPARED_FORMAT, "version": PREPARED_VERSION,
               "precision": prepared.precision, "model": q8.model_identity(prepared.spec),
               "state": prepared.state}
    atomic_torch_save(payload, path)


def load_prepared(path: Path, mmap: bool = True, table_memory: str = "normal") -> PreparedModel:
    """Load a ``save_prepared`` file; with ``mmap`` the tables stay file-backed (shared pages).

    ``table_memory`` ``auto`` / ``hugepages``: the tables are copied onto hugepages, one shared
    copy per file and host (``dlrm_bench.hugepages``).
    """
    try:
        payload = torch.load(Path(path), mmap=mmap, weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"cannot load prepared weights {path}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != PREPARED_FORMAT:
        raise UserError(f"{path} is not a dlrm-bench prepared-weights file")
    if payload.get("version") != PREPARED_VERSION:
        raise UserError(f"prepared-weights file {path} has version {payload.get('version')}; "
                        f"this dlrm-bench reads version {PREPARED_VERSION}")
    ident = payload["model"]
    spec = ModelSpec(tuple(ident["table_sizes"]), ident["embedding_dim"],
                     tuple(ident["bottom_mlp"]), tuple(ident["top_mlp"]))
    check_supported(payload["precision"], "inference")
    state = payload["state"]
    placement = place_tables(state["tables"], table_memory,
                             key=tables_key(Path(path), state["tables"]))
    state["tables"] = placement.tables
    if mmap and placement.memory == "normal":
        for table in placement.tables:
            prefault(table)
    return PreparedModel(payload["precision"], spec, state, placement)


def prefault(tensor: torch.Tensor, page: int = 4096) -> None:
    """Map every page of a memory-mapped tensor now, reading one byte per page.

    A lookup that lands on a page this process has not mapped yet takes a (minor) page fault;
    the first few hundred batches of random ids then ran up to 2x slower than the steady state
    (measured on a 2-core VM at terabyte-small). Mapping is per process, the pages stay shared.
    """
    flat = tensor.reshape(-1).view(torch.uint8)
    int(flat[::page].sum())
