"""dlrm-bench cluster run: -e parsing, plain progress, a live table in a pseudo-terminal, exit
status from the hosts' fate; a real run of the CLI under a pty (ansible)."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest
from test_orchestrate import _ansible_vars, fake_ansible, recorded_events

from dlrm_bench.cli import main
from dlrm_bench.commands.cluster import parse_extra_vars
from dlrm_bench.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def test_extra_vars_parse_like_ansible(tmp_path: Path) -> None:
    (tmp_path / "vars.yml").write_text("hugepages: 0\ndata_raw: [day_0, day_1]\n")
    got = parse_extra_vars(["precision=amx_int8", "steps=20 weight_sharing=false case_type=",
                            '{"thp": "never", "instance_number": 2}', f"@{tmp_path}/vars.yml",
                            "ratio=0.5 run_id=abc"])
    assert got == {"precision": "amx_int8", "steps": 20, "weight_sharing": False,
                   "case_type": "", "thp": "never", "instance_number": 2, "hugepages": 0,
                   "data_raw": ["day_0", "day_1"], "ratio": 0.5, "run_id": "abc"}
    for bad in ("novalue", "=x", "[1, 2]", f"@{tmp_path}/missing.yml"):
        with pytest.raises(UserError):
            parse_extra_vars([bad])


def test_plain_progress_and_failed_host_exit_status(tmp_path: Path, monkeypatch:
                                                    pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    calls = fake_ansible(monkeypatch, recorded_events(), hosts=("node1", "node2"),
                         status="failed")
    summary = tmp_path / "summary.json"
    code = main(["cluster", "run", "-i", "inventory/localhost.yml", "-e", "precision=amx_int8",
                 "-e", "steps=20", "--results-dir", str(tmp_path / "results"),
                 "--json", str(summary)])
    out, err = capsys.readouterr()
    assert code == 1  # node2 failed, node3 unreachable
    assert calls[0]["extravars"]["precision"] == "amx_int8"
    assert calls[0]["extravars"]["steps"] == 20
    lines = err.splitlines()
    assert lines[0] == "[    0.2 s] node1: Provision"
    assert "[   31.0 s] node1: benchmark instances 2 done" in lines
    assert any("node3: unreachable: Failed to connect" in line for line in lines)
    assert "#Key KPI" in out and "*Throughput (samples/sec):" in out
    assert "┃ host" in out and "node2" in out  # the KPI table
    assert "failed: node2: node2: benchmark failed" in out
    assert "unreachable: node3:" in out
    data = json.loads(summary.read_text())
    assert data["failed_hosts"] == ["node2"] and data["unreachable_hosts"] == ["node3"]


def test_success_exit_0_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    evs = [e for e in recorded_events() if e["event_data"].get("host") in (None, "node1")]
    evs[-1]["event_data"].update(failures={}, dark={})
    fake_ansible(monkeypatch, evs, hosts=("node1",))
    code = main(["cluster", "run", "--results-dir", str(tmp_path), "--run-id", "r1",
                 "--report"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"report: {tmp_path / 'r1' / 'report.html'}" in out
    assert "<img src=\"data:image/png;base64," in (tmp_path / "r1" / "report.html").read_text()


def test_bad_inventory_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["cluster", "run", "-i", "inventory/nope.yml"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dlrm-bench: error: inventory inventory/nope.yml")
    assert len(err.strip().splitlines()) == 1


class _PtyReader:
    """Collect what is written to a pseudo-terminal's master side, in a thread."""

    def __init__(self, master: int) -> None:
        self.master, self.data = master, bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                self.data.extend(chunk)

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _openpty(rows: int = 40, cols: int = 140) -> tuple[int, int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    return master, slave


def test_live_table_in_a_pseudo_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    fake_ansible(monkeypatch, recorded_events(), hosts=("node1", "node2"), status="failed",
                 delay=0.04)  # ~1.7 s: the live table refreshes a few times
    master, slave = _openpty()
    reader = _PtyReader(master)
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("NO_COLOR", "TTY_COMPATIBLE", "FORCE_COLOR", "COLUMNS", "LINES"):
        monkeypatch.delenv(name, raising=False)
    tty = io.TextIOWrapper(os.fdopen(slave, "wb", buffering=0), encoding="utf-8",
                           write_through=True)
    assert tty.isatty()
    monkeypatch.setattr(sys, "stderr", tty)
    try:
        code = main(["cluster", "run", "--results-dir", str(tmp_path)])
    finally:
        monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        tty.close()
        reader.thread.join(timeout=5)
        os.close(master)
    screen = reader.text()
    assert code == 1
    assert "\x1b[" in screen  # a terminal rendering: colours and cursor moves
    assert "\x1b[2K" in screen or "\x1b[1A" in screen  # the live table redraws in place
    assert "dlrm-bench cluster run" in screen  # the table's title
    for word in ("stage", "instances", "elapsed", "node1", "node2", "node3", "Benchmark"):
        assert word in screen, word
    assert "unreachable" in screen
    assert "*Throughput (samples/sec):" in capsys.readouterr().out


@pytest.mark.ansible
def test_real_cluster_run_in_a_pty(tmp_path: Path) -> None:
    """The CLI on localhost through the real pipeline, its stderr and stdout a terminal."""
    evars = _ansible_vars(tmp_path)
    cmd = [sys.executable, "-m", "dlrm_bench", "cluster", "run", "-i",
           "inventory/localhost.yml", "-e", "precision=avx_fp32 preset=tiny steps=20",
           "-e", json.dumps(evars), "--run-id", "pty-run", "--report"]
    master, slave = _openpty()
    reader = _PtyReader(master)
    env = {**os.environ, "TERM": "xterm-256color"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    try:
        code = proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.thread.join(timeout=5)
        os.close(master)
    screen = reader.text()
    assert code == 0, screen[-3000:]
    assert "\x1b[" in screen and "Deploy (deploy)" in screen and "Benchmark" in screen
    assert "*Throughput (samples/sec):" in screen and "localhost" in screen
    run = Path(evars["results_dir"]) / "pty-run"
    assert (run / "localhost" / "host_result.json").is_file()
    assert (run / "report.html").is_file()


def test_ctrl_c_cancels_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    import signal

    calls = fake_ansible(monkeypatch, recorded_events()[:12], wait_for_cancel=True)
    stop = threading.Event()
    before = signal.getsignal(signal.SIGINT)

    def interrupt_once_handled() -> None:  # never hit pytest's own SIGINT handler
        while not stop.wait(0.02):
            if signal.getsignal(signal.SIGINT) is not before:
                os.kill(os.getpid(), signal.SIGINT)
                return

    thread = threading.Thread(target=interrupt_once_handled, daemon=True)
    thread.start()
    try:
        code = main(["cluster", "run", "--results-dir", str(tmp_path), "--run-id", "c1"])
    finally:
        stop.set()
        thread.join(timeout=5)
    captured = capsys.readouterr()
    assert code == 130
    assert "canceling" in captured.err and "run c1: canceled" in captured.out
    assert [Path(c["playbook"]).name for c in calls] == ["run.yml", "stop.yml", "restore.yml"]
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
