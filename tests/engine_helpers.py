"""Helpers for tests that run ``dlrm-bench`` as a subprocess (the ISA env is per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from dlrm_bench.cpu import REQUIRED_FLAGS, cpu_flags
from dlrm_bench.presets import ModelSpec

REPO = Path(__file__).resolve().parents[1]


def runnable(precision: str) -> bool:
    """Whether this host's CPU has the flags ``precision`` needs (AMX for the amx_* ones)."""
    return set(REQUIRED_FLAGS[precision]) <= cpu_flags()


def make_batch(spec: ModelSpec, size: int, seed: int) -> SimpleNamespace:
    """A one-hot batch with the ``Batch`` fields: dense [B,13], offsets/indices [T,B]."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.log1p(torch.rand(size, 13, generator=g) * 1000)
    indices = torch.stack([torch.randint(0, n, (size,), generator=g) for n in spec.table_sizes])
    offsets = torch.arange(size).expand(spec.num_tables, size).contiguous()
    return SimpleNamespace(dense=dense, offsets=offsets, indices=indices)


HAS_AMX = all(runnable(p) for p in ("amx_int8", "amx_bfloat16", "amx_bfloat32"))
# The fastest precision of each kind this host runs: tests of the pipeline (not of a precision)
# use these so that they exercise AMX where there is AMX and still run on AVX-512-only hosts.
INT8 = "amx_int8" if runnable("amx_int8") else "avx_int8"
LOW_PRECISION = "amx_bfloat16" if runnable("amx_bfloat16") else "avx_fp32"
needs_amx = pytest.mark.skipif(
    not HAS_AMX, reason="this CPU has no AMX (amx_tile, amx_bf16, amx_int8): dlrm-bench refuses "
                        "the amx_* precisions here (tested by the refusal tests)")


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUNCTION", "MODE", "PRECISION", "BATCH_SIZE", "STEPS", "WARMUP_STEPS",
                        "DATA_TYPE", "CASE_TYPE", "ONEDNN_VERBOSE", "DLRM_BENCH_CPU_FLAGS")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def dlrm(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dlrm_bench", *args], capture_output=True,
                          text=True, env=cli_env(**env), timeout=timeout, cwd=REPO)


def run_ok(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    proc = dlrm(*args, **env)
    detail = f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{detail}"
    return proc


def result_of(output: Path) -> dict[str, Any]:
    return json.loads((output / "result.json").read_text())


def assert_one_line_error(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dlrm-bench: error: ")
    assert text in lines[0], lines[0]
