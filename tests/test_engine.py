"""The single-instance engine: every function x mode x precision at tiny, results, bad inputs."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from engine_helpers import INT8, assert_one_line_error, dlrm, result_of, run_ok, runnable

from dlrm_bench.backends import fused
from dlrm_bench.config import MODES, PRECISIONS, TRAINING_PRECISIONS
from dlrm_bench.results import load_schema

jsonschema = pytest.importorskip("jsonschema")

TRAINING_MODES = ("throughput", "accuracy")
COMBOS = [("inference", m, p) for m, p in itertools.product(MODES, PRECISIONS)] + [
    ("training", m, p) for m, p in itertools.product(TRAINING_MODES, TRAINING_PRECISIONS)
]


@pytest.mark.parametrize(("function", "mode", "precision"), COMBOS,
                         ids=["_".join(c) for c in COMBOS])
def test_every_combination_runs_and_validates(tmp_path: Path, function, mode, precision) -> None:
    out = tmp_path / "out"
    batch = "64" if function == "training" else "8"
    steps = "6" if function == "training" else "12"
    args = ("run", "--function", function, "--mode", mode, "--precision", precision,
            "--preset", "tiny", "--batch-size", batch, "--steps", steps,
            "--warmup-steps", "2", "--output", str(out))
    if not runnable(precision):  # an AVX-512-only host: refused loudly, nothing written
        assert_one_line_error(dlrm(*args), f"precision {precision} needs the CPU flags")
        assert not (out / "result.json").exists()
        return
    proc = run_ok(*args)
    result = result_of(out)
    jsonschema.validate(result, load_schema())
    metrics = result["metrics"]
    assert result["config"]["precision"] == precision
    assert metrics["throughput_samples_per_s"] > 0
    assert f"PRECISION: {precision}" in (out / "run.log").read_text()
    assert "Throughput: " in proc.stdout
    if mode == "latency":
        lat = metrics["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"]
        assert len(metrics["latencies_ms"]) == int(steps)
        assert result["kpi"]["metric"] == "Latency"
    if mode == "accuracy":
        assert 0.0 <= metrics["auc"] <= 1.0
        assert result["kpi"]["metric"] == "Accuracy"
        assert "Accuracy: " in proc.stdout
    if function == "training" and mode == "accuracy":
        assert (out / "checkpoint.pt").is_file()
    if function == "inference":  # which interaction ran (fused kernel, or why not) is recorded
        assert result["model"]["kernels"]["interaction"]
        if precision.startswith("avx_") and fused.unavailable_reason() is None:
            assert result["model"]["kernels"]["interaction"].startswith("fused C kernel")


def test_seed_env_vars_drive_a_run(tmp_path: Path) -> None:
    out = tmp_path / "env"
    run_ok("run", "--output", str(out), FUNCTION="inference", MODE="latency",
           PRECISION=INT8, BATCH_SIZE="4", STEPS="9", WARMUP_STEPS="1")
    cfg = result_of(out)["config"]
    assert (cfg["mode"], cfg["precision"], cfg["batch_size"], cfg["steps"]) == (
        "latency", INT8, 4, 9)


def test_pkm_case_records_telemetry(tmp_path: Path) -> None:
    out = tmp_path / "pkm"
    run_ok("run", "--case", "inference_throughput_avx_fp32_pkm", "--batch-size", "64",
           "--steps", "400", "--warmup-steps", "2", "--output", str(out))
    telemetry = result_of(out)["telemetry"]
    assert telemetry["samples"], "no telemetry sample"
    first = telemetry["samples"][0]
    assert first["cpu_utilisation_pct"] and "MemAvailable" in first["memory_kB"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--precision", "amx_int9"], {}, "precision 'amx_int9' is not one of"),
        (["--mode", "fastest"], {}, "mode 'fastest' is not one of"),
        (["--function", "training", "--precision", "amx_int8"], {}, "int8 training"),
        (["--precision", "amx_bfloat16"], {"DLRM_BENCH_CPU_FLAGS": "avx512f avx512_vnni"},
         "this host lacks: amx_tile"),
        (["--batch-size", "0"], {}, "batch size must be > 0"),
        (["--steps", "-3"], {}, "steps must be > 0"),
        (["--preset", "gigantic"], {}, "unknown preset 'gigantic'"),
    ],
)
def test_bad_inputs_give_one_line(args, env, message) -> None:
    assert_one_line_error(dlrm("run", *args, **env), message)


def test_data_dir_without_files(tmp_path: Path) -> None:
    assert_one_line_error(dlrm("run", "--data-dir", str(tmp_path)), "not found")
