"""Closing the loop: train, save, evaluate at every precision; foreign files reproduce AUC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import LOW_PRECISION, assert_one_line_error, dlrm, result_of, run_ok, runnable
from reference_model import ReferenceStyleDLRM
from sklearn.metrics import roc_auc_score

from dlrm_bench.config import PRECISIONS


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train")
    run_ok("run", "--function", "training", "--mode", "accuracy", "--precision", LOW_PRECISION,
           "--preset", "tiny", "--batch-size", "256", "--steps", "200", "--output", str(out))
    return out


def test_training_reaches_auc_and_saves_a_checkpoint(trained: Path) -> None:
    """Trained at amx_bfloat16 where the CPU has AMX, else at avx_fp32."""
    result = result_of(trained)
    assert result["metrics"]["auc"] >= 0.70
    assert (trained / "checkpoint.pt").is_file()
    saved = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert "emb_l.25.weight" in saved["state_dict"] and saved["test_auc"] >= 0.70


def test_inference_accuracy_agrees_across_precisions(trained: Path, tmp_path: Path) -> None:
    """Every precision this CPU runs gives the fp32 AUC; the others are refused in one line."""
    aucs = {}
    for precision in PRECISIONS:
        out = tmp_path / precision
        if not runnable(precision):
            proc = dlrm("run", "--mode", "accuracy", "--precision", precision, "--preset", "tiny")
            assert_one_line_error(proc, f"precision {precision} needs the CPU flags")
            continue
        run_ok("run", "--function", "inference", "--mode", "accuracy", "--precision", precision,
               "--checkpoint", str(trained / "checkpoint.pt"), "--batch-size", "500",
               "--steps", "200", "--output", str(out))
        aucs[precision] = result_of(out)["metrics"]["auc"]
    assert aucs["avx_fp32"] >= 0.70
    for precision, auc in aucs.items():
        tolerance = 0.01 if precision.endswith("int8") else 0.005
        assert abs(auc - aucs["avx_fp32"]) <= tolerance, aucs


def _write_reference_files(directory: Path, tables: list[int], records: int) -> None:
    """The MLPerf binary layout written with plain numpy, as another tool would."""
    rng = np.random.default_rng(7)
    dense = rng.integers(-2, 5000, size=(records, 13), dtype=np.int64)
    cats = np.stack([rng.integers(0, n, size=records) for n in tables], axis=1)
    labels = (rng.random(records) < 0.25).astype(np.int64)
    rows = np.concatenate([labels[:, None], dense, cats], axis=1).astype("<i4")
    for split in ("train", "test"):
        rows.tofile(directory / f"terabyte_processed_{split}.bin")
    np.savez(directory / "day_fea_count.npz", counts=np.asarray(tables, dtype=np.int64))


def test_foreign_checkpoint_and_data_reproduce_plain_pytorch_auc(tmp_path: Path) -> None:
    tables = [int(n) for n in np.random.default_rng(3).integers(3, 400, size=26)]
    torch.manual_seed(11)
    ref = ReferenceStyleDLRM(tables, 16, [13, 64, 16], [16 + 27 * 26 // 2, 64, 1]).eval()
    ckpt = tmp_path / "model.pt"
    torch.save({"state_dict": ref.state_dict(), "epoch": 0, "test_auc": 0.5}, ckpt)
    data = tmp_path / "data"
    data.mkdir()
    _write_reference_files(data, tables, 3000)

    out = tmp_path / "out"
    run_ok("run", "--function", "inference", "--mode", "accuracy", "--precision", "avx_fp32",
           "--checkpoint", str(ckpt), "--data-dir", str(data), "--batch-size", "128",
           "--output", str(out))
    measured = result_of(out)["metrics"]

    raw = np.fromfile(data / "terabyte_processed_test.bin", dtype="<i4").reshape(-1, 40)
    dense = torch.from_numpy(np.log1p(np.maximum(raw[:, 1:14], 0)).astype(np.float32))
    idx = torch.from_numpy(raw[:, 14:].T.astype(np.int64))
    offsets = torch.arange(len(raw)).expand(26, len(raw))
    with torch.no_grad():
        probs = ref(dense, offsets, idx).reshape(-1).numpy()
    expected = roc_auc_score(raw[:, 0], probs)
    assert measured["evaluated_samples"] == len(raw)
    assert abs(measured["auc"] - expected) <= 1e-4


def test_checkpoint_and_data_that_do_not_match_are_refused(tmp_path: Path) -> None:
    tables = [5] * 26
    ref = ReferenceStyleDLRM(tables, 16, [13, 16], [16 + 351, 1])
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "m.pt")
    data = tmp_path / "d"
    data.mkdir()
    _write_reference_files(data, [50] * 26, 100)
    proc = dlrm("run", "--mode", "accuracy", "--checkpoint", str(tmp_path / "m.pt"),
                "--data-dir", str(data))
    assert_one_line_error(proc, "checkpoint and data do not match")
