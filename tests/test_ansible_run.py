"""run.yml and the stage playbooks on this machine (inventory/localhost.yml), for real.

The runs share one install root (deployed by the first, reused by the next) and use the tiny
preset with a few steps; hugepages are really reserved during a run and put back after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import INT8, needs_amx

from dlrm_bench.hugepages import available_pages
from dlrm_bench.presets import get_preset

pytestmark = [pytest.mark.ansible, pytest.mark.timeout(900)]

HUGEPAGES_NR = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")


def _vars(workspace: Path, fast: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {**fast, "dlrm_root": str(workspace / "root"),
            "results_dir": str(workspace / "results"), **more}


def _latest(results: Path) -> Path:
    link = results / "latest"
    assert link.is_symlink(), f"no {link}"
    return results / link.readlink()


def _key_kpi(stdout: str) -> float:
    lines = [line for line in stdout.splitlines() if "*Throughput (samples/sec):" in line]
    assert lines, "no Key KPI block in the output"
    return float(lines[-1].split(":")[-1])


def _instance_results(host_dir: Path) -> list[dict[str, Any]]:
    files = sorted(host_dir.glob("instance-*/result.json"))
    assert files, f"no instance results in {host_dir}"
    return [json.loads(f.read_text()) for f in files]


def _expected_pages(preset: str = "tiny") -> int:
    return -(-get_preset(preset).table_bytes() // (2 * 1024 * 1024))


def test_run_int8_tunes_reports_and_restores(ansible_playbook, ansible_workspace,
                                             ansible_fast_vars, hugepages_guard) -> None:
    """The whole pipeline (amx_int8, or avx_int8 on a CPU without AMX): KPI printed, results
    fetched, hugepages set during the run and back to the previous value afterwards."""
    extra = _vars(ansible_workspace, ansible_fast_vars)
    # hugepages=auto grows the pool by what the tables need beyond its available pages (a host
    # may already keep a pool: never shrunk)
    wanted = hugepages_guard + max(0, _expected_pages() - available_pages(2 << 20))
    run = ansible_playbook("run.yml", "-e", f"precision={INT8}", extra=extra)
    assert run.returncode == 0, run.explain()
    kpi = _key_kpi(run.stdout)
    assert kpi > 0
    assert "#Key KPI" in run.stdout and "localhost" in run.stdout

    run_dir = _latest(ansible_workspace / "results")
    host_dir = run_dir / "localhost"
    assert (host_dir / "host_result.json").is_file()
    assert (host_dir / "ansible-host.json").is_file()
    assert (run_dir / "results.jsonl").stat().st_size > 0
    assert "*Throughput (samples/sec):" in (run_dir / "summary.txt").read_text()
    results = _instance_results(host_dir)
    assert {r["config"]["precision"] for r in results} == {INT8}
    assert all(r["status"] == "ok" for r in results)

    # tuning was real: the instances saw the computed reservation, and it is gone now
    seen = {r["host"]["hugepages"]["2048kB"]["nr"] for r in results}
    assert seen == {wanted}
    # ... and used: the tune role mounted a hugetlbfs (if none was) and the tables went there
    assert {r["model"]["tables"]["memory"] for r in results} == {"hugepages"}, \
        [r["model"]["tables"]["detail"] for r in results]
    record = json.loads((host_dir / "ansible-host.json").read_text())
    assert record["tuning"]["governor"] in ("unsupported", "performance")
    assert record["host"]["governor"] == "unsupported" or record["host"]["governor"]
    assert int(HUGEPAGES_NR.read_text()) == hugepages_guard
    assert not (ansible_workspace / "root" / "state" / "tune.json").exists()


@pytest.mark.parametrize("flags", [
    pytest.param(["-e", "precision=amx_bfloat16"], marks=needs_amx),
    ["-e", "precision=avx_fp32", "-e", "weight_sharing=False"],  # the seed's string spelling
    ["-e", "function=training", "-e", "batch_size=64"],
], ids=["amx_bfloat16", "avx_fp32-no-weight-sharing", "training"])
def test_run_precisions(ansible_playbook, ansible_workspace, ansible_fast_vars, hugepages_guard,
                        flags: list[str]) -> None:
    extra = _vars(ansible_workspace, ansible_fast_vars)
    run = ansible_playbook("run.yml", *flags, extra=extra)
    assert run.returncode == 0, run.explain()
    assert _key_kpi(run.stdout) > 0
    host_dir = _latest(ansible_workspace / "results") / "localhost"
    results = _instance_results(host_dir)
    given = dict(flag.split("=", 1) for flag in flags if "=" in flag)
    config = results[0]["config"]
    assert config["precision"] == given.get("precision", "avx_fp32")
    assert config["function"] == given.get("function", "inference")
    record = json.loads((host_dir / "ansible-host.json").read_text())
    if "weight_sharing" in given:
        assert "--no-weight-sharing" in record["command"]
        host_result = json.loads((host_dir / "host_result.json").read_text())
        assert host_result["layout"]["weight_sharing"] is False
    assert int(HUGEPAGES_NR.read_text()) == hugepages_guard


def test_failed_benchmark_still_restores(ansible_playbook, ansible_workspace, ansible_fast_vars,
                                         hugepages_guard, tmp_path: Path) -> None:
    """A dataset directory that passes preflight but holds garbage: the benchmark stage fails,
    the host's logs are still collected, its hugepages are put back, the run fails naming it."""
    bad = tmp_path / "bad-data"
    bad.mkdir()
    (bad / "terabyte_processed_test.bin").write_bytes(b"not a dataset")
    extra = _vars(ansible_workspace, ansible_fast_vars, data_type="real", data_source="path",
                  data_dir=str(bad), run_id="failing-run")
    run = ansible_playbook("run.yml", extra=extra)
    assert run.returncode != 0, run.explain()
    assert "localhost: benchmark failed (host settings restored)" in run.stdout
    assert "dlrm-bench launch exited with status" in run.stdout
    assert int(HUGEPAGES_NR.read_text()) == hugepages_guard
    assert not (ansible_workspace / "root" / "state" / "tune.json").exists()
    collected = ansible_workspace / "results" / "failing-run" / "localhost"
    assert (collected / "launch.log").is_file(), "the failed host's logs were not collected"


def test_check_mode_runs_clean(ansible_playbook, tmp_path: Path, ansible_fast_vars,
                               hugepages_guard) -> None:
    extra = _vars(tmp_path, ansible_fast_vars)
    run = ansible_playbook("run.yml", "--check", extra=extra)
    assert run.returncode == 0, run.explain()
    assert all(h.get("failed", 0) == 0 for recap in run.recaps for h in recap.values())
    assert not (tmp_path / "root").exists(), "check mode created the install root"
    assert int(HUGEPAGES_NR.read_text()) == hugepages_guard


def _criteo_on_controller(tmp_path: Path) -> Path:
    """A small Criteo-like dataset (binary files, counts, raw day files) made by dlrm-bench."""
    src = tmp_path / "criteo"
    subprocess.run([str(Path(sys.executable).parent / "dlrm-bench"), "data", "synth", "--out",
                    str(src), "--train-samples", "1024", "--test-samples", "256", "--raw",
                    "--raw-days", "2"], check=True, capture_output=True)
    return src


def test_second_provision_and_deploy_change_nothing(ansible_playbook, ansible_workspace,
                                                    ansible_fast_vars, hugepages_guard,
                                                    tmp_path: Path) -> None:
    """Provision + deploy (data copied from the controller) twice: the second reports changed=0
    and keeps the original hugepages value saved by the first; restore puts it back."""
    src = _criteo_on_controller(tmp_path)
    extra = _vars(ansible_workspace, ansible_fast_vars, data_type="real", data_source="copy",
                  data_src=str(src))
    root = ansible_workspace / "root"
    try:
        first = ansible_playbook("playbooks/provision.yml", "playbooks/deploy.yml", extra=extra)
        assert first.returncode == 0, first.explain()
        assert int(HUGEPAGES_NR.read_text()) == _expected_pages()
        target = root / "data" / "copy-criteo"
        assert (target / "terabyte_processed_train.bin").read_bytes() == \
            (src / "terabyte_processed_train.bin").read_bytes()
        files = json.loads((target / "manifest.json").read_text())["files"]
        assert len(files["terabyte_processed_train.bin"]["sha256"]) == 64
        second = ansible_playbook("playbooks/provision.yml", "playbooks/deploy.yml", extra=extra)
        assert second.returncode == 0, second.explain()
        assert len(second.recaps) == 2
        assert second.changed() == 0, second.explain()
        state = json.loads((root / "state" / "tune.json").read_text())
        saved = state["settings"][str(HUGEPAGES_NR)]["value"]
        assert saved == str(hugepages_guard), "the second provision overwrote the saved value"
    finally:
        restore = ansible_playbook("playbooks/restore.yml", extra=extra)
    assert restore.returncode == 0, restore.explain()
    assert int(HUGEPAGES_NR.read_text()) == hugepages_guard
    assert not (root / "state" / "tune.json").exists()


def test_amx_refused_on_a_host_without_amx(ansible_playbook, tmp_path: Path,
                                           ansible_fast_vars) -> None:
    extra = _vars(tmp_path, ansible_fast_vars,
                  dlrm_cpu_flags_override="avx512f avx512bw avx512_vnni")
    run = ansible_playbook("run.yml", "-e", "precision=amx_int8", extra=extra)
    assert run.returncode != 0, run.explain()
    assert "localhost: precision amx_int8 needs the CPU flags amx_tile, amx_int8" in run.stdout
    assert "lacks amx_tile, amx_int8" in run.stdout
    assert not (tmp_path / "root").exists(), "something was installed before preflight refused"


@pytest.mark.parametrize("flag,message", [
    ("precision=amx_int9", "value of precision must be one of"),
    ("mode=fast", "value of mode must be one of"),
    ("case_type=quick", "value of case_type must be one of"),
])
def test_invalid_parameters_fail_before_anything_runs(ansible_playbook, tmp_path: Path,
                                                      ansible_fast_vars, flag: str,
                                                      message: str) -> None:
    run = ansible_playbook("run.yml", "-e", flag, extra=_vars(tmp_path, ansible_fast_vars))
    assert run.returncode != 0
    assert message in run.stdout, run.explain()
    assert "dlrm_host_facts" not in run.stdout and "Gather the host facts" not in run.stdout
    assert not (tmp_path / "root").exists()


def test_stage_playbooks_alone_on_raw_data(ansible_playbook, ansible_workspace,
                                           ansible_fast_vars, tmp_path: Path) -> None:
    """deploy.yml with data_source raw (day files preprocessed on the host), then benchmark.yml,
    collect.yml and report.yml one by one (accuracy on that data); a failing benchmark.yml run
    alone fails the host at once."""
    src = _criteo_on_controller(tmp_path)
    days = sorted(str(p) for p in (src / "raw").glob("day_*"))
    root = ansible_workspace / "root"
    extra = _vars(ansible_workspace, ansible_fast_vars, data_type="real", data_source="raw",
                  data_raw=days, max_ind_range=10000, mode="accuracy", batch_size=16,
                  run_id="raw-data-run")

    raw = ansible_playbook("playbooks/deploy.yml", extra=extra)
    assert raw.returncode == 0, raw.explain()
    deployed = json.loads((root / "deploy.json").read_text())
    assert deployed["data_source"] == "raw" and "preprocessed-" in deployed["data_dir"]
    manifest = json.loads((Path(deployed["data_dir"]) / "manifest.json").read_text())
    assert manifest["params"]["raw"] == days and manifest["params"]["max_ind_range"] == 10000

    stages = ansible_playbook("playbooks/benchmark.yml", "playbooks/collect.yml",
                              "playbooks/report.yml", extra=extra)
    assert stages.returncode == 0, stages.explain()
    assert "*Accuracy (%):" in stages.stdout
    host_dir = ansible_workspace / "results" / "raw-data-run" / "localhost"
    result = _instance_results(host_dir)[0]
    assert result["config"]["data_dir"] == deployed["data_dir"]
    assert result["metrics"]["auc"] is not None

    failing = ansible_playbook("playbooks/benchmark.yml", extra={
        **extra, "run_id": "bad-steps", "dlrm_benchmark_extra_args": ["--steps", "0"]})
    assert failing.returncode != 0, failing.explain()
    assert "benchmark failed" in failing.stdout and "steps must be" in failing.stdout
    assert "failed=1" in failing.stdout.replace(" ", "")
