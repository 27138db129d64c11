"""The ipex backend: its refusals in the main venv and, where .venv-ipex exists, every precision.

The main venv has no intel-extension-for-pytorch: ``--backend ipex`` must fail in one line
naming ``make ipex-venv``, never fall back to native. With ``.venv-ipex`` (``make ipex-venv``),
each precision runs ``dlrm-bench run --backend ipex`` in accuracy mode on a small non-degenerate
model (``tiny`` with tables from U(-0.5, 0.5) and logits of std 1, probabilities ~0.1 .. 0.9)
and synthetic data, and tests/ipex_check.py compares its predictions with the fp32 model.

Tolerances on |p - p_fp32| per sample (max; mean), 2048 test samples; measured on a Sapphire
Rapids host in brackets:

- avx_fp32: 1e-5; 1e-6 (fp32 throughout; oneDNN's GEMM blocking order)    [1.1e-6; 2.5e-7]
- amx_bfloat32: 3e-2; 5e-3 (bf16 GEMM inputs, 8 mantissa bits, 8 layers)    [6.2e-3; 1.3e-3]
- amx_bfloat16: 3e-2; 5e-3 (bf16 tables and activations too)                [1.1e-2; 1.9e-3]
- avx_int8, amx_int8: 8e-2; 1.5e-2. IPEX also quantizes the tables (per table) and the
  interaction output (per tensor); calibrated on 8 batches of 256            [5.5e-2; 9.4e-3]

and the run's log loss within 10 x the mean tolerance of the native fp32 run's (p in 0.1 .. 0.9
bounds |d log p| by 10 |dp|).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from engine_helpers import REPO, assert_one_line_error, cli_env, dlrm, result_of, run_ok

from dlrm_bench import config
from dlrm_bench.backends.ipex_support import (
    IPEX_MISSING,
    IPEX_NO_TRAINING,
    apply_ipex_isa_environment,
    ipex_installed,
)
from dlrm_bench.cpu import PRECISIONS, REQUIRED_FLAGS, cpu_flags
from dlrm_bench.errors import UserError

IPEX_PYTHON = REPO / ".venv-ipex" / "bin" / "python"
TOLERANCE = {"avx_fp32": 1e-5, "amx_bfloat32": 3e-2, "amx_bfloat16": 3e-2,
             "avx_int8": 8e-2, "amx_int8": 8e-2}
MEAN_TOLERANCE = {"avx_fp32": 1e-6, "amx_bfloat32": 5e-3, "amx_bfloat16": 5e-3,
                  "avx_int8": 1.5e-2, "amx_int8": 1.5e-2}

needs_no_ipex = pytest.mark.skipif(ipex_installed(), reason="IPEX is installed in this venv")
needs_ipex_venv = pytest.mark.skipif(
    not IPEX_PYTHON.exists(), reason=".venv-ipex does not exist (make ipex-venv, ~7 GB)")


def _runnable(precision: str) -> bool:
    return set(REQUIRED_FLAGS[precision]) <= cpu_flags()


PARAMS = [pytest.param(p, marks=pytest.mark.skipif(not _runnable(p),
                                                   reason=f"host cannot run {p}"))
          for p in PRECISIONS]


# ---------------------------------------------------------------- without IPEX (the main venv)

@needs_no_ipex
def test_missing_ipex_is_one_line() -> None:
    proc = dlrm("run", "--backend", "ipex", "--preset", "tiny", "--steps", "1", timeout=120)
    assert_one_line_error(proc, IPEX_MISSING)
    assert "make ipex-venv" in proc.stderr and ".venv-ipex/bin/dlrm-bench" in proc.stderr


@needs_no_ipex
def test_missing_ipex_fails_launch_up_front() -> None:
    proc = dlrm("launch", "--dry-run", "--backend", "ipex", "--preset", "tiny", timeout=120)
    assert_one_line_error(proc, IPEX_MISSING)


@needs_no_ipex
def test_ipex_module_refuses_without_ipex() -> None:
    from dlrm_bench.backends import ipex
    from dlrm_bench.model import build_model
    from dlrm_bench.presets import get_preset

    with pytest.raises(UserError, match="make ipex-venv"):
        ipex.prepare(build_model(get_preset("tiny"), seed=0), "avx_fp32")


def test_ipex_training_is_refused() -> None:
    with pytest.raises(UserError) as exc:
        config.resolve({"backend": "ipex", "function": "training"}, env={})
    assert str(exc.value) == IPEX_NO_TRAINING


def test_native_is_unchanged_default() -> None:
    assert config.resolve({}, env={}).backend == "native"
    assert "ipex" in config.BACKENDS


def test_ipex_isa_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert apply_ipex_isa_environment("avx_int8") == {"ATEN_CPU_CAPABILITY": "avx512_vnni"}
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx512_vnni"
    apply_ipex_isa_environment("amx_int8")  # a leftover avx cap is removed for amx_*
    assert "ATEN_CPU_CAPABILITY" not in os.environ


def test_calibration_file_of_the_other_backend_is_refused(tmp_path: Path) -> None:
    from dlrm_bench.backends import ipex_model
    from dlrm_bench.presets import get_preset

    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"format": "dlrm-bench-int8-calibration", "version": 1}))
    with pytest.raises(UserError, match="native-backend calibration"):
        ipex_model.load_calibration(path, get_preset("tiny"))
    ipex_model.save_calibration({"x": 1}, get_preset("tiny"), path, "2.8.0")
    assert ipex_model.load_calibration(path, get_preset("tiny")) == {"x": 1}
    with pytest.raises(UserError, match="another model"):
        ipex_model.load_calibration(path, get_preset("terabyte-small"))


# ------------------------------------------------------------------- with .venv-ipex

@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A non-degenerate tiny checkpoint and synthetic data (train 4096, test 2048)."""
    from dlrm_bench.checkpoint import save_checkpoint
    from dlrm_bench.data.reader import open_split
    from dlrm_bench.data.synth import generate
    from dlrm_bench.model import build_model
    from dlrm_bench.presets import get_preset

    root = tmp_path_factory.mktemp("ipex")
    spec = get_preset("tiny")
    generate(root / "data", spec, 4096, 2048, seed=3, progress=False)
    model = build_model(spec, seed=0).eval()
    batch = next(open_split(root / "data", "train").batches(2048))
    with torch.no_grad():
        for bag in model.emb_l:
            bag.weight.uniform_(-0.5, 0.5)
        captured: list[torch.Tensor] = []
        last = model.top_l[-2]
        hook = last.register_forward_hook(lambda _m, _a, out: captured.append(out))
        model(batch.dense, batch.offsets, batch.indices)
        hook.remove()
        k = 1.0 / float(captured[0].std())
        last.weight.mul_(k)
        last.bias.mul_(k).sub_(float(captured[0].mean()) * k)
    save_checkpoint(model, root / "model.pt", epoch=0)
    return {"root": root, "checkpoint": root / "model.pt", "data": root / "data"}


@pytest.fixture(scope="module")
def native_fp32(workload: dict[str, Path]) -> dict:
    out = workload["root"] / "native-fp32"
    run_ok("run", "--precision", "avx_fp32", "--mode", "accuracy", "--checkpoint",
           str(workload["checkpoint"]), "--data-dir", str(workload["data"]), "--batch-size", "256",
           "--threads", "1", "--output", str(out))
    return result_of(out)


@needs_ipex_venv
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("precision", PARAMS)
def test_ipex_precision_matches_fp32(precision: str, workload: dict[str, Path],
                                     native_fp32: dict) -> None:
    out = workload["root"] / f"ipex-{precision}"
    proc = subprocess.run(
        [str(IPEX_PYTHON), str(REPO / "tests" / "ipex_check.py"), precision,
         str(workload["checkpoint"]), str(workload["data"]), str(out)],
        capture_output=True, text=True, env=cli_env(), timeout=600, cwd=REPO)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    result = result_of(out)
    assert result["config"]["backend"] == "ipex"
    assert result["versions"]["backend"] == "ipex"
    assert result["versions"]["intel_extension_for_pytorch"].startswith("2.8")
    assert result["versions"]["torch"].startswith("2.8")
    check = json.loads((out / "check.json").read_text())
    assert check["samples"] == 2048 and check["traced_batch"] == 256
    assert check["interaction_max_abs"] < 1e-4  # IPEX's interaction = DotInteraction's order
    assert check["max_abs"] <= TOLERANCE[precision], check
    assert check["mean_abs"] <= MEAN_TOLERANCE[precision], check
    assert check["batch_of_one_max_abs"] <= TOLERANCE[precision], check
    if precision != "avx_fp32":
        assert check["max_abs"] > 0, "a reduced precision gave bit-identical results"
    ref, got = native_fp32["metrics"], result["metrics"]
    assert abs(got["log_loss"] - ref["log_loss"]) <= 10 * MEAN_TOLERANCE[precision]
    assert got["evaluated_samples"] == ref["evaluated_samples"] == 2048


@needs_ipex_venv
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not _runnable("amx_int8"), reason="host cannot run amx_int8")
def test_ipex_weight_sharing_launch(tmp_path: Path) -> None:
    """Two single-core instances share one prepared-weights file (int8: with the calibration;
    one --calibration-file for both, or each instance's default output/calibration.json would
    give each its own weights identity)."""
    proc = subprocess.run(
        [str(IPEX_PYTHON), "-m", "dlrm_bench", "launch", "--instances", "2",
         "--cores-per-instance", "1", "--weight-sharing", "--output", str(tmp_path / "run"),
         "--backend", "ipex", "--preset", "tiny", "--precision", "amx_int8", "--batch-size", "16",
         "--steps", "20", "--warmup-steps", "2", "--calibration-file",
         str(tmp_path / "calibration.json")],
        capture_output=True, text=True, env=cli_env(), timeout=600, cwd=REPO)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    host = json.loads((tmp_path / "run" / "host_result.json").read_text())
    assert host["status"] == "ok" and len(host["instances"]) == 2
    caches = list((tmp_path / "run").glob("weights-node*/prepared-*.pt"))
    assert len(caches) == 1
    created = [result_of(tmp_path / "run" / f"instance-{k}")["model"]["created_here"]
               for k in range(2)]
    assert sorted(created) == [False, True]

