"""dlrm-bench compare: deltas, spread from repeats / instances / noise floor, real runs.

``write_run`` (hand-made run directories with realistic figures and full result files) is also
used by tests/test_report.py and tests/test_orchestrate.py.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dlrm_bench import compare
from dlrm_bench.cli import main
from dlrm_bench.cpu import REQUIRED_FLAGS, cpu_flags

HOST_FACTS = {"cpu_model": "Intel(R) Xeon(R) Platinum 8480+", "sockets": 2,
              "isa_flags": ["amx_bf16", "amx_int8", "amx_tile", "avx512_vnni", "avx512f"],
              "numa_nodes": {"node0": "0-55", "node1": "56-111"}, "logical_cpus": 224,
              "memory_bytes": 512 * 2**30, "kernel": "6.8.0", "governor": "performance",
              "hugepages": {"2048kB": {"nr": 2048, "free": 1024}}, "thp": "never"}
VERSIONS = {"python": "3.11.7", "torch": "2.13.0+cpu", "onednn": "3.12.0", "backend": "native",
            "dlrm_bench": "0.1.0"}


def write_instance(inst_dir: Path, host: str, *, throughput: float, precision: str,
                   mode: str = "throughput", auc: float | None = None,
                   latency_ms: float | None = 2.0, rng: random.Random) -> None:
    metrics: dict[str, Any] = {"samples": 2000, "elapsed_s": 2000 / throughput,
                               "throughput_samples_per_s": throughput}
    if latency_ms is not None:
        raw = sorted(rng.lognormvariate(0, 0.25) * latency_ms for _ in range(200))
        pick = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p99_9": 0.999}
        metrics["latency_ms"] = {"mean": sum(raw) / len(raw),
                                 **{k: raw[min(len(raw) - 1, int(q * len(raw)))]
                                    for k, q in pick.items()}}
        metrics["latencies_ms"] = raw
    if auc is not None:
        metrics.update(auc=auc, accuracy=0.81, log_loss=0.44)
    config = {"function": "inference", "mode": mode, "precision": precision,
              "data_type": "synthetic", "batch_size": 256, "steps": 200, "warmup_steps": 20,
              "preset": "tiny", "threads": 56, "output": str(inst_dir)}
    result = {"schema_version": 1, "status": "ok", "config": config,
              "host": {"hostname": host, **HOST_FACTS}, "versions": VERSIONS,
              "metrics": metrics, "kpi": {"metric": "Throughput", "value": throughput},
              "timing": {"timed_start_unix": 1.7e9, "timed_end_unix": 1.7e9 + 2}}
    inst_dir.mkdir(parents=True, exist_ok=True)
    (inst_dir / "result.json").write_text(json.dumps(result))


def write_run(root: Path, *, hosts: tuple[str, ...] = ("spr-01", "spr-02"), instances: int = 2,
              throughput: float = 10_000.0, spread: float = 0.02, precision: str = "avx_fp32",
              mode: str = "throughput", auc: float | None = None, seed: int = 0,
              latency_ms: float | None = 2.0, layout: str = "{host}") -> Path:
    """results/<run_id>/<host>/{host_result.json, instance-K/result.json} with figures drawn
    around ``throughput`` per instance (relative sd ``spread``); ``layout``: the host dir below
    ``root`` (e.g. "{host}/repeat-0")."""
    rng = random.Random(seed)
    for host in hosts:
        hdir = root / layout.format(host=host)
        entries = []
        for k in range(instances):
            value = throughput * (1 + rng.gauss(0, spread))
            write_instance(hdir / f"instance-{k}", host, throughput=value,
                           precision=precision, mode=mode, rng=rng, latency_ms=latency_ms,
                           auc=None if auc is None else auc + rng.gauss(0, 0.0005))
            entries.append({"id": k, "cpus": list(range(56 * k, 56 * k + 56)),
                            "cpulist": f"{56 * k}-{56 * k + 55}", "nodelist": str(k),
                            "exit_code": 0, "state": "ok"})
        (hdir / "host_result.json").write_text(json.dumps(
            {"schema_version": 1, "kind": "host_result", "status": "ok", "host": host,
             "pinning": {"method": "numactl"}, "allocator": {"name": "jemalloc"},
             "instances": entries}))
    return root


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["compare", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(name))


def test_same_configuration_is_no_significant_change(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path / "a", seed=1)
    b = write_run(tmp_path / "b", seed=2)
    code, out, _ = run_cli(capsys, str(a), str(b))
    assert code == 0
    assert out.strip().splitlines()[-1].startswith("no significant change")
    assert "within noise" in _row(out, "cluster throughput")
    assert "spr-02 throughput" in out  # per-host rows
    assert "config differs" not in out


def test_different_precision_is_significant(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path / "a", seed=1)
    b = write_run(tmp_path / "b", seed=2, throughput=25_000.0, precision="amx_bfloat16",
                  latency_ms=0.8)
    code, out, _ = run_cli(capsys, str(a), str(b))
    assert code == 0
    assert "config differs: precision: avx_fp32 -> amx_bfloat16" in out
    row = _row(out, "cluster throughput")
    assert "significant, better" in row and "+1" in row  # ~ +150 %
    assert "significant, better" in _row(out, "cluster latency p50")  # lower latency
    assert "no significant change" not in out
    code, out, _ = run_cli(capsys, str(b), str(a), "--fail-on-regression")
    assert code == 1 and "significant, worse" in _row(out, "cluster throughput")


def _repeats(root: Path, values: list[float], layout: str) -> Path:
    for r, value in enumerate(values):
        write_run(root, hosts=("localhost",), instances=1, throughput=value, spread=0.0,
                  seed=r, layout=layout.replace("R", str(r)))
    return root


def test_repeats_set_the_spread(tmp_path: Path) -> None:
    # both layouts: results/<id>/<host>/repeat-R/ and results/<id>/repeat-R/<host>/
    noisy_a = _repeats(tmp_path / "na", [9_500.0, 10_000.0, 10_500.0], "{host}/repeat-R")
    noisy_b = _repeats(tmp_path / "nb", [9_900.0, 10_400.0, 10_900.0], "{host}/repeat-R")
    tight_a = _repeats(tmp_path / "ta", [9_990.0, 10_000.0, 10_010.0], "repeat-R/{host}")
    tight_b = _repeats(tmp_path / "tb", [10_390.0, 10_400.0, 10_410.0], "repeat-R/{host}")
    run = compare.load_run(noisy_a)
    assert len(run.repeats) == 3
    est = compare.estimate(run, "cluster", "throughput")
    assert est.source == "repeats" and est.n == 3 and est.value == pytest.approx(10_000.0)
    noisy = compare.compare_runs(run, compare.load_run(noisy_b))
    tight = compare.compare_runs(compare.load_run(tight_a), compare.load_run(tight_b))
    c_noisy = next(c for c in noisy.comparisons if c.metric == "throughput")
    c_tight = next(c for c in tight.comparisons if c.metric == "throughput")
    assert c_noisy.rel == pytest.approx(0.04) and c_tight.rel == pytest.approx(0.04)
    assert not c_noisy.significant and c_tight.significant


def test_single_values_fall_back_to_the_noise_floor(tmp_path: Path) -> None:
    a = compare.load_run(write_run(tmp_path / "a", hosts=("h",), instances=1, spread=0.0))
    small = compare.load_run(write_run(tmp_path / "b", hosts=("h",), instances=1, spread=0.0,
                                       throughput=10_200.0))
    large = compare.load_run(write_run(tmp_path / "c", hosts=("h",), instances=1, spread=0.0,
                                       throughput=10_500.0))
    assert compare.estimate(a, "cluster", "throughput").source == "none"
    thr = [next(c for c in compare.compare_runs(a, x).comparisons if c.metric == "throughput")
           for x in (small, large)]
    assert [c.significant for c in thr] == [False, True]
    assert thr[0].threshold == pytest.approx(300.0)  # 3 % of A
    loose = compare.compare_runs(a, large, noise_floor=0.10)
    assert not loose.significant


def test_instance_spread_widens_the_threshold(tmp_path: Path) -> None:
    a = compare.load_run(write_run(tmp_path / "a", instances=4, spread=0.15, seed=3))
    est = compare.estimate(a, "cluster", "throughput")
    assert est.source == "instances" and est.n == 8
    assert 0.02 < est.rel_se < 0.12  # ~ 0.15 / sqrt(8)


def test_results_jsonl_input_matches_the_directory(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path / "a", seed=1, auc=0.80, mode="accuracy")
    b = write_run(tmp_path / "b", seed=2, auc=0.70, mode="accuracy")
    assert main(["kpi", str(a), "--no-table"]) == 0 and main(["kpi", str(b), "--no-table"]) == 0
    capsys.readouterr()
    from_dirs = compare.compare_runs(compare.load_run(a), compare.load_run(b))
    from_jsonl = compare.compare_runs(compare.load_run(a / "results.jsonl"),
                                      compare.load_run(b / "results.jsonl"))
    key = {(c.scope, c.metric): (c.a.value, c.b.value, c.significant)
           for c in from_dirs.comparisons}
    assert key == {(c.scope, c.metric): (c.a.value, c.b.value, c.significant)
                   for c in from_jsonl.comparisons}
    auc = next(c for c in from_jsonl.comparisons if c.metric == "auc")
    assert auc.significant and auc.better is False
    assert compare.estimate(compare.load_run(a / "results.jsonl"), "cluster", "auc").n == 4
    code, out, _ = run_cli(capsys, str(a / "results.jsonl"), str(b), "--json")
    data = json.loads(out)
    assert code == 0 and data["significant"] is True
    assert {c["metric"] for c in data["comparisons"]} >= {"throughput", "auc"}


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "floor"])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      case: str) -> None:
    good = write_run(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.jsonl").write_text("not json\n")
    argv = {"missing": [str(tmp_path / "nope"), str(good)],
            "empty": [str(good), str(tmp_path / "empty")],
            "garbage": [str(tmp_path / "garbage.jsonl"), str(good)],
            "floor": [str(good), str(good), "--noise-floor", "150"]}[case]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("dlrm-bench: error: ")


def _launch(out: Path, precision: str) -> None:
    cmd = [sys.executable, "-m", "dlrm_bench", "launch", "--output", str(out), "--host-label",
           "localhost", "--preset", "tiny", "--precision", precision, "--batch-size", "256",
           "--steps", "30", "--warmup-steps", "5", "--cores-per-instance", "1",
           "--instances", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_real_runs_of_different_precisions(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Two real tiny launches: fp32 without AMX against bf16 on AMX (about 4x on an AMX Xeon),
    or against avx_int8 on a CPU without AMX (VNNI int8)."""
    faster = "amx_bfloat16" if set(REQUIRED_FLAGS["amx_bfloat16"]) <= cpu_flags() else "avx_int8"
    _launch(tmp_path / "fp32" / "localhost", "avx_fp32")
    _launch(tmp_path / "fast" / "localhost", faster)
    code, out, _ = run_cli(capsys, str(tmp_path / "fp32"), str(tmp_path / "fast"))
    assert code == 0, out
    assert f"config differs: precision: avx_fp32 -> {faster}" in out
    row = _row(out, "cluster throughput")
    assert "significant, better" in row and "[instances/instances]" in row
