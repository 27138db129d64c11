"""Instance processes of one host run: spawn, start barrier, failure reports, no orphans.

Each instance runs in its own session / process group with a parent-death signal (prctl
PR_SET_PDEATHSIG through ctypes), so a SIGKILLed launcher takes its instances with it. An exited
instance is detected with ``waitid(WNOWAIT)`` and its group is SIGKILLed before the leader is
reaped (the zombie keeps the group id from being reused), so helpers an instance forked die too.
SIGINT/SIGTERM/SIGHUP to the launcher stop every group (SIGTERM, grace, SIGKILL) and reap it.
With a ``Lease`` (a file the controller touches while it waits for the run), a lease not renewed
in time stops the instances the same way: the controller is gone and nobody will collect them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dlrm_bench.results import atomic_write_text, now_iso
from dlrm_bench.topology import format_cpulist

if TYPE_CHECKING:
    from dlrm_bench.launcher import InstancePlan

POLL_S = 0.05
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 20


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: preexec must not dlopen


def _child_setup(parent: int, cpus: tuple[int, ...] | None) -> Callable[[], None]:
    def setup() -> None:  # runs in the child between fork and exec
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
    return setup


@dataclass
class InstanceStatus:
    plan: InstancePlan
    proc: subprocess.Popen[bytes] | None = None
    state: str = "pending"  # pending, starting, ready, running, ok, failed, stopped
    returncode: int | None = None
    started: float = 0.0
    ended: float | None = None
    log_tail: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


@dataclass
class Lease:
    """A file whose mtime the controller renews; stale for ``timeout_s`` = the controller is gone.

    A missing file counts as renewed when the launcher started (the first renewal may be late)."""

    path: Path
    timeout_s: float
    check_every_s: float = 1.0
    _started: float = field(default_factory=time.time)
    _next_check: float = 0.0

    def age(self) -> float:
        try:
            renewed = max(self.path.stat().st_mtime, self._started)
        except OSError:
            renewed = self._started
        return time.time() - renewed

    def lapsed(self) -> bool:
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.check_every_s
        return self.age() > self.timeout_s


class Progress:
    """What the launcher reports while it runs (the CLI shows it live or as plain lines)."""

    def event(self, message: str) -> None:
        print(f"launch: {message}", file=sys.stderr, flush=True)

    def update(self, states: Sequence[InstanceStatus], phase: str, elapsed: float) -> None:
        pass


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Supervisor:
    """Starts the instances, runs the barrier, and never leaves a process behind."""

    def __init__(self, instances: Sequence[InstancePlan], barrier_dir: Path, affinity: bool,
                 progress: Progress, lease: Lease | None = None) -> None:
        self.barrier_dir, self.affinity, self.progress = barrier_dir, affinity, progress
        self.lease = lease
        self.lease_lapsed = False
        self.states = [InstanceStatus(p) for p in instances]
        self.signum: int | None = None
        self.phase = "starting"
        self.failures: list[str] = []
        self._logs: list[IO[bytes]] = []

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # second signal: no more grace
            self._kill_all(signal.SIGKILL)
        self.signum = signum

    def _lease_lapsed(self) -> bool:
        if self.lease is None or self.lease_lapsed or not self.lease.lapsed():
            return False
        self.lease_lapsed, self.phase = True, "interrupted"
        self.failures.append(f"controller lost: lease {self.lease.path} not renewed for "
                             f"{self.lease.age():.0f} s (limit {self.lease.timeout_s:g} s): "
                             "instances stopped")
        self.progress.event(self.failures[-1])
        return True

    def _interrupted(self) -> bool:
        if self.signum is None or self.phase == "interrupted":
            return False
        name = signal.Signals(self.signum).name
        self.phase = "interrupted"
        self.failures.append(f"launcher interrupted by {name}: instances stopped")
        self.progress.event(f"{name}: stopping all instances")
        return True

    def run(self) -> None:
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, self._on_signal) for s in handled}
        try:
            self._spawn_all()
            self._monitor()
        finally:
            self._interrupted()
            self._stop_all()
            for s, handler in previous.items():
                signal.signal(s, handler)
            for handle in self._logs:
                handle.close()

    def _spawn_all(self) -> None:
        barrier = self.barrier_dir
        shutil.rmtree(barrier, ignore_errors=True)
        barrier.mkdir(parents=True)
        env_base = dict(os.environ)
        for st in self.states:
            if self.signum is not None:
                return
            p = st.plan
            p.output_dir.mkdir(parents=True, exist_ok=True)
            if p.weights_cache is not None:
                p.weights_cache.mkdir(parents=True, exist_ok=True)
            log = (p.output_dir / "stdout.log").open("wb")
            self._logs.append(log)
            st.proc = subprocess.Popen(
                p.command, env={**env_base, **p.env}, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                preexec_fn=_child_setup(os.getpid(), p.slot.cpus if self.affinity else None))
            st.state, st.started = "starting", time.monotonic()
            (p.output_dir / "pid").write_text(f"{st.proc.pid}\n")
            self.progress.event(f"instance {p.id} pid {st.proc.pid} on cpus "
                                f"{format_cpulist(p.slot.cpus)} node(s) "
                                f"{','.join(map(str, p.slot.nodes))}")

    def _reap(self, st: InstanceStatus, block: bool = False) -> bool:
        """Has the instance exited? Kills its leftover group members before reaping the leader."""
        if st.proc is None or st.returncode is not None:
            return st.returncode is not None
        try:
            options = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
            info = os.waitid(os.P_PID, st.proc.pid, options)
        except ChildProcessError:
            info = True
        if info is None:
            return False
        _killpg(st.proc.pid, signal.SIGKILL)  # the zombie leader keeps the group id ours
        st.returncode, st.ended = st.proc.wait(), time.monotonic()
        if st.returncode == 0 and st.state != "stopped":
            st.state = "ok"
        elif st.state != "stopped":
            st.state = "failed"
            st.log_tail = _tail(st.plan.output_dir / "stdout.log")
            what = f"instance {st.plan.id} (pid {st.proc.pid}) {describe_exit(st.returncode)}"
            self.failures.append(what)
            last = "\n    ".join(st.log_tail[-LOG_TAIL_LINES:]) or "(no output)"
            self.progress.event(f"{what}; last lines of its log:\n    {last}")
        else:
            st.log_tail = _tail(st.plan.output_dir / "stdout.log")
        if st.state == "ok":
            self.progress.event(f"instance {st.plan.id} finished in "
                                f"{st.ended - st.started:.1f} s")
        return True

    def _monitor(self) -> None:
        barrier, start = self.barrier_dir, time.monotonic()
        while True:
            if self._interrupted() or self._lease_lapsed():
                self._stop_all()
            done = [self._reap(st) for st in self.states]
            if self.phase == "starting":
                for st in self.states:
                    if st.state == "starting" and (barrier / f"ready.{st.plan.id}").exists():
                        st.state = "ready"
                if any(st.state == "failed" for st in self.states):
                    self.phase = "aborted"
                    self.progress.event("an instance failed before the start barrier: "
                                        "stopping the others")
                    self._stop_all()
                elif all(st.state in ("ready", "ok") for st in self.states):
                    atomic_write_text(barrier / "go", now_iso() + "\n")
                    self.phase = "running"
                    for st in self.states:
                        st.state = "running" if st.state == "ready" else st.state
                    self.progress.event(f"all {len(self.states)} instances ready: go")
            if all(done) and self.phase == "running":
                self.phase = "done"
            self.progress.update(self.states, self.phase, time.monotonic() - start)
            if all(done):
                return
            time.sleep(POLL_S)

    def _kill_all(self, sig: int) -> None:
        for st in self.states:
            if st.proc is not None and st.returncode is None:
                _killpg(st.proc.pid, sig)

    def _stop_all(self, grace: float | None = None) -> None:
        """SIGTERM every running group, SIGKILL what is left after ``grace`` s, reap all."""
        grace = STOP_GRACE_S if grace is None else grace
        for st in self.states:
            if st.proc is not None and st.returncode is None and st.state != "stopped":
                st.state = "stopped"
        self._kill_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not all(self._reap(st) for st in self.states) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        self._kill_all(signal.SIGKILL)
        for st in self.states:
            self._reap(st, block=True)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        text = path.read_bytes()[-64 * 1024:].decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]
