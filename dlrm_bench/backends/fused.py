"""The fused gather + dot-interaction kernel (``kernels/interaction.c``): build, load, call.

The kernel is plain C (AVX-512 intrinsics, OpenMP), compiled on first use with the host's C
compiler into a per-user cache and loaded with ``ctypes``: a second of ``gcc`` instead of the
~40 s a torch C++ extension takes to compile, and no dependency on torch's headers. It links the
OpenMP runtime by its soname (``libgomp.so.1``), which torch has already loaded, so its parallel
loop runs on torch's own OpenMP threads (no second pool spinning against torch's).

Where the kernel cannot be used (no compiler, a CPU without AVX-512 BW/VL, a failed build,
``DLRM_BENCH_FUSED=0``) ``load()`` raises ``KernelUnavailable`` with the reason; the native
backend then uses torch ops and records that reason in the run's result (``model.kernels``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path

import torch

from dlrm_bench.cpu import cpu_flags

ABI = 3
SOURCE = "interaction.c"
CFLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-fopenmp",
          "-shared", "-fPIC")
NEEDED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
# "0" turns the kernel off (A/B measurements, debugging); "all" uses it for the amx_* plans with
# fp32 / int8 tables too (amx_bfloat32, amx_int8), which by default keep their AMX bmm
ENV_SWITCH = "DLRM_BENCH_FUSED"
ENV_CACHE = "DLRM_BENCH_KERNEL_CACHE"
MAX_ROWS, MAX_DIM = 64, 512  # the kernel's stack buffers (T + 1 rows of D floats)
KIND_FLOAT32, KIND_INT8 = 0, 1


class KernelUnavailable(RuntimeError):
    """The fused kernel cannot run here; the message says why."""


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dlrm-bench" / "kernels"


def _compiler() -> str:
    name = os.environ.get("CC", "gcc")
    path = shutil.which(name)
    if path is None:
        raise KernelUnavailable(f"no C compiler ({name!r} not found on PATH)")
    return path


def build(directory: Path | None = None) -> Path:
    """The compiled kernel's path, compiling it first if this source/compiler/flags is new.

    The file name carries a hash of all three, so an edited kernel or another compiler never
    loads a stale build; the build goes to a temporary name and is renamed into place, so
    instances starting together on one host may race to build it without harm.
    """
    compiler = _compiler()
    source = resources.files("dlrm_bench.backends").joinpath("kernels", SOURCE).read_bytes()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        raise KernelUnavailable(f"C compiler {compiler} does not run: {exc}") from None
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(CFLAGS).encode()]))
    directory = Path(directory) if directory is not None else cache_dir()
    target = directory / f"interaction-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as tmp:
            src = Path(tmp) / SOURCE
            src.write_bytes(source)
            built = Path(tmp) / target.name
            proc = subprocess.run([compiler, *CFLAGS, str(src), "-o", str(built)],
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
                raise KernelUnavailable(f"compiling {SOURCE} failed: {first}")
            os.replace(built, target)
    except OSError as exc:
        raise KernelUnavailable(f"cannot build the kernel in {directory}: {exc}") from None
    return target


@cache
def load() -> ctypes.CDLL:
    """The loaded kernel library (built if needed); ``KernelUnavailable`` says why not."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        raise KernelUnavailable(f"turned off by {ENV_SWITCH}=0")
    missing = [flag for flag in NEEDED_FLAGS if flag not in cpu_flags()]
    if missing:
        raise KernelUnavailable(f"the CPU lacks {', '.join(missing)}")
    torch.get_num_threads()  # torch (and with it its OpenMP runtime) is loaded before the kernel
    try:
        lib = ctypes.CDLL(str(build()))
    except OSError as exc:
        raise KernelUnavailable(f"cannot load the kernel: {exc}") from None
    if lib.dlrm_kernel_abi() != ABI:
        raise KernelUnavailable("the kernel build does not match this dlrm-bench")
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn = lib.dlrm_gather_interact
    fn.restype = ctypes.c_int
    fn.argtypes = [i64, i64, i64, ptr, i64, ptr, i64, i64, ptr, ptr, i64, ctypes.c_int32,
                   ptr, i64, ctypes.c_int32, ctypes.c_float, ctypes.c_float, ctypes.c_int32]
    small = lib.dlrm_qlinear_small
    small.restype = ctypes.c_int
    small.argtypes = [i64, i64, i64, ptr, i64, ptr, ptr, ptr, ptr, ctypes.c_int32, ctypes.c_int32,
                      ctypes.c_int32, ctypes.c_float, ctypes.c_float, ptr, i64, ctypes.c_int32]
    return lib


def wanted_everywhere() -> bool:
    return os.environ.get(ENV_SWITCH) == "all"


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
    rows ``[N, D]`` or row-wise int8 rows ``[N, D + 8]`` (uint8). The tensors must stay alive as
    long as this object: it holds their addresses.
    """

    def __init__(self, tables: list[torch.Tensor], sizes: tuple[int, ...], kind: str,
                 bases: list[int] | None = None) -> None:
        self.lib = load()
        if kind not in ("fp32", "int8"):
            raise KernelUnavailable(f"the fused kernel reads fp32 or int8 tables, not {kind}")
        self.kind = KIND_INT8 if kind == "int8" else KIND_FLOAT32
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

    def __call__(self, x: torch.Tensor, indices: torch.Tensor, out: torch.Tensor,
                 quantize: tuple[float, int] | None = None) -> torch.Tensor:
        """``x`` ``[B, D]`` float32, ``indices`` ``[T, B]`` int64 (one id per bag) -> ``out``
        ``[B, D + T(T+1)/2]``: float32, or uint8 when ``quantize`` = (scale, zero point)."""
        batch = x.shape[0]
        want = torch.uint8 if quantize else torch.float32
        if out.dtype != want or out.stride(1) != 1 or tuple(out.shape) != (
                batch, self.dim + self.num_tables * (self.num_tables + 1) // 2):
            raise ValueError(f"out must be a row-contiguous [B, F] {want} tensor")
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
            out.data_ptr(), out.stride(0), int(quantize is not None), inv_scale, zero_point,
            torch.get_num_threads())
        if code == -2:
            raise IndexError("an embedding id is outside its table")
        if code != 0:
            raise RuntimeError(f"fused interaction kernel refused its arguments ({code})")
        return out


class SmallQLinear:
    """An int8 linear for few-row batches (``dlrm_qlinear_small`` in ``interaction.c``).

    Same arithmetic as ``native_int8.QLinear`` (u8 input with one scale / zero point, s8 weights
    with per-output scales, fp32 bias, ReLU, then uint8 in the next layer's qparams or float32)
    without oneDNN's per-call cost, which dominates at 1-16 rows. Needs AVX512-VNNI.
    """

    def __init__(self, weight_q: torch.Tensor, w_scales: torch.Tensor, bias: torch.Tensor,
                 x_qparams: tuple[float, int], out_qparams: tuple[float, int] | None,
                 relu: bool) -> None:
        self.lib = load()
        if "avx512_vnni" not in cpu_flags():
            raise KernelUnavailable("the CPU lacks avx512_vnni")
        n, k = weight_q.shape
        if k > 4096:
            raise KernelUnavailable(f"the small int8 linear takes K <= 4096 (got {k})")
        n16, k4 = -(-n // 16) * 16, -(-k // 4) * 4
        padded = torch.zeros(n16, k4, dtype=torch.int8)
        padded[:n, :k] = weight_q
        # [N/16, 16, K/4, 4] -> [N/16, K/4, 16, 4]: 4 k's of 16 outputs per 64-byte load
        self.packed = padded.view(n16 // 16, 16, k4 // 4, 4).permute(0, 2, 1, 3).contiguous()
        self.colsum = weight_q.to(torch.int32).sum(dim=1, dtype=torch.int32).contiguous()
        self.scale = (float(x_qparams[0]) * w_scales.double()).float().contiguous()
        self.bias = bias.detach().float().contiguous()
        self.x_zp = int(x_qparams[1])
        self.relu = relu
        self.out_qparams = out_qparams
        self.n, self.k = n, k

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` uint8 ``[M, K]`` (rows contiguous) -> uint8 or float32 ``[M, N]``."""
        rows = x.shape[0]
        if x.dtype != torch.uint8 or x.shape[1] != self.k or x.stride(1) != 1:
            raise ValueError(f"x must be a row-contiguous uint8 [M, {self.k}] tensor")
        out_u8 = self.out_qparams is not None
        out = torch.empty(rows, self.n, dtype=torch.uint8 if out_u8 else torch.float32)
        inv, zp = ((1.0 / self.out_qparams[0], float(self.out_qparams[1])) if out_u8
                   else (1.0, 0.0))
        code = self.lib.dlrm_qlinear_small(
            rows, self.k, self.n, x.data_ptr(), x.stride(0), self.packed.data_ptr(),
            self.colsum.data_ptr(), self.scale.data_ptr(), self.bias.data_ptr(), self.x_zp,
            int(self.relu), int(out_u8), inv, zp, out.data_ptr(), out.stride(0),
            torch.get_num_threads())
        if code != 0:
            raise RuntimeError(f"small int8 linear kernel refused its arguments ({code})")
        return out
