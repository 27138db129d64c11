"""The README's Python snippet, run as written (only where results and installs go is redirected
into the test's temp dir), against localhost and against loopback SSH hosts."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import dlrm_bench.orchestrate as orchestrate

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ansible, pytest.mark.timeout(900)]


def readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## From Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README lost its Python snippet"
    return match.group(1)


def _run_snippet(monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any]) -> dict[str, Any]:
    real = orchestrate.run_benchmark
    calls: list[Any] = []

    def redirected(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **{**kwargs, **overrides})
        calls.append(result)
        return result

    monkeypatch.setattr(orchestrate, "run_benchmark", redirected)
    monkeypatch.chdir(REPO)
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    assert calls, "the snippet did not call run_benchmark"
    namespace["_result"] = calls[-1]
    return namespace


def test_snippet_on_localhost(monkeypatch, ansible_fast_vars, tmp_path: Path, capsys) -> None:
    overrides = {**ansible_fast_vars, "dlrm_root": str(tmp_path / "root"),
                 "results_dir": str(tmp_path / "results"), "hugepages": 0, "governor": ""}
    overrides.pop("steps")  # the snippet's own steps=20 stays
    ns = _run_snippet(monkeypatch, overrides)
    result = ns["_result"]
    assert result.ok, (result.status, result.errors)
    assert list(result.hosts) == ["localhost"]
    assert result.cluster.precision == "avx_int8"
    assert result.cluster.config.get("steps") == 20
    # repeats=2: two measurements, each rolled up, the KPI their mean
    assert [r.repeat for r in result.cluster.repeats] == [0, 1]
    assert (result.results_dir / "localhost" / "repeat-1" / "host_result.json").is_file()
    assert "Repeats: 2" in result.cluster.kpi_block()
    from dlrm_bench import compare

    run = compare.load_run(result.results_dir)
    assert len(run.repeats) == 2
    assert compare.estimate(run, "cluster", "throughput").source == "repeats"
    out = capsys.readouterr().out
    assert "*Throughput (samples/sec): " in out and "localhost ok" in out
    assert result.throughput == pytest.approx(
        result.hosts["localhost"].metrics["throughput_samples_per_s"])


def test_snippet_on_loopback_ssh_hosts(monkeypatch, loopback_ssh_hosts, ansible_fast_vars,
                                       tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(loopback_ssh_hosts.inventory(
        python=sys.executable, hostvars=lambda h: {"dlrm_root": str(tmp_path / h.name)})))
    overrides = {**ansible_fast_vars, "inventory": str(inventory),
                 "results_dir": str(tmp_path / "results"), "hugepages": 0, "governor": "",
                 "dlrm_benchmark_start_delay_s": 3}
    overrides.pop("steps")
    result = _run_snippet(monkeypatch, overrides)["_result"]
    assert result.ok, (result.status, result.errors)
    names = {h.name for h in loopback_ssh_hosts.hosts}
    assert set(result.hosts) == names
    total = sum(h.metrics["throughput_samples_per_s"] for h in result.hosts.values())
    assert result.throughput == pytest.approx(total)
