"""``dlrm-bench data synth|preprocess|info`` and their one-line errors."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlrm_bench.cli import main
from dlrm_bench.data.format import COUNTS_FILE, split_path, write_counts
from dlrm_bench.data.reader import read_table_sizes
from dlrm_bench.presets import get_preset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "synth"
    assert main(["data", "synth", "--out", str(out), "--preset", "tiny", "--train-samples",
                 "3000", "--test-samples", "400", "--seed", "3", "--raw"]) == 0
    return out


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("dlrm-bench: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_synth_writes_a_complete_data_dir(synth_dir, capsys):
    assert split_path(synth_dir, "train").stat().st_size == 3000 * 160
    assert read_table_sizes(synth_dir) == get_preset("tiny").table_sizes
    assert sorted(p.name for p in (synth_dir / "raw").iterdir()) == ["day_0", "day_1"]


def test_info_reports_records_and_integrity(synth_dir, capsys):
    assert main(["data", "info", str(synth_dir)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert "3,000" in rows["train"] and "480,000" in rows["train"] and "400" in rows["test"]
    assert "integrity: ok" in out


def test_preprocess_cli_round_trip(synth_dir, tmp_path, capsys):
    raw = sorted(str(p) for p in (synth_dir / "raw").iterdir())
    out = tmp_path / "pp"
    assert main(["data", "preprocess", "--out", str(out), "--max-ind-range", "1000000",
                 "--workers", "1", *raw]) == 0
    printed = capsys.readouterr().out
    assert "train: 3000 records" in printed and "test: 400 records" in printed
    assert main(["data", "info", str(out)]) == 0
    train = np.fromfile(split_path(out, "train"), dtype="<i4").reshape(-1, 40)
    source = np.fromfile(split_path(synth_dir, "train"), dtype="<i4").reshape(-1, 40)
    assert np.array_equal(train[:, :14], source[:, :14])


def test_info_fails_on_ids_beyond_counts(synth_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "test"):
        split_path(bad, split).write_bytes(split_path(synth_dir, split).read_bytes())
    write_counts(bad, [2] * 26)
    assert main(["data", "info", str(bad)]) == 1
    captured = capsys.readouterr()
    assert "integrity check failed" in captured.err and "ids >= table size" in captured.err


def test_unknown_preset(tmp_path, capsys):
    _one_line_error(capsys, ["data", "synth", "--out", str(tmp_path), "--preset", "huge"],
                    "unknown preset 'huge'")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda d: split_path(d, "test").write_bytes(split_path(d, "test").read_bytes()[:-7]),
         "not a multiple of the 160-byte record"),
        (lambda d: split_path(d, "train").write_bytes(b""), "file is empty"),
        (lambda d: split_path(d, "test").unlink(), "file not found"),
        (lambda d: (d / COUNTS_FILE).unlink(), "table-size file not found"),
    ],
)
def test_info_on_damaged_dir(synth_dir, tmp_path, capsys, damage, needle):
    d = tmp_path / "copy"
    d.mkdir()
    for p in synth_dir.iterdir():
        if p.is_file():
            (d / p.name).write_bytes(p.read_bytes())
    damage(d)
    _one_line_error(capsys, ["data", "info", str(d)], needle)


def test_info_on_missing_dir(tmp_path, capsys):
    _one_line_error(capsys, ["data", "info", str(tmp_path / "nowhere")], "not found")


def test_preprocess_bad_inputs(synth_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    _one_line_error(capsys, ["data", "preprocess", "--out", out, str(tmp_path / "day_5")],
                    "day_5: file not found")
    data = gzip.compress((synth_dir / "raw" / "day_0").read_bytes())
    (tmp_path / "day_0.gz").write_bytes(data[:-40])
    _one_line_error(capsys, ["data", "preprocess", "--out", out, "--workers", "1",
                             str(tmp_path / "day_0.gz")], "day_0.gz: corrupt or truncated gzip")
    lines = (synth_dir / "raw" / "day_0").read_text().splitlines()
    lines[5] = "1\tgarbage"
    (tmp_path / "day_1").write_text("\n".join(lines) + "\n")
    _one_line_error(capsys, ["data", "preprocess", "--out", out, "--strict", "--workers", "1",
                             str(tmp_path / "day_1")], f"{tmp_path / 'day_1'}:6: expected 40")


def test_errors_in_a_real_process(tmp_path):
    """The installed entry point path: one stderr line, exit 2, for a truncated file."""
    d = tmp_path / "d"
    d.mkdir()
    split_path(d, "train").write_bytes(b"\0" * 161)
    split_path(d, "test").write_bytes(b"\0" * 160)
    write_counts(d, [1] * 26)
    proc = subprocess.run([sys.executable, "-m", "dlrm_bench", "data", "info", str(d)],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"dlrm-bench: error: {split_path(d, 'train')} is 161 bytes, "
        "not a multiple of the 160-byte record"
    ]
