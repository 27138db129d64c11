"""Peak GEMM throughput of one precision's datatype on this machine (a helper of harness.py).

    python benchmarks/harness_peaks.py --precision amx_int8 --threads 2 [--sizes 2048,4096] --out F

Runs in its own process because the precision's ISA caps (``dlrm_bench.cpu``) must be set before
torch is imported. Every kernel multiplies ``n x n`` by ``n x n`` for each size n (2048^3: 17.2
GFLOP, or int8 ops, per call; 4096^3: 137), contiguous operands, weights prepacked where the
kernel supports it; the peak is the best (kernel, size)'s best timing:

- avx_fp32: ``torch.mm`` fp32 (MKL sgemm) and oneDNN ``mkldnn._linear_pointwise`` with a
  prepacked fp32 weight; oneDNN capped at AVX512_CORE_VNNI, MKL at AVX512 (no AMX).
- amx_bfloat32: the same two with oneDNN's fp32 math mode bf16 (AMX bf16 tiles, fp32 in/out).
- amx_bfloat16: ``torch.mm`` bf16 (oneDNN AMX) and ``_linear_pointwise`` with a prepacked bf16
  weight.
- avx_int8 / amx_int8: ``torch._int_mm`` (s8 x s8 -> s32) and oneDNN ``qlinear_pointwise``
  (u8 x s8, fp32 out, prepacked), under the avx (VNNI) or amx ISA cap.
- the amx_* precisions also: dlrm-bench's own AMX tile GEMM, the kernel its one-call forward
  runs the MLPs with (``fused.layer_on_tiles``: u8 x s8 or bf16, fp32 out; amx_bfloat32 on its
  values rounded to bf16), so that the roofline is the best kernel available, ours included.

A kernel's timing: 2 warmup calls, then ``rounds`` rounds of calls lasting >= 0.3 s each; the
fastest round's mean. Writes ``{"precision", "sizes", "threads", "kernels": {"name @n":
GFLOP/s}, "best": "name @n", "peak_gflops": ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rate(fn: Callable[[], object], flops: float, rounds: int = 3, min_s: float = 0.3) -> float:
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_s:
                break
        best = min(best, elapsed / calls)
    return flops / best / 1e9


def kernels(precision: str, n: int) -> dict[str, Callable[[], object]]:
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    w = torch.randn(n, n, generator=g)  # [out, in] for linear
    if precision in ("avx_fp32", "amx_bfloat32"):
        packed = torch.ops.mkldnn._reorder_linear_weight(w, n)
        return {"torch.mm fp32": lambda: torch.mm(a, w),
                "onednn linear fp32 (prepacked)":
                    lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""),
                **_own_tiles(precision, a, w)}
    if precision == "amx_bfloat16":
        ab, wb = a.bfloat16(), w.bfloat16()
        packed = torch.ops.mkldnn._reorder_linear_weight(wb, n)
        return {"torch.mm bf16": lambda: torch.mm(ab, wb),
                "onednn linear bf16 (prepacked)":
                    lambda: torch.ops.mkldnn._linear_pointwise(ab, packed, None, "none", [], ""),
                **_own_tiles(precision, a, w)}
    a8 = torch.randint(-100, 100, (n, n), dtype=torch.int8, generator=g)
    w8 = torch.randint(-100, 100, (n, n), dtype=torch.int8, generator=g)
    u8 = torch.randint(0, 255, (n, n), dtype=torch.uint8, generator=g)
    w_scales = torch.full((n,), 0.01)
    w_zps = torch.zeros(n, dtype=torch.int64)
    packed8 = torch.ops.onednn.qlinear_prepack(w8, [n, n])
    w8t = w8.t().contiguous()
    return {"torch._int_mm s8s8s32": lambda: torch._int_mm(a8, w8t),
            "onednn qlinear u8s8 (prepacked)": lambda: torch.ops.onednn.qlinear_pointwise(
                u8, 0.05, 128, packed8, w_scales, w_zps, None, 1.0, 0, torch.float32, "none",
                [], ""),
            **_own_tiles(precision, u8, w8)}


def _own_tiles(precision: str, x: object, weight: object) -> dict[str, Callable[[], object]]:
    """dlrm-bench's own GEMM on AMX tiles, the one-call path's MLP kernel (``fused.
    layer_on_tiles``: rows split between the threads, 2 x 2 tiles, float32 out): for the amx_*
    precisions where the tiles are usable. amx_bfloat32 runs it on its fp32 values rounded to
    bf16, as oneDNN's bf16 math mode does (and as its one-call path does)."""
    if not precision.startswith("amx_"):
        return {}
    import torch

    from dlrm_bench.backends import fused
    from dlrm_bench.backends import native_int8 as q8

    n = int(weight.shape[0])
    try:
        if precision == "amx_int8":
            w_scales = torch.full((n,), 0.01)
            layer = q8.QLinear(weight, w_scales, torch.zeros(n), (0.05, 128), None,
                               torch.float32, relu=False, batch_hint=n)
            chain: fused.SmallQMLP | fused.SmallBMLP = fused.SmallQMLP([layer])
            rows = x
        else:
            layer = SimpleNamespace(weight=weight.bfloat16(), bias=torch.zeros(n), post="none")
            chain = fused.SmallBMLP([layer])
            rows = x.bfloat16()
        fused.layer_on_tiles(chain, rows)  # refused here, not in the timing
    except (fused.KernelUnavailable, ValueError):
        return {}
    name = "dlrm-bench AMX tiles u8s8 (row split)" if precision == "amx_int8" else (
        "dlrm-bench AMX tiles bf16 (row split)")
    return {name: lambda: fused.layer_on_tiles(chain, rows)}


def matmul_mode(precision: str) -> str:
    """The fp32 matmul mode a precision's kernels are timed in: bf16 (bf32) for amx_bfloat32."""
    return "bf16" if precision == "amx_bfloat32" else "ieee"


def measure(precision: str, threads: int, sizes: list[int]) -> dict[str, object]:
    from dlrm_bench.cpu import apply_isa_environment

    apply_isa_environment(precision)
    import torch

    from dlrm_bench.backends.compat import set_fp32_matmul_precision

    torch.set_num_threads(threads)
    set_fp32_matmul_precision(matmul_mode(precision))
    rates: dict[str, float] = {}
    errors: dict[str, str] = {}
    with torch.inference_mode():
        for n in sizes:
            for name, fn in kernels(precision, n).items():
                try:
                    rates[f"{name} @{n}"] = round(_rate(fn, 2.0 * n ** 3), 1)
                except (RuntimeError, NotImplementedError) as exc:  # a kernel this build lacks
                    errors[f"{name} @{n}"] = str(exc).splitlines()[0][:200]
    best = max(rates, key=lambda k: rates[k]) if rates else None
    return {"precision": precision, "sizes": sizes, "threads": threads, "torch": torch.__version__,
            "kernels": rates, "errors": errors, "best": best,
            "peak_gflops": rates[best] if best else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--sizes", default="2048,4096")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = measure(args.precision, args.threads, [int(n) for n in args.sizes.split(",")])
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
