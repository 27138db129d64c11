"""Checkpoints in the tb00_40M.pt layout: architecture inference, fidelity, refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference_model import ReferenceStyleDLRM

from dlrm_bench import load_model
from dlrm_bench.checkpoint import load_checkpoint_model, save_checkpoint, spec_from_state_dict
from dlrm_bench.errors import UserError


def _reference(tables: list[int], dim: int = 16) -> ReferenceStyleDLRM:
    n = len(tables) + 1
    width = dim + n * (n - 1) // 2
    torch.manual_seed(1)
    return ReferenceStyleDLRM(tables, dim, [13, 32, dim], [width, 64, 32, 1]).eval()


def _inputs(tables: list[int], batch: int = 32):
    dense = torch.rand(batch, 13)
    indices = torch.stack([torch.randint(0, n, (batch,)) for n in tables])
    return dense, torch.arange(batch).expand(len(tables), batch), indices


@pytest.mark.parametrize("tables", [[7, 3, 50], [1000, 2, 9, 31, 4, 4, 12]])
def test_plain_torch_save_loads_with_inferred_architecture(tmp_path: Path, tables) -> None:
    ref = _reference(tables)
    path = tmp_path / "ref.pt"
    torch.save({"state_dict": ref.state_dict(), "epoch": 3, "test_auc": 0.8}, path)
    model = load_checkpoint_model(path)
    assert model.spec.table_sizes == tuple(tables)
    assert model.spec.embedding_dim == 16
    assert model.spec.bottom_mlp == (13, 32, 16)
    assert model.spec.top_mlp == (64, 32, 1)
    dense, offsets, indices = _inputs(tables)
    with torch.no_grad():
        torch.testing.assert_close(model(dense, offsets, indices), ref(dense, offsets, indices),
                                   rtol=0, atol=1e-6)


def test_public_loader_and_round_trip(tmp_path: Path) -> None:
    model = load_model(preset="tiny", seed=5)
    path = save_checkpoint(model, tmp_path / "ck.pt", epoch=0, nbatches=10)
    again = load_model(checkpoint=str(path))
    dense, offsets, indices = _inputs(list(model.spec.table_sizes))
    with torch.no_grad():
        assert torch.equal(model(dense, offsets, indices), again(dense, offsets, indices))
    raw = torch.load(path, weights_only=True)
    assert raw["nbatches"] == 10 and "emb_l.25.weight" in raw["state_dict"]


def test_tables_are_memory_mapped_not_copied(tmp_path: Path) -> None:
    tables = [200_000, 3]
    ref = _reference(tables, dim=64)
    path = tmp_path / "big.pt"
    torch.save({"state_dict": ref.state_dict()}, path)
    script = (
        "import resource, sys\n"
        "from dlrm_bench.checkpoint import load_checkpoint_model\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"m = load_checkpoint_model({str(path)!r})\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) * 1024)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, check=True)
    table_bytes = 200_000 * 64 * 4
    # Loading maps the file: the peak resident set grows by far less than one table copy.
    assert int(out.stdout.strip()) < table_bytes / 2


def _saved(tmp_path: Path, mutate) -> Path:
    sd = _reference([7, 3, 50]).state_dict()
    mutate(sd)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": sd}, path)
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda sd: sd.pop("emb_l.1.weight"), "missing key emb_l.1.weight"),
        (lambda sd: sd.pop("bot_l.2.bias"), "missing key bot_l.2.bias"),
        (lambda sd: sd.pop("top_l.0.weight"), "missing key top_l.0.weight"),
        (lambda sd: sd.__setitem__("top_l.2.weight", torch.zeros(32, 63)), "top_l.2.weight has 63"),
        (lambda sd: sd.__setitem__("emb_l.0.weight", torch.zeros(7, 8)), "one common width"),
    ],
)
def test_broken_checkpoints_are_refused_with_the_key(tmp_path: Path, mutate, message) -> None:
    with pytest.raises(UserError, match=message):
        load_checkpoint_model(_saved(tmp_path, mutate))


def test_checkpoint_errors_through_the_cli_are_one_line(tmp_path: Path) -> None:
    path = _saved(tmp_path, lambda sd: sd.pop("emb_l.2.weight"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "dlrm_bench", "run", "--checkpoint", str(path), "--steps", "1"],
        capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "missing key emb_l.2.weight" in proc.stderr
    assert "Traceback" not in proc.stderr


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _reference([3, 4]).state_dict(), "x": _Payload(str(marker))}, path)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really a zip"])
def test_empty_or_truncated_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "t.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"checkpoint .* (is empty|cannot be read)"):
        load_checkpoint_model(path)


def test_spec_inference_rejects_a_bottom_mlp_that_does_not_reach_the_table_width() -> None:
    sd = _reference([5, 6]).state_dict()
    sd["bot_l.2.weight"] = torch.zeros(8, 32)
    sd["bot_l.2.bias"] = torch.zeros(8)
    with pytest.raises(UserError, match="bot_l ends at width 8"):
        spec_from_state_dict(sd)
