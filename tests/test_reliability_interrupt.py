"""Interrupts and a full results disk in the pipeline on this machine (inventory/localhost.yml),
with hugepages really tuned:

- Ctrl-C (SIGINT) of ``dlrm-bench cluster run``: the instances stop, no process is left, the
  hugepages are back;
- Ctrl-C of a plain ``ansible-playbook run.yml``: Ansible stops at once and runs no further play
  (its own behaviour); the launch it started stops by itself once its lease (renewed by every poll)
  lapses, and puts the hugepages back; ``playbooks/restore.yml`` does the same at once;
- a rerun after the interrupts reuses the deployed package and the cached dataset and completes;
- the controller's results dir full during collect: the host is failed with a clear message and
  no half-unpacked run is left (nothing that looks like a result), and a collect with room again
  brings the run home.

(SIGINT/SIGKILL of ``dlrm-bench launch`` alone: tests/test_launcher.py
``test_launcher_signal_leaves_no_instance``.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import (
    REPO,
    assert_data_reused,
    assert_hugepages_back,
    fill,
    hugepages,
    json_files_parse,
    processes,
    start_playbook,
    terminate,
    tmpfs,
    wait_until,
)

from dlrm_bench.hugepages import hugetlbfs_mounts

pytestmark = [pytest.mark.ansible, pytest.mark.timeout(600),
              pytest.mark.skipif(os.geteuid() != 0, reason="hugepages and tmpfs need root")]
LONG = 10_000_000  # steps: runs until interrupted


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, ansible_fast_vars: dict[str, Any]
              ) -> Any:
    tmp = tmp_path_factory.mktemp("interrupt")
    extra = {**ansible_fast_vars, "dlrm_root": str(tmp / "root"),
             "results_dir": str(tmp / "results"), "data_type": "real",
             "data_source": "synthetic", "synth_train_samples": 2048, "synth_test_samples": 512,
             "governor": ""}
    yield tmp, extra
    terminate(f"--output {tmp / 'root'}/runs/")


def _pattern(tmp: Path, run_id: str) -> str:
    return f"--output {tmp / 'root'}/runs/{run_id}"


def _wait_for_instances(tmp: Path, run_id: str, proc: subprocess.Popen[str]) -> None:
    ok = wait_until(lambda: bool(processes(_pattern(tmp, run_id) + "/instance-"))
                    or proc.poll() is not None, 300)
    if not ok or proc.poll() is not None:
        out = proc.communicate(timeout=60)[0] if proc.poll() is None else proc.stdout.read()
        pytest.fail(f"the benchmark never started:\n{(out or '')[-4000:]}")


def _interrupt(tmp: Path, run_id: str, proc: subprocess.Popen[str], timeout: float) -> str:
    """Once the run's instances are up, SIGINT ``proc``; its output (killed if it hangs)."""
    try:
        _wait_for_instances(tmp, run_id, proc)
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigint_of_cluster_run_stops_everything_and_restores(workspace: Any) -> None:
    tmp, extra = workspace
    before = hugepages()
    run_id = "sigint-cluster"
    cmd = [sys.executable, "-m", "dlrm_bench", "cluster", "run", "--plain", "-e",
           json.dumps({**extra, "steps": LONG}), "--run-id", run_id]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    out = _interrupt(tmp, run_id, proc, 240)
    assert proc.returncode == 130, out[-4000:]
    assert "canceling" in out and f"run {run_id}: canceled" in out, out[-4000:]
    assert wait_until(lambda: not processes(_pattern(tmp, run_id)), 30), \
        processes(_pattern(tmp, run_id))
    assert_hugepages_back(before, str(tmp))
    assert not (tmp / "root" / "state" / "tune.json").exists()
    host = json.loads((tmp / "root" / "runs" / run_id / "host_result.json").read_text())
    assert host["status"] == "failed" and "SIGTERM" in " ".join(host["failures"])
    # the stop killed the launch's Ansible job: launch.log still has the launcher's last words
    log = (tmp / "root" / "runs" / run_id / "launch.log").read_text()
    assert "(status failed)" in log.splitlines()[-1], log[-2000:]


def test_sigint_of_ansible_playbook_then_restore(workspace: Any, ansible_playbook: Any) -> None:
    tmp, extra = workspace
    before = hugepages()
    run_id = "sigint-playbook"
    proc = start_playbook("run.yml", extra={**extra, "steps": LONG, "run_id": run_id})
    out = _interrupt(tmp, run_id, proc, 120)
    assert proc.returncode != 0
    assert "User interrupted execution" in out, out[-3000:]
    # this is a rerun: the package and the cached dataset were reused
    assert_data_reused(out)
    # Ansible ran no further play: the detached launch is still there, the host still tuned
    left = processes(_pattern(tmp, run_id))
    restore = ansible_playbook("playbooks/restore.yml", extra=extra)
    assert restore.returncode == 0, restore.explain()
    assert not processes(_pattern(tmp, run_id)), "restore.yml left benchmark processes"
    if left:  # the stop task found them (changed) before the settings went back
        stop = restore.stdout.split("TASK [Stop benchmark processes", 1)[1].split("TASK [", 1)[0]
        assert "changed: [localhost]" in stop, restore.explain()
    assert_hugepages_back(before, str(tmp))
    assert not (tmp / "root" / "state" / "tune.json").exists()


def test_sigint_of_ansible_playbook_cleans_up_by_itself(workspace: Any) -> None:
    """No restore play is run: the lapsed lease stops the instances and restores the host."""
    tmp, extra = workspace
    before = hugepages()
    run_id = "sigint-lease"
    lease_s = 8
    proc = start_playbook("run.yml", extra={**extra, "steps": LONG, "run_id": run_id,
                                            "dlrm_benchmark_lease_timeout_s": lease_s})
    out = _interrupt(tmp, run_id, proc, 120)
    assert "User interrupted execution" in out, out[-3000:]
    assert wait_until(lambda: not processes(_pattern(tmp, run_id)), lease_s + 60), \
        processes(_pattern(tmp, run_id))
    assert_hugepages_back(before, str(tmp))
    assert not (tmp / "root" / "state" / "tune.json").exists()
    host = json.loads((tmp / "root" / "runs" / run_id / "host_result.json").read_text())
    assert host["status"] == "failed"
    assert host["failures"][0].startswith("controller lost: lease"), host["failures"]
    restored = host["failures"][-1]
    assert restored.startswith("host settings restored by the launcher: "), restored
    assert "hugepages: /sys/kernel/mm/hugepages/" in restored, restored
    # the killed instances' tables on hugepages went with them: no file left holding pages
    assert not [p for m in hugetlbfs_mounts() for p in m.path.glob("dlrm-bench-*")], restored
    launch_log = (tmp / "root" / "runs" / run_id / "launch.log").read_text()
    assert "controller lost" in launch_log


def test_rerun_after_the_interrupts_completes(workspace: Any, ansible_playbook: Any) -> None:
    tmp, extra = workspace
    before = hugepages()
    run = ansible_playbook("run.yml", extra={**extra, "run_id": "rerun"})
    assert run.returncode == 0, run.explain()
    assert_data_reused(run.stdout)
    host = json.loads((tmp / "results" / "rerun" / "localhost" / "host_result.json").read_text())
    assert host["status"] == "ok" and host["metrics"]["throughput_samples_per_s"] > 0
    assert_hugepages_back(before, str(tmp))


def test_results_dir_full_during_collect(workspace: Any, ansible_playbook: Any) -> None:
    tmp, extra = workspace
    archive = tmp / "root" / "runs" / "rerun.tar.gz"
    if not archive.is_file():
        pytest.skip("no collected run to collect again (the rerun above did not run)")
    with tmpfs(tmp / "full-results", "1m") as results:
        # room for the fetched archive, not for the unpacked run
        fill(results, leave_bytes=archive.stat().st_size + 8 * 1024)
        evars = {**extra, "results_dir": str(results), "run_id": "rerun"}
        run = ansible_playbook("playbooks/collect.yml", extra=evars)
        assert run.returncode != 0, run.explain()
        assert "localhost: cannot unpack its run into" in run.stdout, run.explain()
        assert "nothing was kept" in run.stdout
        assert not (results / "rerun" / "localhost").exists()
        assert not list((results / "rerun").glob(".*.partial"))
        assert json_files_parse(results) == []
        (results / ".filler").unlink()  # room again: the same collect now completes
        again = ansible_playbook("playbooks/collect.yml", extra=evars)
        assert again.returncode == 0, again.explain()
        host = json.loads((results / "rerun" / "localhost" / "host_result.json").read_text())
        assert host["status"] == "ok"
        assert json_files_parse(results) == []
