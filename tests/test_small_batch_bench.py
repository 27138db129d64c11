"""benchmarks/small_batch.py end to end on the tiny preset: the JSON it writes, and its errors.

No timing is asserted (tests never do): only that both paths ran for every configuration and
that the file says what was measured where.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlrm_bench.backends import fused
from dlrm_bench.cpu import cpu_flags

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "small_batch.py"
pytestmark = pytest.mark.skipif(
    not {*fused.NEEDED_FLAGS, "avx512_vnni"} <= cpu_flags(), reason="CPU lacks the C kernels")


def run(tmp_path: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--preset", "tiny", "--batches", "1,5", "--threads", "1",
           "--repeats", "1", "--samples", "200", "--cache-dir", str(tmp_path / "cache"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, fused.ENV_CACHE: str(tmp_path / "kernels"), **env})


def test_writes_both_paths_per_configuration(tmp_path: Path) -> None:
    out = tmp_path / "small.json"
    proc = run(tmp_path, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "small_batch" and doc["machine"]["cpu_model"]
    assert doc["samples"] == 200
    assert [p["precision"] for p in doc["precisions"]] == ["avx_int8", "avx_fp32"]
    for precision in doc["precisions"]:
        assert precision["rows_per_thread_limit"] > 0
        assert precision["kernels"]["small_batches"].startswith("one C call")
        assert [(r["threads"], r["batch_size"]) for r in precision["results"]] == [(1, 1), (1, 5)]
        for row in precision["results"]:
            assert row["one_call_us"] > 0 and row["general_us"] > 0
            assert row["general_over_one_call"] == pytest.approx(
                row["general_us"] / row["one_call_us"], rel=1e-2)


def test_says_why_when_there_is_no_small_path(tmp_path: Path) -> None:
    out = tmp_path / "small.json"
    proc = run(tmp_path, "--precisions", "avx_fp32", "--out", str(out),
               **{fused.ENV_SWITCH: "0"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "small_batch: error: avx_fp32 has no one-call small-batch path here (interaction: torch "
        "ops (fused kernel unavailable: turned off by DLRM_BENCH_FUSED=0))")
    assert not out.exists()
