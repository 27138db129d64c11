"""Test-case suites (dlrm_bench/suites.py, suite_report.py, `dlrm-bench cases --suite`, `dlrm-bench
suite`): selection, per-host plans with reasons, verdicts and the ctest-like summary, over
hand-made result directories (fast; the Ansible runs are in test_suites_ansible.py)."""

from __future__ import annotations

import json
import re
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from test_kpi import write_host

from dlrm_bench import suites
from dlrm_bench.cli import main
from dlrm_bench.config import all_cases
from dlrm_bench.errors import UserError
from dlrm_bench.suite_report import arrange, write_suite_outputs

NO_AMX = frozenset({"avx512f", "avx512bw", "avx512_vnni"})
AMX = NO_AMX | {"amx_tile", "amx_int8", "amx_bf16"}


def test_builtin_suites() -> None:
    gated = suites.select_cases("gated")
    assert len(gated) == 21 and all(c.endswith("_gated") for c in gated)
    assert gated == [c for c in all_cases() if c.endswith("_gated")]   # the seed's order
    assert suites.select_cases("all") == all_cases()
    assert suites.select_cases("precisions") == [
        "inference_throughput_avx_fp32", "inference_throughput_avx_int8",
        "inference_throughput_amx_int8", "inference_throughput_amx_bfloat16",
        "inference_throughput_amx_bfloat32"]
    assert all(c.endswith("_pkm") for c in suites.select_cases("pkm"))
    assert all(c.startswith("training_") for c in suites.select_cases("training"))


def test_explicit_cases_seed_names_and_duplicates() -> None:
    picked = suites.select_cases(cases="inference_throughput_amx_int8, "
                                       "test_dlrm_pytorch_xeon_public_training_accuracy_avx_fp32_gated"
                                       " inference_throughput_amx_int8")
    assert picked == ["inference_throughput_amx_int8", "training_accuracy_avx_fp32_gated"]
    both = suites.select_cases("precisions", ["training_throughput_avx_fp32",
                                              "inference_throughput_avx_fp32"])
    assert both[-1] == "training_throughput_avx_fp32" and len(both) == 6


@pytest.mark.parametrize("suite,cases,message", [
    ("quick", None, "unknown suite 'quick'"),
    (None, "inference_throughput_amx_int9", "unknown test case"),
    (None, "training_throughput_avx_int8", "unknown test case"),
    (None, "", "no test cases"),
])
def test_bad_selection_is_one_clear_error(suite: str | None, cases: str | None,
                                          message: str) -> None:
    with pytest.raises(UserError, match=message):
        suites.select_cases(suite, cases)


def test_overrides_by_name_and_glob() -> None:
    overrides = suites.check_overrides({
        "inference_latency_*": {"cores_per_instance": 1, "steps": 5},
        "inference_latency_amx_int8_gated": {"steps": 7}})
    assert suites.case_overrides("inference_latency_amx_int8_gated", overrides) == {
        "cores_per_instance": 1, "steps": 7}
    assert suites.case_overrides("inference_latency_avx_fp32_gated", overrides)["steps"] == 5
    assert suites.case_overrides("training_accuracy_avx_fp32_gated", overrides) == {}
    with pytest.raises(UserError, match="matches no test case"):
        suites.check_overrides({"inference_latency_avx_fp33": {"steps": 1}})
    with pytest.raises(UserError, match="'precision' cannot be overridden"):
        suites.check_overrides({"*": {"precision": "amx_int8"}})
    with pytest.raises(UserError, match="wrong type"):
        suites.check_overrides({"*": {"steps": "many"}})


def test_plan_reports_what_a_host_cannot_run_and_why() -> None:
    def layout(function: str, mode: str, cores: int | None, instances: int | None) -> None:
        if mode == "latency" and cores is None:
            raise UserError("latency mode needs 4 cores per instance but this host allows 2")

    names = suites.select_cases("gated")
    planned = suites.plan(names, {"inference_latency_avx_*": {"cores_per_instance": 1}},
                          flags=NO_AMX, layout=layout)
    assert [p.number for p in planned] == list(range(1, 22))
    by_name = {p.name: p for p in planned}
    amx = [p for p in planned if "_amx_" in p.name]
    assert amx and not any(p.supported for p in amx)
    assert "precision amx_int8 needs the CPU flags amx_tile, amx_int8" in str(
        by_name["inference_throughput_amx_int8_gated"].reason)
    assert by_name["inference_latency_avx_fp32_gated"].supported
    assert by_name["inference_latency_avx_fp32_gated"].params["cores_per_instance"] == 1
    assert all(p.supported for p in planned if "_avx_" in p.name)
    everything = suites.plan(names, flags=AMX, layout=layout)
    latency = [p for p in everything if "_latency_" in p.name]
    assert not any(p.supported for p in latency)
    assert "4 cores per instance" in str(latency[0].reason)
    assert sum(p.supported for p in everything) == 16
    accuracy = ["inference_accuracy_avx_fp32", "training_accuracy_avx_fp32"]
    assert [p.auc_required for p in suites.plan(accuracy, flags=AMX)] == [False, True]
    from_checkpoint = suites.plan(accuracy, base={"checkpoint": "/m/tb00_40M.pt"}, flags=AMX)
    assert [p.auc_required for p in from_checkpoint] == [True, True]


def test_auc_threshold_rules() -> None:
    assert suites.default_auc_threshold() == 0.60
    assert suites.default_auc_threshold("real", "path", "/models/tb00_40M.pt") == 0.8025
    assert suites.default_auc_threshold("real", "synthetic", "/m.pt") == 0.60
    assert suites.auc_checked("training", "accuracy", {})
    assert not suites.auc_checked("inference", "accuracy", {})
    assert suites.auc_checked("inference", "accuracy", {"checkpoint": "/m.pt"})
    assert not suites.auc_checked("training", "throughput", {})


# ---------------------------------------------------------------- verdicts over results dirs
def _plan(run: Path, host: str, names: list[str], flags: frozenset[str],
          overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = {"suite": "demo", "host": host, "auc_threshold": 0.60,
           "cases": [asdict(c) for c in suites.plan(names, overrides, flags=flags)]}
    (run / host).mkdir(parents=True, exist_ok=True)
    (run / host / suites.PLAN_FILE).write_text(json.dumps(doc))
    return doc


def _case(run: Path, host: str, name: str, *, throughput: float = 100.0,
          auc: float | None = None, fail: str | None = None, seconds: float = 12.5) -> Path:
    fields = suites.parse_case(name)
    spec = {"throughput": throughput, "mode": fields["mode"], "function": fields["function"],
            "precision": fields["precision"], "auc": auc}
    path = write_host(run / host / name, host, [spec], [2 if fail else 0])
    doc = json.loads((path / "host_result.json").read_text())
    doc.update(started="2026-01-01T00:00:00+00:00",
               finished=f"2026-01-01T00:00:{seconds:06.3f}+00:00")
    (path / "host_result.json").write_text(json.dumps(doc))
    (path / "launch.log").write_text("launch at ...\n" + (f"dlrm-bench: error: {fail}\n"
                                                         if fail else "ok\n"))
    return path


@pytest.fixture
def suite_run(tmp_path: Path) -> Path:
    """Two hosts, four cases: one passes, one fails on host b, one needs AMX (only a has it),
    one is a training accuracy case whose AUC is under the threshold on a."""
    run = tmp_path / "results" / "20260101T000000Z"
    names = ["inference_throughput_avx_fp32", "inference_throughput_avx_int8",
             "inference_throughput_amx_int8", "training_accuracy_avx_fp32_gated"]
    _plan(run, "a", names, AMX)
    _plan(run, "b", names, NO_AMX)
    for host, tput in (("a", 1000.0), ("b", 500.0)):
        _case(run, host, names[0], throughput=tput)
    _case(run, "a", names[1], throughput=900.0)
    _case(run, "b", names[1], fail="data dir /nope does not exist")
    _case(run, "a", names[2], throughput=3000.0, seconds=20.0)
    _case(run, "a", names[3], auc=0.55)
    _case(run, "b", names[3], auc=0.74)
    return run


def test_verdicts_and_ctest_summary(suite_run: Path) -> None:
    verdict = suites.evaluate(suite_run, ["a", "b"])
    status = {c.name: c.status for c in verdict.cases}
    assert status == {"inference_throughput_avx_fp32": "Passed",
                      "inference_throughput_avx_int8": "Failed",
                      "inference_throughput_amx_int8": "Passed",
                      "training_accuracy_avx_fp32_gated": "Failed"}
    first = verdict.cases[0]
    assert first.key_kpi == {"metric": "Throughput", "value": 1500.0, "unit": "samples/sec"}
    amx = verdict.cases[2]
    assert [h.status for h in amx.hosts] == ["passed", "not supported"]
    assert amx.notes[0].startswith("not supported on b: precision amx_int8 needs the CPU flags")
    assert amx.seconds == pytest.approx(20.0)
    assert verdict.exit_code == suites.FAILED_EXIT
    text = verdict.summary()
    assert re.search(r"1/4 Test #1: inference_throughput_avx_fp32 \.+\s+Passed\s+12\.50 sec"
                     r"  \*Throughput \(samples/sec\): 1500\.000", text), text
    assert re.search(r"2/4 Test #2: inference_throughput_avx_int8 \.+\*\*\*Failed", text)
    assert "b: dlrm-bench: error: data dir /nope does not exist" in text
    assert "a: AUC 0.5500 < 0.6000" in text
    assert "50% tests passed, 2 tests failed out of 4" in text
    assert "The following tests FAILED:\n\t  2 - inference_throughput_avx_int8 (Failed)\n" \
           "\t  4 - training_accuracy_avx_fp32_gated (Failed)" in text
    # a lower threshold passes the accuracy case; a lost host fails every case
    assert suites.evaluate(suite_run, auc_threshold=0.5).cases[3].status == "Passed"
    lost = suites.evaluate(suite_run, ["a", "b", "c"])
    assert all(c.status == "Failed" for c in lost.cases)
    assert "c: no suite plan from this host" in lost.summary()


def test_a_case_no_host_supports_is_not_run_and_not_failed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    names = ["inference_throughput_avx_fp32", "inference_throughput_amx_bfloat16"]
    _plan(run, "old", names, NO_AMX)
    _case(run, "old", names[0])
    verdict = suites.evaluate(run)
    assert [c.status for c in verdict.cases] == ["Passed", "Not Run"]
    text = verdict.summary()
    assert "100% tests passed, 0 tests failed out of 2" in text
    assert "The following tests did not run:\n\t  2 - inference_throughput_amx_bfloat16 " \
           "(Not Supported)" in text
    assert "not supported on old: precision amx_bfloat16 needs" in text
    assert verdict.exit_code == 0


def test_arrange_and_suite_report(suite_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["suite", "report", str(suite_run), "--hosts", "a", "b"]) == suites.FAILED_EXIT
    out = capsys.readouterr().out
    assert "50% tests passed, 2 tests failed out of 4" in out and "suite-report.html" in out
    case = suite_run / "inference_throughput_avx_fp32"
    assert (case / "a" / "host_result.json").is_file() and (case / "b").is_dir()
    assert not (suite_run / "a" / "inference_throughput_avx_fp32").exists()
    assert (suite_run / "a" / suites.PLAN_FILE).is_file()
    assert (case / "report.html").is_file() and (case / "results.jsonl").stat().st_size > 0
    assert "*Throughput (samples/sec): 1500.000" in (case / "summary.txt").read_text()
    assert arrange(suite_run) == []   # idempotent
    html = (suite_run / "suite-report.html").read_text()
    assert 'href="inference_throughput_avx_fp32/report.html"' in html
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" '
                     r'alt="inference throughput per precision"', html)
    assert "not supported" in html and "FAILED" in html and "AUC 0.5500" in html
    saved = json.loads((suite_run / "suite.json").read_text())
    assert saved["failed"] == ["inference_throughput_avx_int8",
                               "training_accuracy_avx_fp32_gated"]
    assert "4 - training_accuracy" in (suite_run / "suite-summary.txt").read_text()
    # the summary reads the arranged layout the same way, read-only
    assert main(["suite", "summary", str(suite_run)]) == suites.FAILED_EXIT
    assert capsys.readouterr().out == (suite_run / "suite-summary.txt").read_text()
    again = write_suite_outputs(suite_run, ["a", "b"])
    assert [c.status for c in again.cases] == [c["status"] for c in saved["cases"]]


def test_cases_command_lists_a_suite_with_unsupported_reasons(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DLRM_BENCH_CPU_FLAGS", "avx512f avx512bw avx512_vnni")
    assert main(["cases", "--suite", "gated",
                 "--overrides", '{"inference_latency_*": {"cores_per_instance": 1}}']) == 0
    out = capsys.readouterr().out
    host = socket.gethostname()
    lines = [ln for ln in out.splitlines() if "Test #" in ln]
    assert len(lines) == 21 and lines[0] == "  Test #1: inference_throughput_avx_fp32_gated"
    amx = [ln for ln in lines if "_amx_" in ln]
    assert len(amx) == 13  # every amx case: 3 modes x 3 inference, 2 x 2 training
    for line in amx:
        assert f"(not supported on {host}: precision amx_" in line, line
        assert "this host lacks: amx_tile" in line and "(from DLRM_BENCH_CPU_FLAGS)" in line
    assert not any("not supported" in ln for ln in lines if "_avx_" in ln)
    assert f"Total Tests: 21 ({len(amx)} not supported on {host})" in out
    # without a suite: the seed's whole list, as before
    assert main(["cases"]) == 0
    assert f"Total Tests: {len(all_cases())}\n" in capsys.readouterr().out


def test_suite_cli_list_check_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["suite", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in suites.SUITES)
    assert main(["suite", "check", "--suite", "gated"]) == 0
    assert "21 test case(s)" in capsys.readouterr().out
    assert main(["suite", "check", "--cases", "inference_throughput_amx_int9"]) == 2
    assert "unknown test case" in capsys.readouterr().err
    monkeypatch.setenv("DLRM_BENCH_CPU_FLAGS", "avx512f avx512_vnni")
    out = tmp_path / "plan.json"
    overrides = json.dumps(json.dumps({"*": {"steps": 3}}))   # JSON in a string, as -e gives it
    assert main(["suite", "plan", "--cases", "inference_throughput_avx_fp32,"
                 "inference_throughput_amx_int8", "--host-label", "h1", "--overrides", overrides,
                 "--output", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(out.read_text())
    assert doc["host"] == "h1" and doc["auc_threshold"] == 0.60
    assert doc["flags_source"] == "DLRM_BENCH_CPU_FLAGS"
    assert [c["supported"] for c in doc["cases"]] == [True, False]
    assert doc["cases"][0]["params"]["steps"] == 3


def test_ansible_knows_the_same_suites() -> None:
    """The roles' argument specs offer exactly the built-in suites (as for the precisions)."""
    import yaml

    repo = Path(__file__).resolve().parent.parent
    for role, entry in (("preflight", "main"), ("benchmark", "suite")):
        specs = yaml.safe_load((repo / "roles" / role / "meta" / "argument_specs.yml").read_text())
        choices = specs["argument_specs"][entry]["options"]["suite"]["choices"]
        assert choices == ["", *suites.SUITES], role
    defaults = yaml.safe_load((repo / "group_vars" / "all.yml").read_text())
    assert defaults["suite"] == "" and defaults["cases"] == [] and defaults["case_overrides"] == {}
    assert defaults["auc_threshold"] is None
