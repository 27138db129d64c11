"""KPI rollup over hand-made run directories: sums, merged percentiles, the Key KPI block."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlrm_bench import kpi
from dlrm_bench.cli import main
from dlrm_bench.errors import UserError


def write_result(inst_dir: Path, *, throughput: float = 100.0, latencies: list[float] | None = None,
                 auc: float | None = None, mode: str = "throughput", function: str = "inference",
                 precision: str = "avx_fp32", host: str = "h1", status: str = "ok",
                 end: float = 1_700_000_000.0) -> None:
    lat = latencies if latencies is not None else [1.0, 2.0]
    metrics: dict[str, Any] = {
        "samples": len(lat), "elapsed_s": 1.0, "throughput_samples_per_s": throughput,
        "latency_ms": {"mean": float(np.mean(lat)),
                       **{k: float(np.percentile(lat, q)) for k, q in
                          (("p50", 50), ("p90", 90), ("p99", 99), ("p99_9", 99.9))}},
        "latencies_ms": lat}
    if auc is not None:
        metrics.update(auc=auc, accuracy=0.75, log_loss=0.5)
    result = {"schema_version": 1, "status": status, "test_case": f"{function}_{mode}_{precision}",
              "config": {"function": function, "mode": mode, "precision": precision,
                         "batch_size": 1, "threads": 1, "output": str(inst_dir),
                         "instance_id": 0},
              "host": {"hostname": host}, "metrics": metrics,
              "timing": {"timed_start_unix": end - 1.0, "timed_end_unix": end}}
    inst_dir.mkdir(parents=True, exist_ok=True)
    (inst_dir / "result.json").write_text(json.dumps(result))


def write_host(host_dir: Path, host: str, instances: list[dict[str, Any]],
               exit_codes: list[int] | None = None) -> Path:
    codes = exit_codes or [0] * len(instances)
    entries = []
    for k, (spec, code) in enumerate(zip(instances, codes, strict=True)):
        if spec is not None:
            write_result(host_dir / f"instance-{k}", host=host, **spec)
        entries.append({"id": k, "cpus": [k], "cpulist": str(k), "nodelist": "0",
                        "exit_code": code})
    (host_dir / "host_result.json").write_text(json.dumps(
        {"schema_version": 1, "status": "ok" if not any(codes) else "failed", "host": host,
         "instances": entries}))
    return host_dir


def test_throughput_sums_over_instances_and_hosts(tmp_path: Path) -> None:
    write_host(tmp_path / "run" / "a", "a", [{"throughput": 100.0}, {"throughput": 250.5}])
    write_host(tmp_path / "run" / "b", "b", [{"throughput": 1000.0}])
    cluster = kpi.rollup([tmp_path / "run"])
    assert [h.host for h in cluster.hosts] == ["a", "b"]
    assert cluster.hosts[0].metrics["throughput_samples_per_s"] == pytest.approx(350.5)
    assert cluster.metrics["throughput_samples_per_s"] == pytest.approx(1350.5)
    assert cluster.kpi_block() == (
        "#================================================\n"
        "#Key KPI\n"
        "#================================================\n"
        "*Throughput (samples/sec): 1350.500\n")
    assert cluster.to_dict()["key_kpi"] == {"metric": "Throughput", "value": 1350.5,
                                            "unit": "samples/sec"}


def test_host_percentiles_come_from_merged_raw_latencies(tmp_path: Path) -> None:
    fast, slow = [1.0] * 100, [10.0] * 100
    write_host(tmp_path, "h", [{"latencies": fast, "mode": "latency"},
                               {"latencies": slow, "mode": "latency"}])
    host = kpi.rollup([tmp_path]).hosts[0]
    averaged_p99 = (np.percentile(fast, 99) + np.percentile(slow, 99)) / 2
    assert averaged_p99 == pytest.approx(5.5)
    assert host.metrics["latency_ms"]["p99"] == pytest.approx(10.0)  # merged: half are slow
    assert host.metrics["latency_ms"]["p99"] != pytest.approx(averaged_p99)
    assert host.metrics["latency_ms"]["mean"] == pytest.approx(5.5)
    assert host.metrics["latency_source"] == "merged" and host.metrics["latency_count"] == 200


def test_latency_and_accuracy_key_kpi(tmp_path: Path) -> None:
    write_host(tmp_path / "lat", "h", [{"latencies": [1.0, 3.0], "mode": "latency",
                                        "throughput": 50.0}])
    lines = kpi.rollup([tmp_path / "lat"]).kpi_lines()
    assert lines[3] == "*Latency (ms): 2.000"
    assert "Latency p50 (ms): 2.000" in lines and "Throughput (samples/sec): 50.000" in lines
    assert any(line.startswith("Latency p99 (ms): ") for line in lines)
    write_host(tmp_path / "acc", "h", [{"auc": 0.80, "mode": "accuracy"},
                                       {"auc": 0.70, "mode": "accuracy"}])
    assert kpi.rollup([tmp_path / "acc"]).kpi_lines()[3] == "*Accuracy (%): 75.000"


def test_failed_instance_is_kept_out_of_the_sum(tmp_path: Path) -> None:
    write_host(tmp_path, "h", [{"throughput": 100.0}, None], exit_codes=[0, -9])
    host = kpi.rollup([tmp_path]).hosts[0]
    assert host.status == "failed"
    assert [i.status for i in host.instances] == ["ok", "failed"]
    assert host.metrics["throughput_samples_per_s"] == pytest.approx(100.0)
    assert host.notes == ["1 of 2 instances failed"]


def test_results_jsonl_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_host(tmp_path / "r" / "a", "a", [{"throughput": 10.0}, {"throughput": 20.0}])
    write_host(tmp_path / "r" / "b", "b", [{"throughput": 30.0}])
    out = tmp_path / "samples.jsonl"
    assert main(["kpi", str(tmp_path / "r" / "a"), str(tmp_path / "r" / "b"),
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "*Throughput (samples/sec): 60.000" in printed and "instance" in printed
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    throughput = [s for s in samples if s["metric"] == "throughput"]
    levels = [(s["metadata"]["level"], s["metadata"]["host"]) for s in throughput]
    assert levels == [("instance", "a"), ("instance", "a"), ("host", "a"), ("instance", "b"),
                      ("host", "b"), ("cluster", "all")]
    assert throughput[-1]["value"] == pytest.approx(60.0)
    assert throughput[-1]["unit"] == "samples/sec"
    meta = throughput[0]["metadata"]
    assert meta["precision"] == "avx_fp32" and meta["function"] == "inference"
    assert meta["mode"] == "throughput" and meta["cores"] == 1 and "output" not in meta
    assert all(isinstance(s["timestamp"], float) for s in samples)
    # Default location: the common parent of the dirs.
    assert main(["kpi", str(tmp_path / "r" / "a"), str(tmp_path / "r" / "b"), "--no-table"]) == 0
    assert (tmp_path / "r" / "results.jsonl").is_file()


def test_single_run_dir_and_duplicate_hostnames(tmp_path: Path) -> None:
    write_result(tmp_path / "one", throughput=5.0)
    assert kpi.rollup([tmp_path / "one"]).metrics["throughput_samples_per_s"] == 5.0
    write_host(tmp_path / "c" / "h1", "same", [{"throughput": 1.0}])
    write_host(tmp_path / "c" / "h2", "same", [{"throughput": 2.0}])
    assert [h.host for h in kpi.rollup([tmp_path / "c"]).hosts] == ["same:h1", "same:h2"]


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no results in"):
        kpi.rollup([tmp_path / "empty"])
    assert main(["kpi", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlrm-bench: error: no results in") and err.count("\n") == 1
    write_host(tmp_path / "m" / "a", "a", [{"mode": "throughput"}])
    write_host(tmp_path / "m" / "b", "b", [{"mode": "latency"}])
    with pytest.raises(UserError, match="different kinds"):
        kpi.rollup([tmp_path / "m"])


def test_repeats_are_rolled_up_each_and_combined(tmp_path: Path) -> None:
    """results/<id>/<host>/repeat-N/: each repeat a cluster figure; the run's is their mean."""
    run = tmp_path / "run"
    for rep, (a, b) in enumerate([(100.0, 300.0), (110.0, 290.0), (120.0, 340.0)]):
        write_host(run / "a" / f"repeat-{rep}", "a", [{"throughput": a, "latencies": [1.0, 3.0]}])
        write_host(run / "b" / f"repeat-{rep}", "b", [{"throughput": b, "latencies": [2.0]}])
    cluster = kpi.rollup([run], expected_hosts=["a", "b"])
    assert [r.repeat for r in cluster.repeats] == [0, 1, 2]
    assert [r.metrics["throughput_samples_per_s"] for r in cluster.repeats] == [400.0, 400.0,
                                                                               460.0]
    assert cluster.metrics["throughput_samples_per_s"] == pytest.approx(420.0)
    assert cluster.metrics["throughput_repeats"] == [400.0, 400.0, 460.0]
    assert cluster.metrics["key_kpi_rsd"] == pytest.approx(np.std([400, 400, 460], ddof=1) / 420)
    assert not cluster.partial and [h.host for h in cluster.hosts] == ["a", "b"]
    host_a = cluster.hosts[0]
    assert host_a.metrics["throughput_samples_per_s"] == pytest.approx(110.0)
    assert [i.instance for i in host_a.instances] == ["0/r0", "0/r1", "0/r2"]
    # Latency from the merged raw latencies of every repeat (three times [1, 3] -> p50 = 2).
    assert host_a.metrics["latency_ms"]["p50"] == pytest.approx(2.0)
    block = cluster.kpi_block()
    assert "*Throughput (samples/sec): 420.000" in block
    assert "Repeats: 3" in block and "400.000, 400.000, 460.000" in block
    samples = cluster.samples()
    cluster_rows = [(s["metadata"].get("repeat"), s["value"]) for s in samples
                    if s["metric"] == "throughput" and s["metadata"]["level"] == "cluster"]
    assert cluster_rows == [(0, 400.0), (1, 400.0), (2, 460.0)]
    [run_row] = [s for s in samples if s["metric"] == "throughput"
                 and s["metadata"]["level"] == "run"]
    assert run_row["value"] == pytest.approx(420.0) and run_row["metadata"]["repeats"] == 3
    # One repeat alone is a plain rollup.
    single = kpi.rollup([run / "a" / "repeat-1"])
    assert single.repeats == [] and single.repeat == 1
    assert single.hosts[0].host == "a" and single.metrics["throughput_samples_per_s"] == 110.0


def test_a_host_lost_in_one_repeat_is_named(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_host(run / "a" / "repeat-0", "a", [{"throughput": 10.0}])
    write_host(run / "b" / "repeat-0", "b", [{"throughput": 20.0}])
    write_host(run / "a" / "repeat-1", "a", [{"throughput": 12.0}])
    cluster = kpi.rollup([run], expected_hosts=["a", "b"])
    assert cluster.partial and cluster.lost_hosts == ["b"]
    host_b = next(h for h in cluster.hosts if h.host == "b")
    assert host_b.status == "failed" and host_b.notes == ["no results in repeat(s) 1"]
    assert "partial: lost hosts: b" in cluster.kpi_block()
