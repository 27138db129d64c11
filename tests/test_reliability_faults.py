"""Faults during a multi-host run (run.yml on two loopback SSH hosts, node2 and node3):

- node2's sshd dies during the benchmark: node3's results are still collected and rolled up, the
  KPI says "partial: lost hosts: node2", node3's tuning is put back;
- one instance of node3 is SIGKILLed: node3 is failed with that instance's exit status, node3's
  other instance and node2 are kept in the rollup;
- a rerun after those reuses the deployed package and the cached dataset (the deploy stage
  changes nothing) and completes on both hosts;
- no output of those runs and no collected file holds the SSH private key.

The hosts share this machine: only node3 tunes hugepages (node2 leaves them), so that the saved
"before" value is never the other host's tuning.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from reliability_helpers import (
    assert_data_reused,
    assert_hugepages_back,
    hugepages,
    json_files_parse,
    play_section,
    processes,
    start_sshd,
    stop_sshd,
    terminate,
    wait_until,
)

from dlrm_bench import kpi

pytestmark = [pytest.mark.ansible, pytest.mark.timeout(600)]


@dataclass
class Cluster:
    tmp: Path
    hosts: Any  # sshd_hosts.SshdHosts
    inventory: Path
    extra: dict[str, Any]
    outputs: list[str] = field(default_factory=list)
    # what the tests leave for the ones after them
    faults_done: list[str] = field(default_factory=list)

    def host(self, name: str) -> Any:
        return next(h for h in self.hosts.hosts if h.name == name)

    def root(self, name: str) -> Path:
        return self.tmp / name

    @property
    def results(self) -> Path:
        return self.tmp / "results"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ansible_fast_vars: dict[str, Any]
            ) -> Iterator[Cluster]:
    sys.path.insert(0, str(Path(__file__).parent))
    from sshd_hosts import SshdHosts, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("faults")
    with SshdHosts(tmp / "sshd", count=2) as hosts:
        inventory = tmp / "inventory.yml"
        inventory.write_text(yaml.safe_dump(hosts.inventory(
            python=sys.executable,
            hostvars=lambda h: {"dlrm_root": str(tmp / h.name),
                                "hugepages": "auto" if h.name == "node3" else 0})))
        extra = {**ansible_fast_vars, "results_dir": str(tmp / "results"),
                 "data_type": "real", "data_source": "synthetic", "synth_train_samples": 2048,
                 "synth_test_samples": 512, "dlrm_benchmark_start_delay_s": 3, "governor": ""}
        cluster = Cluster(tmp, hosts, inventory, extra)
        try:
            yield cluster
        finally:
            for host in hosts.hosts:
                terminate(f"--output {tmp / host.name}/runs/")


def _run(cluster: Cluster, ansible_playbook: Any, run_id: str, **more: Any) -> Any:
    run = ansible_playbook("-i", str(cluster.inventory), "run.yml",
                           extra={**cluster.extra, "run_id": run_id, **more})
    cluster.outputs.append(run.stdout)
    (cluster.tmp / f"{run_id}.log").write_text(run.stdout)  # for a look after a failure
    return run


def _assert_restored(cluster: Cluster, stdout: str, before: int | None) -> None:
    """node3 (the host that tunes hugepages) put its saved settings back and dropped its state
    file. The pool itself is this machine's, shared with whatever else runs here: it is compared
    only when no other playbook runs here meanwhile."""
    assert "node3: restored hugepages" in play_section(stdout, "Restore"), stdout[-3000:]
    assert not (cluster.root("node3") / "state" / "tune.json").exists()
    assert_hugepages_back(before, str(cluster.tmp))


def _instances_running(cluster: Cluster, name: str, run_id: str) -> bool:
    return bool(processes(f"--output {cluster.root(name)}/runs/{run_id}/instance-"))


def test_lost_host_is_named_and_the_others_are_reported(cluster: Cluster,
                                                        ansible_playbook: Any) -> None:
    run_id = "lost-host"
    before = hugepages()
    node2 = cluster.host("node2")
    lost = threading.Event()

    def take_node2_down() -> None:
        if wait_until(lambda: _instances_running(cluster, "node2", run_id)
                      and _instances_running(cluster, "node3", run_id), 300, 0.1):
            stop_sshd(node2)
            lost.set()

    killer = threading.Thread(target=take_node2_down, daemon=True)
    killer.start()
    try:
        run = _run(cluster, ansible_playbook, run_id, steps=1000)
        killer.join(timeout=5)
    finally:
        start_sshd(node2)
        terminate(f"--output {cluster.root('node2')}/runs/{run_id}")  # still running: detached
    assert lost.is_set(), "node2 was not taken down during the benchmark\n" + run.explain()
    cluster.faults_done.append("lost-host")

    assert run.returncode != 0, run.explain()
    recap = run.recaps[-1]
    assert recap["node2"]["unreachable"] >= 1, run.explain()
    assert recap["node3"]["failed"] == 0 and recap["node3"]["unreachable"] == 0, run.explain()

    run_dir = cluster.results / run_id
    assert (run_dir / "node3" / "host_result.json").is_file(), run.explain()
    assert not (run_dir / "node2").exists()
    assert json.loads((run_dir / "node3" / "host_result.json").read_text())["status"] == "ok"
    # the report and the rollup name the lost host and mark the KPI partial
    summary = (run_dir / "summary.txt").read_text()
    assert "partial: lost hosts: node2" in summary
    assert "*Throughput (samples/sec):" in summary
    assert "partial: lost hosts: node2" in play_section(run.stdout, "Report")
    samples = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    cluster_rows = [s for s in samples if s["metadata"]["level"] == "cluster"]
    assert cluster_rows and all(s["metadata"]["status"] == "partial" for s in cluster_rows)
    assert {s["metadata"]["lost_hosts"] for s in cluster_rows} == {"node2"}
    rolled = kpi.rollup([run_dir], expected_hosts=["node2", "node3"])
    assert rolled.partial and rolled.lost_hosts == ["node2"]
    assert rolled.metrics["throughput_samples_per_s"] > 0
    # the host that can be reached is restored (hugepages back to the value saved before the
    # run: the state file is gone after the write); the lost one is named, not waited for
    _assert_restored(cluster, run.stdout, before)
    assert json_files_parse(cluster.results) == []


def test_sigkilled_instance_fails_its_host_and_keeps_the_rest(cluster: Cluster,
                                                              ansible_playbook: Any) -> None:
    run_id = "killed-instance"
    before = hugepages()
    run_dir3 = cluster.root("node3") / "runs" / run_id
    killed: list[int] = []

    def kill_instance_1() -> None:
        import os
        import signal

        go = run_dir3 / ".barrier" / "go"
        if wait_until(lambda: go.exists() and (run_dir3 / "instance-1" / "pid").exists()
                      and _instances_running(cluster, "node2", run_id), 300, 0.05):
            pid = int((run_dir3 / "instance-1" / "pid").read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_instance_1, daemon=True)
    killer.start()
    run = _run(cluster, ansible_playbook, run_id, steps=1000, instance_number=2,
               cores_per_instance=1)
    killer.join(timeout=5)
    assert killed, "no instance was killed\n" + run.explain()
    cluster.faults_done.append("killed-instance")

    assert run.returncode != 0, run.explain()
    verdict = play_section(run.stdout, "Verdict")
    assert "node3: benchmark failed (host settings restored)" in verdict, run.explain()
    assert f"instance 1 (pid {killed[0]}) killed by SIGKILL" in verdict, run.explain()
    assert "node2" not in verdict
    recap = run.recaps[-1]
    assert recap["node2"]["failed"] == 0 and recap["node2"]["unreachable"] == 0

    # a rerun after the lost host: the package and the dataset are reused on both hosts
    assert_data_reused(run.stdout, ("node2", "node3"))

    run_dir = cluster.results / run_id
    host3 = json.loads((run_dir / "node3" / "host_result.json").read_text())
    assert host3["status"] == "failed"
    assert [i["exit_code"] for i in host3["instances"]] == [0, -9]
    assert host3["instances"][1]["exit"] == "killed by SIGKILL"
    assert host3["failures"] == [f"instance 1 (pid {killed[0]}) killed by SIGKILL"]
    rolled = kpi.rollup([run_dir], expected_hosts=["node2", "node3"])
    by_host = {h.host: h for h in rolled.hosts}
    assert by_host["node2"].status == "ok" and len(by_host["node2"].ok_instances) == 2
    assert by_host["node3"].status == "failed" and len(by_host["node3"].ok_instances) == 1
    assert not rolled.partial  # nothing lost: node3's failure is on record, not missing
    kept = [i.metrics["throughput_samples_per_s"] for h in rolled.hosts for i in h.ok_instances]
    assert len(kept) == 3
    assert rolled.metrics["throughput_samples_per_s"] == pytest.approx(sum(kept))
    _assert_restored(cluster, run.stdout, before)
    assert not processes(f"--output {cluster.root('node3')}/runs/{run_id}")
    assert json_files_parse(cluster.results) == []


def test_rerun_after_the_faults_reuses_the_cache_and_completes(cluster: Cluster,
                                                               ansible_playbook: Any) -> None:
    if not cluster.faults_done:
        pytest.skip("no fault was injected before (the tests above did not run)")
    before = hugepages()
    run = _run(cluster, ansible_playbook, "rerun")
    assert run.returncode == 0, run.explain()
    assert_data_reused(run.stdout, ("node2", "node3"))
    rolled = kpi.rollup([cluster.results / "rerun"], expected_hosts=["node2", "node3"])
    assert sorted(h.host for h in rolled.hosts) == ["node2", "node3"]
    assert all(h.status == "ok" for h in rolled.hosts) and not rolled.partial
    assert rolled.metrics["throughput_samples_per_s"] == pytest.approx(
        sum(h.metrics["throughput_samples_per_s"] for h in rolled.hosts))
    assert "partial" not in (cluster.results / "rerun" / "summary.txt").read_text()
    _assert_restored(cluster, run.stdout, before)


def test_no_private_key_in_output_or_results(cluster: Cluster) -> None:
    """The runs above authenticated with a private key: no line of it appears in any playbook
    output or in any file collected to the controller."""
    if not cluster.outputs:
        pytest.skip("no multi-host run happened")
    key = cluster.hosts.hosts[0].key_file.read_text()
    secrets = [line for line in key.splitlines() if len(line) >= 16 and "PRIVATE KEY" not in line]
    assert secrets
    for text in cluster.outputs:
        assert "PRIVATE KEY-----" not in text
        assert not [s for s in secrets if s in text]
    scanned = 0
    for path in cluster.results.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".gz":
                import gzip

                data = gzip.decompress(data)
            scanned += 1
            assert b"PRIVATE KEY-----" not in data, path
            assert not [s for s in secrets if s.encode() in data], path
    assert scanned > 10
