"""A full results filesystem (a small tmpfs as the output dir): a clear error, and no result file
left half-written or looking valid; temp files of the atomic writes are cleaned up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import fill, json_files_parse, processes, tmpfs

from dlrm_bench.errors import UserError
from dlrm_bench.results import atomic_write_json

REPO = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]
TINY = ["--preset", "tiny", "--warmup-steps", "1", "--threads", "1"]


def dlrm(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "dlrm_bench", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False, cwd=REPO)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("dlrm-bench: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def test_atomic_write_on_a_full_disk_keeps_the_previous_file(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "64k") as fs:
        target = fs / "result.json"
        atomic_write_json(target, {"status": "ok", "value": 1})
        fill(fs)
        with pytest.raises(UserError, match=r"cannot write .*result\.json: No space left"):
            atomic_write_json(target, {"status": "ok", "value": 2, "pad": "x" * 20000})
        assert json.loads(target.read_text()) == {"status": "ok", "value": 1}
        assert json_files_parse(fs) == []
        assert sorted(p.name for p in fs.iterdir()) == [".filler", "result.json"]


def test_run_on_a_full_disk_is_one_line_and_leaves_no_result(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "64k") as fs:
        fill(fs)
        proc = dlrm("run", *TINY, "--steps", "5", "--output", str(fs / "out"))
        assert proc.returncode == 1, proc.stderr
        line = one_line(proc.stderr)
        assert f"cannot write {fs / 'out' / 'run.log'}: No space left on device" in line
        assert not (fs / "out" / "result.json").exists()
        assert json_files_parse(fs) == []


def test_result_that_does_not_fit_is_not_left_half_written(tmp_path: Path) -> None:
    """Room for the log but not for result.json (50 kB of raw latencies): the write fails whole."""
    with tmpfs(tmp_path / "fs", "256k") as fs:
        fill(fs, leave_bytes=24 * 1024)
        out = fs / "out"
        proc = dlrm("run", *TINY, "--mode", "latency", "--steps", "3000", "--output", str(out))
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc.stderr)
        assert f"cannot write {out / 'result.json'}: No space left on device" in line
        assert (out / "run.log").read_text().startswith("FUNCTION: inference")
        assert not (out / "result.json").exists()
        assert json_files_parse(fs) == []


def test_launch_on_a_filling_disk_stops_cleanly(tmp_path: Path) -> None:
    """Two instances whose results cannot be written: the launcher reports them failed, stops
    everything, and every result file left parses (none half-written, no temp file)."""
    with tmpfs(tmp_path / "fs", "512k") as fs:
        fill(fs, leave_bytes=64 * 1024)
        run_dir = fs / "run"
        proc = dlrm("launch", "--instances", "2", "--cores-per-instance", "1", "--pinning",
                    "none", "--output", str(run_dir), *TINY, "--mode", "latency", "--steps",
                    "3000")
        assert proc.returncode != 0, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "No space left on device" in proc.stderr
        assert json_files_parse(fs) == []
        assert not list(run_dir.glob("instance-*/result.json"))
        assert not processes(str(run_dir)), "an instance outlived the launcher"
        host = run_dir / "host_result.json"
        if host.exists():  # written before the disk filled up: it must not claim success
            assert json.loads(host.read_text())["status"] != "ok"


def test_full_disk_before_the_launch_is_one_line(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "64k") as fs:
        fill(fs)
        proc = dlrm("launch", "--instances", "1", "--cores-per-instance", "1", "--output",
                    str(fs / "run"), *TINY, "--steps", "5")
        assert proc.returncode != 0
        assert "No space left on device" in one_line(proc.stderr)
        assert json_files_parse(fs) == []
        assert not processes(str(fs / "run"))
