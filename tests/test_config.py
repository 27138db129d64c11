"""Run parameters: the seed's env vars and defaults, test-case names, refusals."""

from __future__ import annotations

import pytest

from dlrm_bench.config import all_cases, parse_case, resolve
from dlrm_bench.errors import UserError


def test_seed_defaults_per_function_and_mode() -> None:
    assert resolve({}, env={}).batch_size == 1
    assert resolve({"mode": "latency"}, env={}).batch_size == 1
    acc = resolve({"mode": "accuracy"}, env={})
    assert (acc.batch_size, acc.steps, acc.warmup_steps) == (100, 2000, 0)
    train = resolve({"function": "training"}, env={})
    assert (train.batch_size, train.steps) == (1024, 200)
    cfg = resolve({}, env={})
    assert (cfg.precision, cfg.steps, cfg.warmup_steps, cfg.data_type) == (
        "avx_fp32", 200, 200, "synthetic")


def test_env_vars_fill_in_when_flags_are_absent() -> None:
    env = {"FUNCTION": "inference", "MODE": "latency", "PRECISION": "amx_int8",
           "BATCH_SIZE": "16", "STEPS": "330", "WARMUP_STEPS": "7", "ONEDNN_VERBOSE": "1"}
    cfg = resolve({}, env=env)
    assert (cfg.mode, cfg.precision, cfg.batch_size, cfg.steps, cfg.warmup_steps) == (
        "latency", "amx_int8", 16, 330, 7)
    assert cfg.onednn_verbose == 1
    # A flag wins over the env var.
    assert resolve({"steps": "5"}, env=env).steps == 5


def test_case_names_select_a_configuration() -> None:
    cfg = resolve({"case": "test_dlrm_pytorch_xeon_public_inference_throughput_amx_bfloat16_gated"},
                  env={})
    assert (cfg.function, cfg.mode, cfg.precision, cfg.case_type) == (
        "inference", "throughput", "amx_bfloat16", "gated")
    assert cfg.preset == "tiny" and cfg.steps < 200
    assert parse_case("training_accuracy_avx_fp32")["function"] == "training"
    cases = all_cases()
    assert "inference_latency_amx_int8_pkm" in cases
    assert not [c for c in cases if c.startswith("training") and "int8" in c]
    assert len(cases) == len(set(cases))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"precision": "amx_int9"}, "precision 'amx_int9' is not one of"),
        ({"mode": "fast"}, "mode 'fast' is not one of"),
        ({"function": "training", "precision": "amx_int8"}, "int8 training is not supported"),
        ({"function": "training", "mode": "latency"}, "latency mode is only valid for inference"),
        ({"batch_size": "0"}, "batch size must be > 0"),
        ({"batch_size": "-4"}, "batch size must be > 0"),
        ({"steps": "abc"}, "steps must be an integer"),
        ({"steps": "0"}, "steps must be > 0"),
        ({"warmup_steps": "-1"}, "warmup steps must be >= 0"),
        ({"case": "inference_fast_amx_int8"}, "unknown test case"),
        ({"data_type": "real"}, "data type real needs --data-dir"),
        ({"data_dir": "/nonexistent/dir"}, "data dir /nonexistent/dir does not exist"),
        ({"checkpoint": "/nonexistent.pt"}, "checkpoint /nonexistent.pt does not exist"),
    ],
)
def test_bad_parameters_are_refused(flags: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve(flags, env={})


def test_bad_env_var_is_refused_like_a_flag() -> None:
    with pytest.raises(UserError, match="batch size must be an integer, got 'lots'"):
        resolve({}, env={"BATCH_SIZE": "lots"})
