"""The native backend's C kernels (``kernels/interaction.c``): build, load, call.

``GatherInteraction``: one-hot lookups fused with the dot interaction; ``SmallQMLP`` /
``SmallFMLP`` / ``SmallBMLP``: a whole int8 / float32 / bfloat16 MLP in one call, for batches of
a few rows.

The kernel is plain C (AVX-512 intrinsics, OpenMP), compiled on first use with the host's C
compiler into a per-user cache (``kernel_build``, which needs no torch) and loaded with
``ctypes``: a second of ``gcc`` instead of the ~40 s a torch C++ extension takes to compile, and
no dependency on torch's headers. It links the OpenMP runtime by its soname (``libgomp.so.1``),
which torch has already loaded, so its parallel loop runs on torch's own OpenMP threads (no
second pool spinning against torch's).

Where the kernel cannot be used (no compiler, a CPU without AVX-512 BW/VL, a failed build,
``DLRM_BENCH_FUSED=0``) ``load()`` raises ``KernelUnavailable`` with the reason; the native
backend then uses torch ops and records that reason in the run's result (``model.kernels``).
"""

from __future__ import annotations

import contextlib
import ctypes
from functools import cache

import torch

from dlrm_bench.backends.kernel_build import (  # noqa: F401  (also fused.build, fused.ENV_*)
    ABI,
    ENV_CACHE,
    ENV_SWITCH,
    NEEDED_FLAGS,
    KernelUnavailable,
    build,
    check_usable,
    loaded_stamp,
)
from dlrm_bench.backends.native_ops import Workspace
from dlrm_bench.cpu import cpu_flags

MAX_ROWS, MAX_DIM = 64, 512  # the kernel's stack buffers (T + 1 rows of D floats)
TABLE_KINDS = {"fp32": 0, "int8": 1, "bf16": 2}  # interaction.c's table kinds
OUT_KINDS = {torch.float32: 0, torch.uint8: 1, torch.bfloat16: 2}
# The CPU flag the dot products on stored rows need, per table kind (fp32 rows: none to gain).
NARROW_DOT_FLAGS = {"int8": "avx512_vnni", "bf16": "avx512_bf16"}
NARROW_DOT_DIM = {"int8": 64, "bf16": 32}  # D a multiple of one register's worth of the rows
# interaction.c's dot-product modes: rows as float32, rows as stored (VNNI / AVX512-BF16), and
# int8 rows' Gram matrix on AMX tiles
DOTS = {"float32": 0, "stored": 1, "amx": 2, "rounded": 3}
AMX_DOT_FLAGS = {"int8": "amx_int8", "bf16": "amx_bf16"}


@cache
def load() -> ctypes.CDLL:
    """The loaded kernel library (built if needed); ``KernelUnavailable`` says why not."""
    check_usable()
    torch.get_num_threads()  # torch (and with it its OpenMP runtime) is loaded before the kernel
    path = build()[0]
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise KernelUnavailable(f"cannot load the kernel: {exc}") from None
    if lib.dlrm_kernel_abi() != ABI:
        raise KernelUnavailable("the kernel build does not match this dlrm-bench")
    with contextlib.suppress(OSError):  # a read-only cache: status loads it each time
        loaded_stamp(path).touch()  # kernel_build.status need not load it again
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn = lib.dlrm_gather_interact
    fn.restype = ctypes.c_int
    fn.argtypes = [i64, i64, i64, ptr, i64, ptr, i64, i64, ptr, ptr, i64, ctypes.c_int32,
                   ptr, i64, ctypes.c_int32, ctypes.c_float, ctypes.c_float, ctypes.c_int32,
                   ctypes.c_int32]
    lib.dlrm_amx_ready.restype = ctypes.c_int
    lib.dlrm_amx_ready.argtypes = []
    lib.dlrm_one_hot.restype = ctypes.c_int
    lib.dlrm_one_hot.argtypes = [ptr, i64, i64, i64, i64]
    mlp = lib.dlrm_qmlp_small
    mlp.restype = ctypes.c_int
    mlp.argtypes = [i64, ptr, ctypes.c_int32, ptr, i64, ctypes.c_int32, ctypes.c_float,
                    ctypes.c_float, ptr, ptr, i64, ptr, i64, ctypes.c_int32]
    fmlp = lib.dlrm_fmlp_small
    fmlp.restype = ctypes.c_int
    fmlp.argtypes = [i64, ptr, ctypes.c_int32, ptr, i64, ptr, ptr, i64, ptr, i64, ctypes.c_int32]
    bmlp = lib.dlrm_bmlp_small
    bmlp.restype = ctypes.c_int
    bmlp.argtypes = [i64, ptr, ctypes.c_int32, ptr, i64, ctypes.c_int32, ptr, ptr, ptr, i64, ptr,
                     i64, ctypes.c_int32]
    lib.dlrm_small_scratch_bytes.restype = i64
    lib.dlrm_small_scratch_bytes.argtypes = [ptr, i64, ctypes.c_int32]
    lib.dlrm_set_group_bytes.restype = i64
    lib.dlrm_set_group_bytes.argtypes = [i64]
    fwd = lib.dlrm_forward_small
    fwd.restype = ctypes.c_int
    fwd.argtypes = [ptr, i64, ptr, i64, ptr, i64, i64, ptr, i64, i64, ptr, ptr, ctypes.c_int32]
    tiles = lib.dlrm_layer_tiles
    tiles.restype = ctypes.c_int
    tiles.argtypes = [ctypes.c_int32, ptr, i64, ptr, i64, ptr, i64, ctypes.c_int32]
    return lib


def amx_bf16_ready() -> bool:
    """True when the CPU has AMX-BF16 and Linux lets this process use the tiles."""
    return "amx_bf16" in cpu_flags() and bool(load().dlrm_amx_ready())


def amx_int8_ready() -> bool:
    """True when the CPU has AMX-INT8 and Linux lets this process use the tiles."""
    return "amx_int8" in cpu_flags() and bool(load().dlrm_amx_ready())


def set_group_bytes(budget: int) -> int:
    """Sets the weight budget of the AMX chains' layer groups (``interaction.c``: consecutive
    layers whose packed weights fit it run on 64 rows at a time; 0: each layer on all rows) and
    returns the previous one. For tuning and tests: results do not depend on it."""
    if budget < 0:
        raise ValueError("the group budget is a number of bytes >= 0")
    return int(load().dlrm_set_group_bytes(budget))


def unavailable_reason() -> str | None:
    """None when the kernel loads here, else why it does not."""
    try:
        load()
    except KernelUnavailable as exc:
        return str(exc)
    return None


class GatherInteraction:
    """One-hot lookups of ``T`` tables fused with the dot interaction (see ``interaction.c``).

    ``tables``: T tensors (or one stacked tensor plus per-table first rows ``bases``) of float32
    or bfloat16 rows ``[N, D]``, or row-wise int8 rows ``[N, D + 8]`` (uint8). The tensors must
    stay alive as long as this object: it holds their addresses. ``dots`` (``auto`` or
    ``float32``), ``amx`` (the precision may use AMX) and ``bf16_math`` (its fp32 matmuls may
    run in bf16: amx_bfloat32) choose how the dot products run, in ``self.dots``: ``float32``
    rows; ``stored``, the rows as stored (int8 on AVX512-VNNI, bf16 on AVX512-BF16); ``amx``,
    their Gram matrix on AMX tiles (at most 32 rows: up to 31 bf16 tables with x, 28 int8 tables
    with a row of ones and x in three byte planes); ``rounded``, float32 rows and x rounded to
    bf16 in L1 and their Gram matrix on AMX tiles (up to 31 tables), the bmm of oneDNN's fp32
    math mode bf16.
    """

    def __init__(self, tables: list[torch.Tensor], sizes: tuple[int, ...], kind: str,
                 bases: list[int] | None = None, dots: str = "auto", amx: bool = False,
                 bf16_math: bool = False) -> None:
        self.lib = load()
        if kind not in TABLE_KINDS:
            raise KernelUnavailable(f"the fused kernel reads {', '.join(TABLE_KINDS)} tables, "
                                    f"not {kind}")
        self.kind = TABLE_KINDS[kind]
        self.tables = tables  # keeps the storage alive
        first = tables[0]
        self.row_bytes = first.stride(0) * first.element_size()
        self.dim = first.shape[1] - 8 if kind == "int8" else first.shape[1]
        if len(sizes) + 1 > MAX_ROWS or self.dim > MAX_DIM or self.dim % 16:
            raise KernelUnavailable(f"the fused kernel needs T < {MAX_ROWS} tables and D a "
                                    f"multiple of 16 up to {MAX_DIM} (got T={len(sizes)}, "
                                    f"D={self.dim})")
        if bases is None:
            addresses = [t.data_ptr() for t in tables]
        else:
            addresses = [first.data_ptr() + base * self.row_bytes for base in bases]
        for table in tables:
            if table.stride(1) != 1 or table.stride(0) * table.element_size() != self.row_bytes:
                raise KernelUnavailable("the fused kernel needs row-contiguous tables")
        self.addresses = torch.tensor(addresses, dtype=torch.int64)
        self.rows = torch.tensor(sizes, dtype=torch.int64)
        self.num_tables = len(sizes)
        self.width = self.dim + self.num_tables * (self.num_tables + 1) // 2  # D + T(T+1)/2
        # "stored": dot products on the rows as stored (int8: integer on AVX512-VNNI, bf16:
        # vdpbf16ps); "float32": rows dequantized / widened to float32 first (fp32 tables always)
        narrow = (NARROW_DOT_FLAGS.get(kind, "-") in cpu_flags()
                  and self.dim % NARROW_DOT_DIM.get(kind, 1) == 0)
        self.dots = "stored" if dots == "auto" and narrow else "float32"
        # the Gram matrix on AMX tiles: only where the precision may use AMX (``amx``)
        # (32 tile rows: bf16 the tables and x; int8 the tables, a row of ones and x's planes)
        if (self.dots == "stored" and amx and self.num_tables + (1 if kind == "bf16" else 4) <= 32
                and AMX_DOT_FLAGS[kind] in cpu_flags() and self.lib.dlrm_amx_ready()):
            self.dots = "amx"
        # float32 rows where the matmuls may run in bf16: the Gram matrix of their bf16 values
        if (dots == "auto" and kind == "fp32" and amx and bf16_math and self.dim % 32 == 0
                and self.num_tables + 1 <= 32 and "avx512_bf16" in cpu_flags()
                and AMX_DOT_FLAGS["bf16"] in cpu_flags() and self.lib.dlrm_amx_ready()):
            self.dots = "rounded"

    def one_hot(self, offsets: torch.Tensor, indices: torch.Tensor) -> bool:
        """``EmbeddingTables.one_hot`` in one C call: ``offsets`` ``[T, B]`` is ``arange(B)``
        in every row (and ``indices`` has one id per bag)."""
        if (offsets.dtype != torch.int64 or offsets.dim() != 2
                or offsets.shape[0] != self.num_tables or indices.shape != offsets.shape):
            return False
        return bool(self.lib.dlrm_one_hot(offsets.data_ptr(), offsets.stride(0),
                                          offsets.stride(1), offsets.shape[0], offsets.shape[1]))

    def __call__(self, x: torch.Tensor, indices: torch.Tensor, out: torch.Tensor,
                 quantize: tuple[float, int] | None = None) -> torch.Tensor:
        """``x`` ``[B, D]``, ``indices`` ``[T, B]`` int64 (one id per bag) -> ``out``
        ``[B, D + T(T+1)/2]``: float32 or bfloat16, or uint8 when ``quantize`` = (scale, zero
        point)."""
        batch = x.shape[0]
        if quantize is not None and out.dtype != torch.uint8:
            raise ValueError("out must be uint8 when quantize is given")
        if out.dtype not in OUT_KINDS or out.stride(1) != 1 or tuple(out.shape) != (
                batch, self.width):
            raise ValueError("out must be a row-contiguous [B, F] float32 / bfloat16 tensor, "
                             "or uint8 with quantize")
        if out.dtype == torch.uint8 and quantize is None:
            raise ValueError("uint8 output needs quantize=(scale, zero point)")
        if indices.shape != (self.num_tables, batch):
            raise ValueError(f"indices must be [T={self.num_tables}, B={batch}]")
        if x.dtype != torch.float32 or x.stride(1) != 1:
            x = x.float().contiguous()
        if indices.dtype != torch.int64:
            indices = indices.long()
        inv_scale, zero_point = (1.0 / quantize[0], float(quantize[1])) if quantize else (1.0, 0.0)
        code = self.lib.dlrm_gather_interact(
            batch, self.num_tables, self.dim, x.data_ptr(), x.stride(0),
            indices.data_ptr(), indices.stride(0), indices.stride(1),
            self.addresses.data_ptr(), self.rows.data_ptr(), self.row_bytes, self.kind,
            out.data_ptr(), out.stride(0), OUT_KINDS[out.dtype], inv_scale, zero_point,
            DOTS[self.dots], torch.get_num_threads())
        if code == -2:
            raise IndexError("an embedding id is outside its table")
        if code != 0:
            raise RuntimeError(f"fused interaction kernel refused its arguments ({code})")
        return out


class QLayer(ctypes.Structure):
    """``dlrm_qlayer`` of ``interaction.c``: one int8 linear of a small-batch chain."""

    _fields_ = [("k", ctypes.c_int64), ("n", ctypes.c_int64), ("kw", ctypes.c_int64),
                ("w", ctypes.c_void_p), ("zc", ctypes.c_void_p), ("mul", ctypes.c_void_p),
                ("add", ctypes.c_void_p), ("post", ctypes.c_int32), ("out_u8", ctypes.c_int32),
                ("lo", ctypes.c_int32)]


POSTS = {"none": 0, "relu": 1, "sigmoid": 2}
MAX_LAYERS = 16


class SmallQMLP:
    """A chain of int8 linears for few-row batches, in one call (``dlrm_qmlp_small``).

    ``layers``: objects with ``native_int8.QLinear``'s fields (``weight_q``, ``w_scales``,
    ``bias``, ``x_scale``, ``x_zp``, ``out_scale``, ``out_zp``, ``out_dtype``: None for uint8
    output, ``post``). Same arithmetic as running them one by one through oneDNN, without its
    per-call cost and the Python between layers, which dominate at 1-16 rows. ``float_input``:
    the chain takes float32 rows and quantizes them with the first layer's input qparams;
    ``sigmoid``: the last layer's output goes through a sigmoid. Needs AVX512-VNNI.
    """

    def __init__(self, layers: list, float_input: bool = False, sigmoid: bool = False) -> None:
        self.lib = load()
        if "avx512_vnni" not in cpu_flags():
            raise KernelUnavailable("the CPU lacks avx512_vnni")
        if not 0 < len(layers) <= MAX_LAYERS:
            raise KernelUnavailable(f"the small int8 MLP takes 1-{MAX_LAYERS} layers")
        self.keep: list[torch.Tensor] = []  # the packed tensors the C structs point into
        self.structs = (QLayer * len(layers))()
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            if not last and layer.out_dtype is not None:
                raise KernelUnavailable("inner layers of a chain must emit uint8")
            self.structs[i] = self._layer(layer, "sigmoid" if (last and sigmoid) else layer.post)
        first, final = layers[0], layers[-1]
        self.k = int(first.weight_q.shape[1])
        self.n = int(final.weight_q.shape[0])
        self.out_u8 = final.out_dtype is None
        self.float_input = float_input
        self.x_inv_scale, self.x_zp = 1.0 / first.x_scale, float(first.x_zp)
        self.width = max([self.k, *(int(layer.weight_q.shape[0]) for layer in layers)])
        self.scratch = Workspace()  # the uint8 rows between layers, by batch size

    def _layer(self, layer, post: str) -> QLayer:
        weight_q = layer.weight_q
        n, k = weight_q.shape
        # K padded to 64 with zero weights: whole 64-k chunks for the AMX tiles
        n16, k64 = -(-n // 16) * 16, -(-k // 64) * 64
        padded = torch.zeros(n16, k64, dtype=torch.int8)
        padded[:n, :k] = weight_q
        # [N/16, 16, K/4, 4] -> [N/16, K/4, 16, 4]: 4 k's of 16 outputs per 64-byte load, which
        # is also an AMX B tile's layout (16 groups of 4 k x 16 outputs per 1 KB)
        packed = padded.view(n16 // 16, 16, k64 // 4, 4).permute(0, 2, 1, 3).contiguous()
        # the input zero point's share of each output's sum, subtracted in int32 (exact)
        zc = (int(layer.x_zp) * weight_q.to(torch.int32).sum(dim=1, dtype=torch.int32))
        scale = float(layer.x_scale) * layer.w_scales.double()
        bias = layer.bias.detach().double()
        out_u8 = layer.out_dtype is None
        lo = 0
        if out_u8:  # the requantization folded into one multiply-add (see qstore)
            out_inv = 1.0 / float(layer.out_scale)
            scale, bias = scale * out_inv, bias * out_inv + float(layer.out_zp)
            lo = int(layer.out_zp) if post == "relu" else 0
        zc, mul, add = zc.contiguous(), scale.float().contiguous(), bias.float().contiguous()
        self.keep += [packed, zc, mul, add]
        return QLayer(k, n, k64 // 4, packed.data_ptr(), zc.data_ptr(), mul.data_ptr(),
                      add.data_ptr(), POSTS[post], int(out_u8), lo)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[M, K]`` (uint8, or float32 with ``float_input``) -> ``[M, N]`` uint8/float32."""
        rows = x.shape[0]
        want = torch.float32 if self.float_input else torch.uint8
        if x.dtype != want or x.shape[1] != self.k or x.stride(1) != 1:
            raise ValueError(f"x must be a row-contiguous {want} [M, {self.k}] tensor")
        scratch = [self.scratch.get(name, (rows, self.width), torch.uint8) for name in "ab"]
        out = torch.empty(rows, self.n, dtype=torch.uint8 if self.out_u8 else torch.float32)
        code = self.lib.dlrm_qmlp_small(
            rows, self.structs, len(self.structs), x.data_ptr(), x.stride(0),
            int(self.float_input), self.x_inv_scale, self.x_zp, scratch[0].data_ptr(),
            scratch[1].data_ptr(), self.width, out.data_ptr(), out.stride(0),
            torch.get_num_threads())
        if code != 0:
            raise RuntimeError(f"small int8 MLP kernel refused its arguments ({code})")
        return out


class FLayer(ctypes.Structure):
    """``dlrm_flayer`` of ``interaction.c``: one float32 linear of a small-batch chain."""

    _fields_ = [("k", ctypes.c_int64), ("n", ctypes.c_int64), ("w", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("post", ctypes.c_int32)]


class SmallFMLP:
    """A chain of float32 linears for few-row batches, in one call (``dlrm_fmlp_small``).

    ``layers``: objects with ``native_ops.DenseLinear``'s fields (``weight`` ``[N, K]`` and
    ``bias`` ``[N]`` float32, ``post``: relu, sigmoid or none). Same sums as F.linear up to the
    order of the additions; no oneDNN call per layer and no Python between layers.
    """

    def __init__(self, layers: list) -> None:
        self.lib = load()
        if not 0 < len(layers) <= MAX_LAYERS:
            raise KernelUnavailable(f"the small float MLP takes 1-{MAX_LAYERS} layers")
        if any(layer.weight.dtype != torch.float32 for layer in layers):
            raise KernelUnavailable("the small float MLP takes float32 weights")
        self.keep: list[torch.Tensor] = []  # the packed tensors the C structs point into
        self.structs = (FLayer * len(layers))()
        for i, layer in enumerate(layers):
            self.structs[i] = self._layer(layer)
        self.k = int(layers[0].weight.shape[1])
        self.n = int(layers[-1].weight.shape[0])
        self.width = max(int(layer.weight.shape[0]) for layer in layers)
        self.scratch = Workspace()  # the rows between layers, by batch size

    def _layer(self, layer) -> FLayer:
        n, k = layer.weight.shape
        n16 = -(-n // 16) * 16
        padded = torch.zeros(n16, k, dtype=torch.float32)
        padded[:n] = layer.weight
        # [N/16, 16, K] -> [N/16, K, 16]: one k of 16 outputs per 64-byte load
        packed = padded.view(n16 // 16, 16, k).permute(0, 2, 1).contiguous()
        bias = layer.bias.detach().float().contiguous()
        self.keep += [packed, bias]
        return FLayer(k, n, packed.data_ptr(), bias.data_ptr(), POSTS[layer.post])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[M, K]`` float32 -> ``[M, N]`` float32 (a new tensor)."""
        rows = x.shape[0]
        if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != self.k or x.stride(1) != 1:
            raise ValueError(f"x must be a row-contiguous float32 [M, {self.k}] tensor")
        scratch = [self.scratch.get(name, (rows, self.width), torch.float32) for name in "ab"]
        out = torch.empty(rows, self.n, dtype=torch.float32)
        code = self.lib.dlrm_fmlp_small(
            rows, self.structs, len(self.structs), x.data_ptr(), x.stride(0),
            scratch[0].data_ptr(), scratch[1].data_ptr(), self.width, out.data_ptr(),
            out.stride(0), torch.get_num_threads())
        if code != 0:
            raise RuntimeError(f"small float MLP kernel refused its arguments ({code})")
        return out


class BLayer(ctypes.Structure):
    """``dlrm_blayer`` of ``interaction.c``: one bfloat16 linear of a small-batch chain."""

    _fields_ = [("k", ctypes.c_int64), ("n", ctypes.c_int64), ("kp", ctypes.c_int64),
                ("w", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("post", ctypes.c_int32),
                ("out", ctypes.c_int32)]


# dlrm_blayer.out: what a bf16 layer stores
B_OUT = {"bf16": 0, "bf16-as-float32": 1, "float32": 2}


class SmallBMLP:
    """A chain of bfloat16 linears for few-row batches, in one call (``dlrm_bmlp_small``).

    ``layers``: objects with ``native_ops.DenseLinear``'s fields (``weight`` ``[N, K]`` bf16, or
    float32 holding bf16 values (amx_bfloat16's head); ``bias``; ``post``). bf16 inputs and
    weights, float32 sums (AVX512-BF16), each inner layer's output rounded to bf16 as oneDNN's bf16
    linears do. ``out``: the last layer's output, ``"bf16-as-float32"`` (rounded to bf16, stored
    as float32: a bf16 bottom MLP's output as the interaction reads it) or ``"float32"`` (the
    head's, not rounded). ``float_input``: the chain takes float32 rows and rounds them to bf16.
    ``round_weights``: float32 weights are rounded to bf16 (amx_bfloat32: what oneDNN's bf16
    math mode does with them on AMX), instead of refused.
    """

    def __init__(self, layers: list, out: str = "float32", float_input: bool = False,
                 round_weights: bool = False) -> None:
        self.lib = load()
        if "avx512_bf16" not in cpu_flags():
            raise KernelUnavailable("the CPU lacks avx512_bf16")
        if not 0 < len(layers) <= MAX_LAYERS:
            raise KernelUnavailable(f"the small bf16 MLP takes 1-{MAX_LAYERS} layers")
        if out not in ("bf16-as-float32", "float32"):
            raise ValueError(f"out must be bf16-as-float32 or float32, not {out!r}")
        self.keep: list[torch.Tensor] = []  # the packed tensors the C structs point into
        self.structs = (BLayer * len(layers))()
        for i, layer in enumerate(layers):
            weight = layer.weight
            if weight.dtype != torch.bfloat16 and not round_weights and not torch.equal(
                    weight, weight.bfloat16().to(weight.dtype)):
                raise KernelUnavailable("the small bf16 MLP takes bf16 weights")
            self.structs[i] = self._layer(layer, B_OUT[out if i == len(layers) - 1 else "bf16"])
        self.k = int(layers[0].weight.shape[1])
        self.n = int(layers[-1].weight.shape[0])
        self.out = out
        self.float_input = float_input
        self.width = max(int(layer.weight.shape[0]) for layer in layers)
        self.scratch = Workspace()  # the rows between layers, by batch size

    def _layer(self, layer, out: int) -> BLayer:
        n, k = layer.weight.shape
        # K padded to 32 with zero weights: whole 32-k chunks for the AMX tiles
        n16, k32 = -(-n // 16) * 16, -(-k // 32) * 32
        padded = torch.zeros(n16, k32, dtype=torch.bfloat16)
        padded[:n, :k] = layer.weight
        # [N/16, 16, K/2, 2] -> [N/16, K/2, 16, 2]: 2 k's of 16 outputs per 64-byte load, which
        # is also an AMX B tile's layout (16 pairs of k x 16 outputs per 1 KB)
        packed = padded.view(n16 // 16, 16, k32 // 2, 2).permute(0, 2, 1, 3).contiguous()
        bias = layer.bias.detach().float().contiguous()
        self.keep += [packed, bias]
        return BLayer(k, n, k32 // 2, packed.data_ptr(), bias.data_ptr(), POSTS[layer.post], out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[M, K]`` bf16 (float32 with ``float_input``) -> ``[M, N]`` float32."""
        rows = x.shape[0]
        want = torch.float32 if self.float_input else torch.bfloat16
        if x.dtype != want or x.dim() != 2 or x.shape[1] != self.k or x.stride(1) != 1:
            raise ValueError(f"x must be a row-contiguous {want} [M, {self.k}] tensor")
        scratch = [self.scratch.get(name, (rows, self.width), torch.bfloat16) for name in "ab"]
        scratch_x = self.scratch.get("x", (rows, self.k), torch.bfloat16)
        out = torch.empty(rows, self.n, dtype=torch.float32)
        code = self.lib.dlrm_bmlp_small(
            rows, self.structs, len(self.structs), x.data_ptr(), x.stride(0),
            int(self.float_input), scratch[0].data_ptr(), scratch[1].data_ptr(),
            scratch_x.data_ptr(), self.width, out.data_ptr(), out.stride(0),
            torch.get_num_threads())
        if code != 0:
            raise RuntimeError(f"small bf16 MLP kernel refused its arguments ({code})")
        return out


def layer_on_tiles(chain: SmallQMLP | SmallBMLP, x: torch.Tensor) -> torch.Tensor:
    """The one layer of ``chain`` on ``x`` through the one-call path's AMX tile kernel (rows
    split between the threads, 2 x 2 tiles): uint8 ``x`` for a ``SmallQMLP``, bf16 for a
    ``SmallBMLP``; rows a multiple of 32, K a multiple of 64 bytes. For GEMM benchmarks
    (``benchmarks/harness_peaks.py``); ``KernelUnavailable`` without usable AMX tiles."""
    bf16 = isinstance(chain, SmallBMLP)
    if len(chain.structs) != 1:
        raise ValueError("layer_on_tiles runs a chain of one layer")
    want = torch.bfloat16 if bf16 else torch.uint8
    if x.dtype != want or x.dim() != 2 or x.shape[1] != chain.k or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous {want} [M, {chain.k}] tensor")
    if not (amx_bf16_ready() if bf16 else amx_int8_ready()):
        raise KernelUnavailable("AMX tiles are not usable here")
    out_u8 = not bf16 and chain.out_u8
    out = torch.empty(x.shape[0], chain.n, dtype=torch.uint8 if out_u8 else torch.float32)
    code = chain.lib.dlrm_layer_tiles(int(bf16), ctypes.cast(chain.structs, ctypes.c_void_p),
                                      x.shape[0], x.data_ptr(), x.stride(0), out.data_ptr(),
                                      out.stride(0), torch.get_num_threads())
    if code != 0:
        raise ValueError("the tiles need rows in multiples of 32 and K in multiples of 64 bytes")
    return out


class SmallModel(ctypes.Structure):
    """``dlrm_small_model`` of ``interaction.c``: what ``dlrm_forward_small`` runs."""

    _fields_ = [("mlp_kind", ctypes.c_int32), ("n_bottom", ctypes.c_int32),
                ("n_top", ctypes.c_int32), ("bottom", ctypes.c_void_p), ("top", ctypes.c_void_p),
                ("x_inv_scale", ctypes.c_float), ("x_zp", ctypes.c_float),
                ("z_inv_scale", ctypes.c_float), ("z_zp", ctypes.c_float),
                ("width", ctypes.c_int64), ("num_tables", ctypes.c_int64),
                ("dim", ctypes.c_int64), ("row_bytes", ctypes.c_int64),
                ("table_kind", ctypes.c_int32), ("dots", ctypes.c_int32),
                ("table_addr", ctypes.c_void_p),
                ("table_rows", ctypes.c_void_p), ("amx", ctypes.c_int32)]


class SmallForward:
    """A whole forward in one C call (``dlrm_forward_small``; few-row batches, and on AMX tiles
    every batch size, in chunks): the bottom
    chain, ``gather``'s lookups + interaction and the top chain (ending in the sigmoid), in one
    parallel region. ``bottom`` / ``top``: ``SmallFMLP``s; or ``SmallQMLP``s (bottom with
    ``float_input``, top with ``sigmoid``) with ``quantize``, the top input's (scale, zero
    point); or ``SmallBMLP``s (bottom ``out="bf16-as-float32"``, top ``out="float32"``; the
    interaction then rounded to bf16; ``amx``: the precision may use AMX, and the int8 / bf16
    chains run on AMX tiles where the CPU has them). Holds references to all of them: their
    structs and tensors must stay alive.
    """

    def __init__(self, gather: GatherInteraction, bottom: SmallQMLP | SmallFMLP | SmallBMLP,
                 top: SmallQMLP | SmallFMLP | SmallBMLP,
                 quantize: tuple[float, int] | None = None, amx: bool = False) -> None:
        self.lib = load()
        int8 = isinstance(bottom, SmallQMLP)
        bf16 = isinstance(bottom, SmallBMLP)
        if type(bottom) is not type(top) or int8 != (quantize is not None):
            raise ValueError("bottom and top must be chains of one kind (int8 with quantize)")
        if int8 and not (bottom.float_input and not top.out_u8 and not bottom.out_u8):
            raise ValueError("an int8 forward needs a float-input bottom and a float top")
        if bf16 and (bottom.out, top.out) != ("bf16-as-float32", "float32"):
            raise ValueError("a bf16 forward needs a bf16-as-float32 bottom and a float32 top")
        if top.structs[len(top.structs) - 1].post != POSTS["sigmoid"]:
            raise ValueError("the top chain must end in the sigmoid")
        if bottom.n != gather.dim or top.k != gather.width or top.n != 1:
            raise ValueError(f"chains of {bottom.k}->{bottom.n} and {top.k}->{top.n} do not fit "
                             f"an interaction of {gather.dim} -> {gather.width}")
        self.parts = (gather, bottom, top)
        # bf16 chains on AMX tiles: where the precision may use AMX (``amx``) and the CPU has it
        self.amx = bool(amx and ((bf16 and amx_bf16_ready()) or (int8 and amx_int8_ready())))
        z_inv_scale, z_zp = (1.0 / quantize[0], float(quantize[1])) if quantize else (1.0, 0.0)
        self.model = SmallModel(
            2 if bf16 else int(int8), len(bottom.structs), len(top.structs),
            ctypes.cast(bottom.structs, ctypes.c_void_p), ctypes.cast(top.structs, ctypes.c_void_p),
            bottom.x_inv_scale if int8 else 1.0, bottom.x_zp if int8 else 0.0, z_inv_scale, z_zp,
            max(bottom.width, top.width), gather.num_tables, gather.dim, gather.row_bytes,
            gather.kind, DOTS[gather.dots], gather.addresses.data_ptr(),
            gather.rows.data_ptr(), int(self.amx))
        self.model_ref = ctypes.byref(self.model)
        # scratch by (batch size, threads): (tensor, its address); a few at most (a last chunk)
        self.scratch: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}

    def _scratch(self, rows: int, threads: int) -> int:
        if len(self.scratch) >= 8:
            self.scratch.clear()
        size = self.lib.dlrm_small_scratch_bytes(self.model_ref, rows, threads)
        # zeros: the AMX chains read past the rows and k's they use (finite values needed)
        buffer = torch.zeros(size, dtype=torch.uint8)
        address = buffer.data_ptr()
        self.scratch[(rows, threads)] = (buffer, address)
        return address

    def __call__(self, dense: torch.Tensor, offsets: torch.Tensor,
                 indices: torch.Tensor) -> torch.Tensor | None:
        """``dense [B, 13]``, ``offsets`` / ``indices`` ``[T, B]`` int64 -> ``[B, 1]`` float32
        probabilities; None when a bag holds other than one id (the caller's general path).
        Lean on purpose: at batch 1 this Python is a tenth of the forward."""
        rows = dense.shape[0]
        if (offsets.dtype != torch.int64 or indices.dtype != torch.int64
                or offsets.shape != (self.parts[0].num_tables, rows)
                or indices.shape != offsets.shape):
            return None
        if dense.dtype != torch.float32 or dense.stride(1) != 1:
            dense = dense.float().contiguous()
        threads = torch.get_num_threads()
        scratch = self.scratch.get((rows, threads))
        scratch_ptr = scratch[1] if scratch is not None else self._scratch(rows, threads)
        out = torch.empty(rows, 1, dtype=torch.float32)
        o_strides, i_strides = offsets.stride(), indices.stride()
        code = self.lib.dlrm_forward_small(
            self.model_ref, rows, dense.data_ptr(), dense.stride(0),
            offsets.data_ptr(), o_strides[0], o_strides[1], indices.data_ptr(),
            i_strides[0], i_strides[1], scratch_ptr, out.data_ptr(), threads)
        if code == 1:
            return None
        if code == -2:
            raise IndexError("an embedding id is outside its table")
        if code != 0:
            raise RuntimeError(f"small forward kernel refused its arguments ({code})")
        return out
