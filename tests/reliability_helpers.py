"""Helpers of the reliability tests (tests/test_reliability_*.py): processes, tmpfs, sshd."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HUGEPAGES_NR = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
SSHD = "/usr/sbin/sshd"


def processes(pattern: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line contains ``pattern``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if pattern in cmdline and state != "Z":
            found.append((int(entry.name), cmdline.strip()))
    return found


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


def terminate(pattern: str, timeout: float = 15) -> list[int]:
    """SIGTERM (then SIGKILL) the processes matching ``pattern``; the pids that were found."""
    pids = [pid for pid, _ in processes(pattern)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not processes(pattern), timeout):
        for pid, _ in processes(pattern):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not processes(pattern), 5)
    return pids


def hugepages() -> int | None:
    return int(HUGEPAGES_NR.read_text()) if HUGEPAGES_NR.exists() else None


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (needs root), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(directory: Path, leave_bytes: int = 0) -> None:
    """Fill the filesystem of ``directory`` until about ``leave_bytes`` are free."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    size = max(0, free - leave_bytes)
    with open(directory / ".filler", "wb") as handle:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while size > 0:
                handle.write(chunk[:min(size, len(chunk))])
                size -= min(size, len(chunk))
            handle.flush()


def json_files_parse(root: Path) -> list[str]:
    """Problems with the result files below ``root``: a result.json/host_result.json that does
    not parse, or a temp file left behind by an atomic write."""
    problems = []
    for path in root.rglob("*"):
        if path.name in ("result.json", "host_result.json"):
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                problems.append(f"{path}: {exc}")
        elif path.name.endswith(".tmp") or path.name.startswith((".result.json.",
                                                                  ".host_result.json.")):
            problems.append(f"{path}: temp file left behind")
    return problems


def play_section(stdout: str, play: str) -> str:
    """The part of an ansible-playbook output between ``PLAY [<play>`` and the next play."""
    start = stdout.find(f"PLAY [{play}")
    if start < 0:
        return ""
    ends = [i for i in (stdout.find("PLAY [", start + 6), stdout.find("PLAY RECAP", start))
            if i >= 0]
    return stdout[start:min(ends) if ends else None]


def stop_sshd(host: Any) -> None:
    """Take a loopback host off the network: its sshd and every session it serves (an
    established Ansible control connection with them), as a host that went down would."""
    proc = host.process
    if proc is None or proc.poll() is not None:
        return
    sessions = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    for pid in sessions:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)


def start_sshd(host: Any, timeout: float = 30) -> None:
    """Bring a stopped loopback host back (same address, port, keys)."""
    if host.process is not None and host.process.poll() is None:
        return
    with open(host.log, "ab") as out:
        host.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(host.config)], stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    def answers() -> bool:
        try:
            return host.run("true", timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    if not wait_until(answers, timeout, 0.3):
        raise RuntimeError(f"sshd of {host.name} did not come back")


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(x) for x in children.read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


REPO = Path(__file__).resolve().parent.parent


def ansible_env() -> dict[str, str]:
    """The environment the conftest's ``ansible_playbook`` fixture runs ansible-playbook with."""
    import sys

    bindir = Path(sys.executable).parent
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0", "PYTHONUNBUFFERED": "1"}


def start_playbook(*args: str, extra: dict[str, Any] | None = None) -> subprocess.Popen[str]:
    """``ansible-playbook ARGS -e EXTRA`` in the background (output piped, text)."""
    import sys

    argv = [str(Path(sys.executable).parent / "ansible-playbook"), *args]
    if extra:
        argv += ["-e", json.dumps(extra)]
    return subprocess.Popen(argv, cwd=REPO, env=ansible_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def assert_data_reused(stdout: str, hosts: tuple[str, ...] = ("localhost",)) -> None:
    """The deploy stage found its cached dataset valid on every host and changed nothing about
    the data (the wheel may be rebuilt when the sources changed; the data must not be)."""
    deploy = play_section(stdout, "Deploy")
    start = deploy.find("TASK [deploy : Put the data in place]")
    end = deploy.find("TASK [deploy : Tell the benchmark stage")
    assert start >= 0 and end > start, deploy[-3000:]
    data = deploy[start:end]
    verify = data[data.find("TASK [deploy : Verify the cached dataset]"):]
    assert all(f"ok: [{host}]" in verify for host in hosts), data
    assert "TASK [deploy : Make the dataset" not in data, data
    assert "changed:" not in data, data


def assert_hugepages_back(before: int | None, own: str) -> None:
    """The hugepage pool is back at ``before``. The pool is this machine's: when another
    ansible-playbook (not of this test: its command line lacks ``own``) is running, it may hold
    the pool tuned right now, and only then is a difference accepted."""
    now = hugepages()
    if before is None or now == before:
        return
    others = [p for p in processes("ansible-playbook") if own not in p[1]]
    assert others, f"hugepages {now} after the run, {before} before it"
