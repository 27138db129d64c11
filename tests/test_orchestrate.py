"""dlrm_bench.orchestrate: the run.yml API (fake and real ansible-runner) and the event tracker.

``recorded_events()`` is a run.yml event stream in ansible-runner's shape (three hosts: one ok,
one whose benchmark fails, one unreachable); tests/test_cluster_cli.py replays it too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_compare import write_run

from dlrm_bench import orchestrate
from dlrm_bench.errors import UserError
from dlrm_bench.orchestrate import run_benchmark, run_benchmark_async
from dlrm_bench.orchestrate_events import ProgressTracker, render_table

REPO = Path(__file__).resolve().parent.parent
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
PLAYS = {"Provision": "Provision - preflight checks and host tuning",
         "Deploy": "Deploy - package and data", "Benchmark": "Benchmark - all hosts at once",
         "Restore": "Restore - host settings as they were",
         "Verdict": "Verdict - fail the hosts whose run failed (after they were restored)"}
LAUNCH = "Launch at the common start time and wait for the instances"


def event(kind: str, t: float, host: str | None = None, play: str | None = None,
          task: str = "", role: str | None = None, **data: Any) -> dict[str, Any]:
    created = dt.datetime.fromtimestamp(T0 + t, dt.UTC).isoformat()
    event_data: dict[str, Any] = {"playbook": "run.yml", "task": task, "role": role, **data}
    if play:
        event_data["play"] = event_data["name"] = PLAYS[play]
    if host:
        event_data["host"] = host
    return {"event": kind, "created": created, "uuid": f"u{t}", "event_data": event_data}


def recorded_events() -> list[dict[str, Any]]:
    ok = {"changed": False}
    launch_ok = {"rc": 0, "stdout": "launch at ...\n*Throughput (samples/sec): 900.0",
                 "stderr": "launch: instance 0 pid 11 on cpus 0\nlaunch: instance 1 pid 12 on "
                           "cpus 1\nlaunch: instance 0 finished in 7.0 s\n"
                           "launch: instance 1 finished in 7.1 s"}
    launch_bad = {"rc": 1, "stdout": "", "stderr": "launch: instance 0 pid 21 on cpus 0\n"
                  "launch: instance 1 pid 22 on cpus 1\nlaunch: instance 1 failed: exit 1\n"
                  "launch: instance 0 stopped"}
    evs = [event("playbook_on_start", 0)]
    evs.append(event("playbook_on_play_start", 0.1, play="Provision"))
    for k, host in enumerate(("node1", "node2", "node3")):
        evs.append(event("runner_on_start", 0.2 + k, host, "Provision", "Gather the facts",
                         "preflight"))
    evs.append(event("runner_on_unreachable", 3.5, "node3", "Provision", "Gather the facts",
                     "preflight", res={"msg": "Failed to connect to the host via ssh: refused",
                                       "unreachable": True}))
    for host in ("node1", "node2"):
        evs.append(event("runner_on_ok", 4, host, "Provision", "Gather the facts", "preflight",
                         res=ok))
    evs.append(event("playbook_on_play_start", 5, play="Deploy"))
    for host in ("node1", "node2"):
        evs.append(event("runner_on_ok", 10, host, "Deploy", "Install the wheel", "deploy",
                         res=ok))
    evs.append(event("playbook_on_play_start", 20, play="Benchmark"))
    for host in ("node1", "node2"):
        evs.append(event("runner_on_start", 21, host, "Benchmark", LAUNCH, "benchmark"))
        evs.append(event("runner_on_async_poll", 26, host, "Benchmark", "async_status",
                         "benchmark", res={"started": True, "finished": False}))
    evs.append(event("runner_on_async_ok", 31, "node1", "Benchmark", LAUNCH, "benchmark",
                     res=launch_ok))
    evs.append(event("runner_on_ok", 31, "node1", "Benchmark", LAUNCH, "benchmark",
                     res=launch_ok))
    evs.append(event("runner_on_ok", 32, "node2", "Benchmark", LAUNCH, "benchmark",
                     res=launch_bad))
    evs.append(event("runner_on_failed", 33, "node2", "Benchmark", "Fail a host whose benchmark "
                     "failed", "benchmark", res={"msg": "node2: dlrm-bench launch exited with "
                                                        "status 1", "failed": True}))
    evs.append(event("runner_on_ok", 33.5, "node2", "Benchmark", "Record the failed stage",
                     None, res={"ansible_facts": {"dlrm_failed_stage": "benchmark",
                                                  "dlrm_failed_msg": "launch exited with 1"}}))
    evs.append(event("runner_on_failed", 34, "node1", "Benchmark", "Optional probe",
                     "benchmark", ignore_errors=True, res={"msg": "ignored", "failed": True}))
    evs.append(event("playbook_on_play_start", 40, play="Restore"))
    for host in ("node1", "node2"):
        evs.append(event("runner_on_ok", 41, host, "Restore", "Put the saved settings back",
                         "tune", res=ok))
    evs.append(event("playbook_on_play_start", 42, play="Verdict"))
    evs.append(event("runner_on_failed", 43, "node2", "Verdict", "Fail a host whose run failed",
                     res={"msg": "node2: benchmark failed (host settings restored): launch "
                                 "exited with 1", "failed": True}))
    evs.append(event("playbook_on_stats", 44, ok={"node1": 9, "node2": 7},
                     failures={"node2": 1}, dark={"node3": 1}, processed={"node1": 1}))
    return evs


def test_tracker_follows_stages_instances_and_failures() -> None:
    evs = recorded_events()
    tracker = ProgressTracker()
    benchmark_start = next(i for i, e in enumerate(evs) if e["event"] == "runner_on_async_poll")
    tracker.feed_all(evs[:benchmark_start + 1])
    mid = {h.host: h for h in tracker.snapshot()}
    assert mid["node1"].stage == "Benchmark" and mid["node1"].role == "benchmark"
    assert mid["node1"].task == LAUNCH  # async_status polls do not replace the task
    assert mid["node1"].instances_state == "running" and mid["node1"].instances_text() == \
        "? running"
    assert mid["node3"].status == "unreachable" and "refused" in (mid["node3"].error or "")
    assert mid["node1"].elapsed() == pytest.approx(26 - 0.2)

    lines = tracker.feed_all(evs[benchmark_start + 1:])
    final = {h.host: h for h in tracker.snapshot()}
    assert final["node1"].instances == 2 and final["node1"].instances_state == "done"
    assert final["node2"].instances == 2 and final["node2"].instances_failed == 2
    assert final["node2"].instances_text() == "2 (2 failed)"
    assert final["node2"].failed_stage == "benchmark"
    assert "benchmark failed" in (final["node2"].error or "")
    assert {h: s.status for h, s in final.items()} == {"node1": "ok", "node2": "failed",
                                                       "node3": "unreachable"}
    assert final["node1"].error is None  # the ignored failure is not a failure
    assert final["node1"].elapsed() == pytest.approx(44 - 0.2)
    assert "node1: benchmark instances 2 done" in lines
    assert "node1: ok" in lines and any(x.startswith("node2: failed (") for x in lines)


def test_tracker_lines_and_table_render() -> None:
    got: list[str] = []
    tracker = ProgressTracker(on_line=got.append, planned_instances=4)
    tracker.feed_all(recorded_events()[:12])
    assert got[0] == "[    0.2 s] node1: Provision"
    assert any("node3: unreachable: Failed to connect" in line for line in got)
    from rich.console import Console

    console = Console(record=True, width=140, color_system=None)
    console.print(render_table(tracker.snapshot(), "run X"))
    text = console.export_text()
    assert "run X" in text and "Deploy (deploy)" in text and "Install the wheel" in text
    assert "unreachable: Failed to connect" in text
    assert text.count("node") >= 3


def test_find_playbook_dir_and_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    assert orchestrate.find_playbook_dir() == REPO  # an editable install: the repository
    with pytest.raises(UserError, match=r"no run\.yml"):
        orchestrate.find_playbook_dir(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative inventories resolve against the playbook dir too
    assert orchestrate.resolve_inventory("inventory/localhost.yml", REPO) == \
        str(REPO / "inventory" / "localhost.yml")
    assert orchestrate.resolve_inventory(None, REPO).endswith("inventory/localhost.yml")
    inv = {"dlrm_hosts": {"hosts": {"a": {}}}}
    assert orchestrate.resolve_inventory(inv, REPO) is inv
    with pytest.raises(UserError, match="not found"):
        orchestrate.resolve_inventory("inventory/nope.yml", REPO)
    ids = {orchestrate.new_run_id() for _ in range(20)}
    assert len(ids) == 20 and all(len(i) == len("20260101T000000Z-abcd") for i in ids)


class FakeRunner:
    def __init__(self, status: str, rc: int, stats: dict[str, Any]) -> None:
        self.status, self.rc, self.stats = status, rc, stats


def fake_ansible(monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]], *,
                 hosts: tuple[str, ...] = ("node1",), status: str = "successful",
                 wait_for_cancel: bool = False, delay: float = 0.0) -> list[dict[str, Any]]:
    """Replace ansible_runner.run: replay ``events``, write results like collect would."""
    import ansible_runner

    calls: list[dict[str, Any]] = []

    def run(**kw: Any) -> FakeRunner:
        calls.append(kw)
        private = Path(kw["private_data_dir"])
        (private / "env").mkdir(parents=True, exist_ok=True)  # as ansible-runner does
        (private / "env" / "extravars").write_text(json.dumps(kw["extravars"]))
        if kw["playbook"] != "run.yml":
            return FakeRunner("successful", 0, {})
        stats: dict[str, Any] = {}
        for e in events:
            assert kw["event_handler"](e) is True  # events are kept for runner.stats
            if e["event"] == "playbook_on_stats":
                stats = {k: v for k, v in e["event_data"].items() if isinstance(v, dict)}
            time.sleep(delay)
        ev = kw["extravars"]
        write_run(Path(ev["results_dir"]) / ev["run_id"], hosts=hosts, precision=ev.get(
            "precision", "avx_fp32"))
        if wait_for_cancel:
            deadline = time.monotonic() + 10
            while not kw["cancel_callback"]():
                assert time.monotonic() < deadline, "never canceled"
                time.sleep(0.01)
            return FakeRunner("canceled", 254, {})
        return FakeRunner(status, 0 if status == "successful" else 2, stats)

    monkeypatch.setattr(ansible_runner, "run", run)
    return calls


def test_run_benchmark_with_a_fake_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    calls = fake_ansible(monkeypatch, recorded_events(), hosts=("node1", "node2"),
                         status="failed")
    seen: list[str] = []
    result = run_benchmark(inventory="inventory/localhost.yml", precision="amx_int8",
                           preset="tiny", steps=20, results_dir=tmp_path / "results",
                           event_callback=lambda e: seen.append(e["event"]))
    kw = calls[0]
    assert kw["project_dir"] == str(REPO) and kw["playbook"] == "run.yml"
    assert kw["extravars"] == {"precision": "amx_int8", "preset": "tiny", "steps": 20,
                               "results_dir": str(tmp_path / "results"),
                               "run_id": result.run_id}
    assert not Path(kw["private_data_dir"]).exists()  # no env/ files left for the next run
    assert seen[-1] == "playbook_on_stats" and len(seen) == len(recorded_events())
    assert result.status == "failed" and not result.ok
    assert result.failed_hosts == ["node2"] and result.unreachable_hosts == ["node3"]
    assert "benchmark failed" in result.errors["node2"]
    assert result.results_dir == tmp_path / "results" / result.run_id
    assert set(result.hosts) == {"node1", "node2"} and result.cluster is not None
    assert result.throughput == pytest.approx(sum(
        h.metrics["throughput_samples_per_s"] for h in result.hosts.values()))
    assert result.host_states["node1"].status == "ok"
    with pytest.raises(RuntimeError, match="node2"):
        result.raise_for_status()
    kept = run_benchmark(results_dir=tmp_path / "results", keep=True)
    assert kept.private_data_dir is not None
    assert (kept.private_data_dir / "env" / "extravars").is_file()
    shutil.rmtree(kept.private_data_dir)
    assert Path(calls[1]["private_data_dir"]) != Path(kw["private_data_dir"])  # fresh per run


def test_async_cancel_stops_and_restores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    calls = fake_ansible(monkeypatch, recorded_events()[:20], wait_for_cancel=True)
    handle = run_benchmark_async(results_dir=tmp_path / "r", precision="avx_fp32",
                                 dlrm_root="/tmp/x")
    deadline = time.monotonic() + 10
    while len(handle.events) < 20:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not handle.done()
    handle.cancel()
    result = handle.wait(timeout=10)
    assert result.status == "canceled" and not result.ok
    stop, restore = calls[1], calls[2]
    assert stop["playbook"].endswith("stop.yml") and restore["playbook"] == \
        "playbooks/restore.yml"
    assert stop["extravars"]["dlrm_stop_run_id"] == handle.run_id == result.run_id
    assert stop["extravars"]["dlrm_root"] == "/tmp/x"
    assert all(not Path(c["private_data_dir"]).exists() for c in calls)
    states = {h: s.status for h, s in result.host_states.items()}
    assert states == {"node1": "canceled", "node2": "failed", "node3": "unreachable"}


def _ansible_vars(tmp: Path) -> dict[str, Any]:
    """Extra vars that keep a real run inside ``tmp`` and fast (tiny model, few steps)."""
    import sysconfig

    return {"dlrm_root": str(tmp / "root"), "results_dir": str(tmp / "results"),
            "dlrm_venv_base_site": sysconfig.get_paths()["purelib"], "hugepages": 0,
            "governor": "", "warmup_steps": 5, "dlrm_benchmark_start_delay_s": 1,
            "dlrm_benchmark_poll_s": 1}


@pytest.mark.ansible
def test_readme_snippet_on_localhost(tmp_path: Path) -> None:
    # the README's call, plus the variables that keep the run in tmp_path
    result = run_benchmark(inventory="inventory/localhost.yml", precision="avx_fp32",
                           preset="tiny", steps=20, **_ansible_vars(tmp_path))
    assert result.ok, (result.status, result.errors, result.stats)
    assert result.rc == 0 and list(result.hosts) == ["localhost"]
    assert result.throughput and result.throughput > 0
    host_dir = result.results_dir / "localhost"
    assert (host_dir / "host_result.json").is_file()
    assert (host_dir / "instance-0" / "result.json").is_file()
    assert (result.results_dir / "results.jsonl").is_file()
    assert result.cluster is not None and result.cluster.precision == "avx_fp32"
    assert result.host_states["localhost"].instances_state == "done"


def _processes_of(pattern: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if pattern in cmdline:
                found.append(int(entry.name))
    return found


def _wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.ansible
def test_cancel_stops_a_real_benchmark(tmp_path: Path) -> None:
    evars = _ansible_vars(tmp_path)
    handle = run_benchmark_async(preset="tiny", steps=1_000_000, **evars)
    pattern = f"--output {tmp_path}/root/runs/{handle.run_id}"
    assert _wait_until(lambda: len(_processes_of(pattern + "/instance-")) > 0, 240), \
        [h for h in handle.tracker.snapshot()]
    assert handle.tracker.snapshot()[0].instances_state == "running"
    handle.cancel()
    result = handle.wait(timeout=180)
    assert result.status == "canceled"
    assert _wait_until(lambda: not _processes_of(pattern), 30), _processes_of(pattern)
    host_result = json.loads((tmp_path / "root" / "runs" / handle.run_id /
                              "host_result.json").read_text())
    assert host_result["status"] == "failed"  # the launcher saw its instances stopped


@pytest.mark.ansible
def test_two_loopback_ssh_hosts(tmp_path: Path) -> None:
    from sshd_hosts import SshdHosts, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    evars = _ansible_vars(tmp_path)
    del evars["dlrm_root"]  # one install root per host: they share this filesystem
    with SshdHosts(tmp_path / "sshd", count=2) as hosts:
        inventory = hosts.inventory(hostvars=lambda h: {"dlrm_root": str(tmp_path / h.name)})
        result = run_benchmark(inventory=inventory, precision="avx_fp32", preset="tiny",
                               steps=20, **evars)
    assert result.ok, (result.status, result.errors, result.stats)
    assert sorted(result.hosts) == ["node2", "node3"]
    assert result.cluster is not None
    assert result.throughput == pytest.approx(sum(
        h.metrics["throughput_samples_per_s"] for h in result.hosts.values()))
    for name in ("node2", "node3"):
        assert (result.results_dir / name / "host_result.json").is_file()
        assert (tmp_path / name / "runs" / result.run_id).is_dir()
