"""Test-case suites through run.yml, for real: the gated suite on this machine, a two-case suite on
loopback SSH hosts, and a suite where one case fails (the others complete, the run fails naming
it). Fast options as in test_ansible_run.py: the controller's torch shared with the host venv, a
short start delay, hugepages left alone; a small on-disk dataset so that a training accuracy case
evaluates quickly."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine_helpers import runnable

from dlrm_bench import suites

pytestmark = [pytest.mark.ansible, pytest.mark.timeout(1500)]

# A few steps per case; the training accuracy cases train a little longer so that their AUC
# clears the synthetic-data threshold (0.60) with margin; latency cases use 1 core per instance
# (the seed's 4 do not fit this 2-core machine).
FAST_SUITE = {
    "hugepages": 0,
    "steps": 6,
    "warmup_steps": 1,
    "data_type": "real",
    "data_source": "synthetic",
    "synth_train_samples": 4096,
    "synth_test_samples": 2048,
    "case_overrides": {"inference_latency_*": {"cores_per_instance": 1},
                       "training_accuracy_*": {"steps": 16, "warmup_steps": 2}},
}


def _vars(tmp: Path, fast: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {**fast, **FAST_SUITE, "dlrm_root": str(tmp / "root"),
            "results_dir": str(tmp / "results"), **more}


def _run_dir(results: Path) -> Path:
    return results / (results / "latest").readlink()


def _summary_lines(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.replace("\\n", "\n").splitlines()
            if re.search(r"Test +#\d+:", line)]


def test_gated_suite_on_localhost(ansible_playbook, ansible_fast_vars, tmp_path: Path) -> None:
    """Every gated case this machine supports runs (each within the gated budget), the summary is
    printed, the suite report and every case's report are written, and the run passes."""
    run = ansible_playbook("run.yml", "-e", "suite=gated",
                           extra=_vars(tmp_path, ansible_fast_vars), timeout=1400)
    assert run.returncode == 0, run.explain()
    assert "100% tests passed, 0 tests failed out of 21" in run.stdout, run.explain()
    lines = _summary_lines(run.stdout)
    assert len(lines) >= 21, run.explain()
    run_dir = _run_dir(tmp_path / "results")
    verdict = json.loads((run_dir / "suite.json").read_text())
    assert verdict["total"] == 21 and verdict["failed"] == []
    plan = json.loads((run_dir / "localhost" / suites.PLAN_FILE).read_text())
    supported = [c["name"] for c in plan["cases"] if c["supported"]]
    for case in verdict["cases"]:
        assert case["status"] == ("Passed" if case["name"] in supported else "Not Run")
        host = case["hosts"][0]
        if case["name"] in supported:
            assert host["seconds"] is not None and host["seconds"] < 300, case   # gated: < 5 min
            assert (run_dir / case["name"] / "localhost" / "host_result.json").is_file()
            assert (run_dir / case["name"] / "report.html").is_file()
            assert case["key_kpi"]["value"] > 0
        else:
            assert "needs the CPU flags" in host["reason"]
    if "amx_tile" in Path("/proc/cpuinfo").read_text():
        assert len(supported) == 21
    html = (run_dir / "suite-report.html").read_text()
    assert "Precision sweep" in html and 'href="inference_throughput_avx_fp32_gated/report.html"' \
        in html
    # one pipeline: provisioned and deployed once, each case in its own run directory
    assert run.stdout.count("TASK [preflight : Gather the host facts") == 1
    assert run.stdout.count("TASK [deploy : ") > 0
    runs = tmp_path / "root" / "runs" / run_dir.name
    case_dirs = [p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith("weights-")]
    assert sorted(case_dirs) == sorted(supported)
    # the cases share one prepared-weights cache at the run's top level, which is not collected
    assert (runs / "weights-node0").is_dir() and not (run_dir / "weights-node0").exists()
    training = next(c for c in verdict["cases"] if c["name"] == "training_accuracy_avx_fp32_gated")
    assert training["auc_required"] and training["hosts"][0]["auc"] >= 0.60
    print(f"\ngated suite: {run.seconds:.0f} s for {len(supported)} cases")


def test_failed_case_fails_only_itself(ansible_playbook, ansible_fast_vars,
                                       tmp_path: Path) -> None:
    """A bad data path in one case (case_overrides) fails that case; the others complete, a case
    the (simulated) CPU lacks is not run; the run fails and the summary says which case."""
    cases = ["inference_throughput_avx_fp32_gated", "inference_throughput_avx_int8_gated",
             "inference_throughput_amx_int8_gated", "inference_accuracy_avx_fp32_gated"]
    overrides = {**FAST_SUITE["case_overrides"],
                 "inference_throughput_avx_int8_gated": {"data_dir": "/nonexistent/criteo"}}
    extra = _vars(tmp_path, ansible_fast_vars, cases=",".join(cases), case_overrides=overrides,
                  dlrm_cpu_flags_override="avx512f avx512bw avx512_vnni", run_id="with-a-failure")
    run = ansible_playbook("run.yml", extra=extra)
    assert run.returncode != 0, run.explain()
    assert "75% tests passed, 1 tests failed out of 4" in run.stdout, run.explain()
    assert "2 - inference_throughput_avx_int8_gated (Failed)" in run.stdout
    assert "1 of 4 test cases failed: inference_throughput_avx_int8_gated" in run.stdout
    assert "localhost: dlrm-bench: error: data dir /nonexistent/criteo does not exist" in run.stdout
    assert "3 - inference_throughput_amx_int8_gated (Not Supported)" in run.stdout
    assert "not supported on localhost: precision amx_int8 needs the CPU flags" in run.stdout
    run_dir = tmp_path / "results" / "with-a-failure"
    verdict = json.loads((run_dir / "suite.json").read_text())
    assert [c["status"] for c in verdict["cases"]] == ["Passed", "Failed", "Not Run", "Passed"]
    for name in (cases[0], cases[3]):   # the cases after the failed one ran too
        assert (run_dir / name / "localhost" / "host_result.json").is_file()
    assert (run_dir / cases[1] / "localhost" / "launch.log").is_file()   # its log came home
    assert not (run_dir / cases[2]).exists()


def test_suite_on_loopback_ssh_hosts(loopback_ssh_hosts, ansible_playbook, ansible_fast_vars,
                                     tmp_path: Path) -> None:
    """A two-case suite over SSH: every host runs both cases; per-host, per-case results come
    home as results/<run_id>/<case>/<host>/, and the summary sums the hosts."""
    hosts = [h.name for h in loopback_ssh_hosts.hosts]
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(loopback_ssh_hosts.inventory(
        python=sys.executable, hostvars=lambda h: {"dlrm_root": str(tmp_path / h.name)})))
    second = "amx_bfloat16" if runnable("amx_bfloat16") else "avx_int8"
    cases = f"inference_throughput_avx_fp32_gated,inference_throughput_{second}_gated"
    extra = {**_vars(tmp_path, ansible_fast_vars), "dlrm_benchmark_start_delay_s": 3,
             "data_type": "synthetic", "cases": cases}
    del extra["dlrm_root"]   # each host has its own (inventory host vars)
    run = ansible_playbook("-i", str(inventory), "run.yml", extra=extra)
    assert run.returncode == 0, run.explain()
    run_dir = _run_dir(tmp_path / "results")
    verdict = json.loads((run_dir / "suite.json").read_text())
    assert verdict["hosts"] == hosts and verdict["failed"] == []
    for case in verdict["cases"]:
        assert [h["host"] for h in case["hosts"]] == hosts
        assert all(h["status"] == "passed" for h in case["hosts"]), case
        per_host = [h["key_kpi"]["value"] for h in case["hosts"]]
        assert case["key_kpi"]["value"] == pytest.approx(sum(per_host))
        for host in hosts:
            host_dir = run_dir / case["name"] / host
            result = json.loads((host_dir / "host_result.json").read_text())
            assert result["host"] == host and result["status"] == "ok"
            record = json.loads((host_dir / "ansible-host.json").read_text())
            assert record["case"] == case["name"]
            assert (tmp_path / host / "runs" / run_dir.name / case["name"]).is_dir()
        starts = {json.loads((run_dir / case["name"] / h / "ansible-host.json").read_text())
                  ["start_at_unix"] for h in hosts}
        assert len(starts) == 1, "the hosts did not start the case together"
    assert "100% tests passed, 0 tests failed out of 2" in run.stdout
