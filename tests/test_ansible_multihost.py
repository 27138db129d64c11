"""run.yml over SSH against loopback hosts (one sshd per 127.0.0.N, own port, keys and install
root): every host's results come back and the cluster throughput is the sum of the hosts'."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from dlrm_bench import kpi

pytestmark = [pytest.mark.ansible, pytest.mark.timeout(900)]


def test_run_on_loopback_ssh_hosts(loopback_ssh_hosts, ansible_playbook, ansible_fast_vars,
                                   tmp_path: Path) -> None:
    hosts = loopback_ssh_hosts.hosts
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(loopback_ssh_hosts.inventory(
        python=sys.executable, hostvars=lambda h: {"dlrm_root": str(tmp_path / h.name)})))
    results = tmp_path / "results"
    # the hosts share this machine's sysfs: leave hugepages alone (tuning is tested on localhost)
    extra = {**ansible_fast_vars, "results_dir": str(results), "hugepages": 0,
             "dlrm_benchmark_start_delay_s": 3}

    run = ansible_playbook("-i", str(inventory), "run.yml", extra=extra)
    assert run.returncode == 0, run.explain()
    recap = run.recaps[-1]
    assert set(recap) == {h.name for h in hosts}
    assert all(counts["failed"] == 0 and counts["unreachable"] == 0 for counts in recap.values())

    run_dir = results / (results / "latest").readlink()
    starts = set()
    for host in hosts:
        host_dir = run_dir / host.name
        assert (host_dir / "host_result.json").is_file(), f"{host.name} was not collected"
        assert list(host_dir.glob("instance-*/result.json")), f"no instance results of {host.name}"
        record = json.loads((host_dir / "ansible-host.json").read_text())
        assert record["inventory_hostname"] == host.name
        assert record["deploy"]["venv"] == str(tmp_path / host.name / "venv")
        starts.add(record["start_at_unix"])
        assert (tmp_path / host.name / "runs" / run_dir.name / "host_result.json").is_file()
    assert len(starts) == 1, "the hosts did not share one start time"

    cluster = kpi.rollup([run_dir])
    per_host = [h.metrics["throughput_samples_per_s"] for h in cluster.hosts]
    assert len(per_host) == len(hosts) and all(v > 0 for v in per_host)
    assert cluster.metrics["throughput_samples_per_s"] == pytest.approx(sum(per_host))
    printed = [line for line in run.stdout.splitlines() if "*Throughput (samples/sec):" in line]
    assert printed and float(printed[-1].split(":")[-1]) == pytest.approx(sum(per_host), abs=2e-3)
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line)["metric"] for line in lines)
