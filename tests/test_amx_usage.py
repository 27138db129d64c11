"""Which kernels each precision really runs: oneDNN (and MKL) verbose output of a child process.

Each precision runs in its own process with its ISA environment (``dlrm_bench.cpu``) set before
torch is imported, because oneDNN and MKL read their caps once. The child prepares the tiny model
and runs a few batches with ``ONEDNN_VERBOSE=1`` (one line per executed primitive, naming its
implementation, e.g. ``brg_matmul:avx10_1_512_amx``) and ``MKL_VERBOSE=1``.

- avx_*: no oneDNN implementation name contains "amx" and oneDNN reports an ISA without AMX.
  avx_fp32's MLP GEMMs are oneDNN f32 primitives with AVX-512 implementations (MKL's sgemv
  serves single rows only; MKL has no fp32 AMX kernel at all, and ``MKL_ENABLE_INSTRUCTIONS=
  AVX512`` caps it anyway: if MKL ran, its verbose header must not report AMX).
- amx_*: every GEMM with a 1024-wide operand (the top MLP) runs an AMX implementation; bf32 also
  shows the bf16 math mode (``attr-fpmath:bf16``) on fp32 tensors. The small GEMMs (the 13-wide
  first bottom layer, the 1-wide last top layer) may legitimately use AVX-512 kernels: oneDNN
  picks those when AMX tiles would be mostly padding. amx_bfloat16's 256 -> 1 head runs in fp32
  (MKL sgemv: AMX has no fp32 mode and a 1-wide GEMM gains nothing from it) so that the
  probabilities are not rounded to bf16.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlrm_bench.cpu import PRECISIONS, REQUIRED_FLAGS, cpu_flags, isa_environment

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, torch
from types import SimpleNamespace
from dlrm_bench.backends import native
from dlrm_bench.model import build_model
from dlrm_bench.presets import get_preset
torch.set_num_threads(2)
spec = get_preset("tiny")
model = build_model(spec, seed=0).eval()
def batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(
        dense=torch.log1p(torch.rand(n, 13, generator=g) * 100),
        offsets=torch.arange(n).expand(spec.num_tables, n).contiguous(),
        indices=torch.stack([torch.randint(0, k, (n,), generator=g) for k in spec.table_sizes]))
prepared = native.prepare(model, sys.argv[1], calibration=[batch(256, 1), batch(256, 2)])
# The one-call C paths (small batches; avx_fp32's and amx_bfloat32's big ones in chunks; the
# amx bf16 chains there run on their own AMX tiles) are off here, so that oneDNN's GEMMs (the
# path without the kernels, and for multi-id bags) are what is checked
prepared.small_chunks = False
prepared.small_rows_per_thread = 0
for seed in range(3):
    b = batch(512, 10 + seed)
    out = prepared(b.dense, b.offsets, b.indices)
assert out.shape == (512, 1)
print("CHILD-DONE", flush=True)
"""


def run_child(precision: str) -> list[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_MAX_CPU_ISA") and not k.startswith(("MKL_", "ONEDNN_", "DNNL_"))}
    env.update(isa_environment(precision))
    env.update(ONEDNN_VERBOSE="1", MKL_VERBOSE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", CHILD, precision], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    assert "CHILD-DONE" in lines
    return lines


def executed(lines: list[str]) -> list[tuple[str, str, str, str]]:
    """(primitive kind, implementation, attributes, problem) of each oneDNN ``exec`` line."""
    found = []
    for line in lines:
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or "exec" not in fields:
            continue
        i = fields.index("exec")
        # exec,<engine>,<primitive>,<implementation>,<prop>,<mem descs>,<attrs>,<aux>,<problem>,<ms>
        found.append((fields[i + 2], fields[i + 3], fields[i + 6], fields[-2]))
    return found


def gemms(lines: list[str]) -> list[tuple[str, str, str, str]]:
    return [e for e in executed(lines) if e[0] in ("matmul", "inner_product")]


def onednn_isa(lines: list[str]) -> str | None:
    """oneDNN's ``isa:`` info line, printed at its first primitive (None: oneDNN never ran)."""
    isa = [line for line in lines if line.startswith("onednn_verbose") and ",isa:" in line]
    return isa[0] if isa else None


@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p.startswith("avx_")])
def test_avx_runs_without_amx(precision: str) -> None:
    if not set(REQUIRED_FLAGS[precision]) <= cpu_flags():
        pytest.skip(f"host cannot run {precision}")
    lines = run_child(precision)
    isa = onednn_isa(lines)
    assert isa is None or "AMX" not in isa, isa
    amx = [e for e in executed(lines) if "amx" in e[1]]
    assert not amx, f"AMX kernels under {precision}: {amx[:3]}"
    mkl_header = [line for line in lines if line.startswith("MKL_VERBOSE oneMKL")]
    if mkl_header:  # printed at MKL's first call (absent if a precision never calls MKL)
        assert "AMX" not in mkl_header[0], mkl_header[0]
    big = [e for e in gemms(lines) if "1024" in e[3]]
    assert big, f"no oneDNN {precision} GEMM ran"
    assert all("avx512" in impl for _, impl, _, _ in big), big[:3]


@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p.startswith("amx_")])
def test_amx_precisions_run_amx_kernels(precision: str) -> None:
    if not set(REQUIRED_FLAGS[precision]) <= cpu_flags():
        pytest.skip(f"host lacks AMX for {precision}")
    lines = run_child(precision)
    assert "AMX" in (onednn_isa(lines) or "")
    big = [e for e in gemms(lines) if "1024" in e[3]]
    assert len(big) >= 3 * 3, f"expected the top MLP's GEMMs in oneDNN, got {big[:3]}"
    not_amx = [e for e in big if "amx" not in e[1]]
    assert not not_amx, f"non-AMX kernels for {precision}: {not_amx[:3]}"
    if precision == "amx_bfloat32":
        assert all("fpmath:bf16" in attrs for _, _, attrs, _ in big), big[:3]
