"""Per-host progress of a ``run.yml`` run, computed from ansible-runner's events (pure logic).

``ProgressTracker.feed(event)`` takes one event dict as ansible-runner hands it to an
``event_handler`` (``{"event": "runner_on_ok", "created": iso, "event_data": {...}}``) and updates
one ``HostState`` per inventory host: the stage (the play's short name: Provision, Deploy,
Benchmark, Collect, Report, Restore, Verdict), the role and task it is in, whether the benchmark's
instances are running, failures and elapsed time. ``feed`` returns the notable changes as short
lines (what the plain, non-terminal progress prints). Nothing here talks to Ansible: tests drive it
with recorded events, and ``render_table`` turns a snapshot into a rich table for ``rich.live``.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

# The benchmark role's launch task (async): its start, polls and end bracket the instances' run.
LAUNCH_TASK_PREFIX = "Launch at the common start time"
_INSTANCE_LINE = re.compile(r"launch: instance (\d+) (pid|finished|failed|exited|stopped|killed)")


def _event_time(event: dict[str, Any], default: float) -> float:
    created = event.get("created") or event.get("event_data", {}).get("end")
    if isinstance(created, str):
        try:
            return dt.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return default


def stage_name(play: str | None) -> str:
    """A play's short name: "Deploy - package and data" -> "Deploy"."""
    if not play:
        return "starting"
    return play.split(" - ", 1)[0].strip() or play


@dataclass
class HostState:
    """What one inventory host is doing, as far as the events tell."""

    host: str
    stage: str = "waiting"
    role: str | None = None
    task: str | None = None
    status: str = "running"  # running | ok | failed | unreachable | canceled
    started: float | None = None
    stage_started: float | None = None
    last_event: float | None = None
    finished: float | None = None
    instances: int | None = None  # planned or seen instances of the benchmark
    instances_state: str = ""  # "", "running", "done", "failed"
    instances_failed: int = 0
    failed_stage: str | None = None
    error: str | None = None
    tasks_done: int = 0

    def elapsed(self, now: float | None = None) -> float:
        if self.started is None:
            return 0.0
        end = self.finished if self.finished is not None else (now or self.last_event or 0.0)
        return max(0.0, end - self.started)

    def instances_text(self) -> str:
        if not self.instances_state:
            return "-"
        count = "?" if self.instances is None else str(self.instances)
        if self.instances_state == "failed" and self.instances_failed:
            return f"{count} ({self.instances_failed} failed)"
        return f"{count} {self.instances_state}"


@dataclass
class ProgressTracker:
    """Fold ansible-runner events into per-host states (thread-safe: the runner thread feeds it,
    a display thread reads ``snapshot()``)."""

    planned_instances: int | None = None  # instance_number, when the caller set it
    clock: Callable[[], float] = time.time
    on_line: Callable[[str], None] | None = None  # gets each change, formatted (plain progress)
    hosts: dict[str, HostState] = field(default_factory=dict)
    play: str | None = None
    started: float | None = None
    finished: float | None = None
    stats: dict[str, Any] | None = None
    last_time: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def feed_all(self, events: Iterable[dict[str, Any]]) -> list[str]:
        lines: list[str] = []
        for event in events:
            lines.extend(self.feed(event))
        return lines

    def snapshot(self) -> list[HostState]:
        with self._lock:
            return [replace(h) for h in self.hosts.values()]

    def _host(self, name: str, when: float) -> HostState:
        state = self.hosts.get(name)
        if state is None:
            state = self.hosts[name] = HostState(name, started=when, last_event=when,
                                                 instances=self.planned_instances)
        return state

    def feed(self, event: dict[str, Any]) -> list[str]:
        """Update the states from one event; return the notable changes as lines."""
        with self._lock:
            lines = self._feed(event)
            elapsed = (self.finished or self.last_time) - (self.started or self.last_time)
        if self.on_line is not None:
            for line in lines:
                self.on_line(format_line(line, elapsed))
        return lines

    def _feed(self, event: dict[str, Any]) -> list[str]:
        kind = str(event.get("event", ""))
        data = event.get("event_data") or {}
        when = _event_time(event, self.clock())
        self.last_time = when
        if self.started is None:
            self.started = when
        if kind == "playbook_on_play_start":
            self.play = data.get("play") or data.get("name")
            return []
        if kind == "playbook_on_stats":
            return self._on_stats(data, when)
        host_name = data.get("host")
        if not host_name or not kind.startswith("runner_"):
            return []
        host = self._host(str(host_name), when)
        host.last_event = when
        lines: list[str] = []
        stage = stage_name(data.get("play") or self.play)
        if stage != host.stage:
            host.stage, host.stage_started = stage, when
            lines.append(f"{host.host}: {stage}")
        host.role = data.get("role") or None
        task = str(data.get("task") or "")
        if task and task != "async_status":
            host.task = task
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        launch = task.startswith(LAUNCH_TASK_PREFIX) or (
            kind.startswith("runner_on_async") and host.role == "benchmark")
        if launch:
            lines.extend(self._on_launch(host, kind, res))
        if kind in ("runner_on_ok", "runner_on_skipped", "runner_on_async_ok"):
            host.tasks_done += 1
            facts = res.get("ansible_facts") or {}
            if "dlrm_failed_stage" in facts:  # a stage's rescue recorded the failure
                host.failed_stage = str(facts["dlrm_failed_stage"])
                host.error = str(facts.get("dlrm_failed_msg") or host.error or "")
                host.status = "failed"
                lines.append(f"{host.host}: {host.failed_stage} failed: {host.error}")
        elif kind in ("runner_on_failed", "runner_on_async_failed"):
            if not data.get("ignore_errors"):
                host.status = "failed"
                host.error = _message(res) or host.error
                lines.append(f"{host.host}: failed in {stage} ({host.task}): {host.error}")
        elif kind == "runner_on_unreachable":
            host.status = "unreachable"
            host.error = _message(res) or "unreachable"
            lines.append(f"{host.host}: unreachable: {host.error}")
        return lines

    def _on_launch(self, host: HostState, kind: str, res: dict[str, Any]) -> list[str]:
        if kind == "runner_on_start" or kind == "runner_on_async_poll":
            if host.instances_state != "running":
                host.instances_state = "running"
                return [f"{host.host}: benchmark instances running"]
            return []
        if kind not in ("runner_on_ok", "runner_on_async_ok", "runner_on_failed",
                        "runner_on_async_failed"):
            return []
        text = f"{res.get('stderr', '')}\n{res.get('stdout', '')}"
        ids = {m.group(1) for m in _INSTANCE_LINE.finditer(text)}
        failed = {m.group(1) for m in _INSTANCE_LINE.finditer(text)
                  if m.group(2) in ("failed", "exited", "stopped", "killed")}
        if ids:
            host.instances = len(ids)
        host.instances_failed = len(failed)
        rc = res.get("rc")
        state = "done" if rc in (0, None) and not failed and not res.get("failed") else "failed"
        if host.instances_state == state:
            return []
        host.instances_state = state
        return [f"{host.host}: benchmark instances {host.instances_text()}"]

    def _on_stats(self, data: dict[str, Any], when: float) -> list[str]:
        self.stats = data
        self.finished = when
        failures = data.get("failures") or {}
        dark = data.get("dark") or {}
        names = set(self.hosts)
        for key in ("ok", "failures", "dark", "skipped", "changed", "processed"):
            names.update((data.get(key) or {}).keys())
        lines = []
        for name in sorted(names):
            host = self._host(name, when)
            if name in dark:
                host.status = "unreachable"
            elif name in failures:
                host.status = "failed"
            else:
                host.status = "ok"
            host.finished = when
            host.stage, host.role, host.task = "done", None, None
            lines.append(f"{name}: {host.status}" + (f" ({host.error})" if host.error and
                                                     host.status != "ok" else ""))
        return lines

    def cancel(self) -> None:
        """Mark the hosts still running as canceled (the caller stopped the playbook)."""
        with self._lock:
            now = self.clock()
            for host in self.hosts.values():
                if host.finished is None:
                    host.finished = now
                    if host.status == "running":
                        host.status = "canceled"


def _message(res: dict[str, Any]) -> str:
    msg = res.get("msg") or res.get("stderr") or res.get("reason") or ""
    if not isinstance(msg, str):
        msg = str(msg)
    return " ".join(msg.split())[:300]


def format_line(line: str, elapsed: float) -> str:
    """A plain progress line: ``[  12.3 s] host: what changed``."""
    return f"[{elapsed:7.1f} s] {line}"


STATUS_STYLE = {"ok": "green", "failed": "red", "unreachable": "red", "canceled": "yellow",
                "running": "cyan"}


def render_table(states: list[HostState], title: str, now: float | None = None) -> Any:
    """A rich table of the host states (for ``rich.live.Live``)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("host", "stage", "task", "instances", "status", "elapsed"):
        table.add_column(name, no_wrap=name != "task", justify="right" if name == "elapsed"
                         else "left", overflow="ellipsis", max_width=48 if name == "task" else None)
    for h in sorted(states, key=lambda s: s.host):
        stage = h.stage + (f" ({h.role})" if h.role and h.stage not in ("done",) else "")
        status = h.status + (f": {h.error}" if h.error and h.status != "ok" else "")
        table.add_row(h.host, stage, h.task or "", h.instances_text(),
                      f"[{STATUS_STYLE.get(h.status, '')}]{_escape(status[:80])}[/]",
                      f"{h.elapsed(now):.0f} s")
    if not states:
        table.add_row("(waiting for the first host)", "", "", "", "", "")
    return table


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
