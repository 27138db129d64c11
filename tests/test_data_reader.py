"""The MLPerf binary layout and its memory-mapped reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlrm_bench.data.format import (
    COUNTS_FILE,
    NUM_DENSE,
    NUM_SPARSE,
    RECORD_BYTES,
    RecordWriter,
    pack_records,
    split_path,
    write_counts,
)
from dlrm_bench.data.reader import (
    Batch,
    RecordFile,
    open_split,
    read_table_sizes,
    records_to_batch,
    scan_file,
)
from dlrm_bench.errors import UserError


def _random_records(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    dense = rng.integers(-3, 100_000, (n, NUM_DENSE))
    sparse = rng.integers(0, 1_000_000, (n, NUM_SPARSE))
    return pack_records(labels, dense, sparse)


def _write_dir(tmp_path, train: np.ndarray, test: np.ndarray, counts) -> None:
    for split, rec in (("train", train), ("test", test)):
        with RecordWriter(split_path(tmp_path, split)) as w:
            w.write(rec)
    write_counts(tmp_path, counts)


def test_record_layout_is_40_little_endian_int32(tmp_path):
    rec = _random_records(3)
    path = tmp_path / "x.bin"
    with RecordWriter(path) as w:
        w.write(rec)
    raw = path.read_bytes()
    assert len(raw) == 3 * RECORD_BYTES == 3 * 40 * 4
    assert np.array_equal(np.frombuffer(raw, dtype="<i4").reshape(3, 40), rec)
    assert int.from_bytes(raw[4:8], "little", signed=True) == rec[0, 1]


def test_writer_leaves_no_file_when_interrupted(tmp_path):
    path = tmp_path / "x.bin"
    with pytest.raises(RuntimeError), RecordWriter(path) as w:
        w.write(_random_records(2))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_round_trip_batches(tmp_path):
    train, test = _random_records(1000, 1), _random_records(37, 2)
    counts = [7, 1000, 3, *range(100, 100 + NUM_SPARSE - 3)]
    _write_dir(tmp_path, train, test, counts)
    assert read_table_sizes(tmp_path) == tuple(counts)
    rf = open_split(tmp_path, "train")
    assert rf.num_records == len(rf) == len(train)
    b = rf.batch(2, 128)
    assert isinstance(b, Batch)
    rows = train[256:384]
    assert b.dense.dtype == torch.float32 and b.dense.shape == (128, NUM_DENSE)
    expected_dense = np.log1p(np.maximum(rows[:, 1:14], 0).astype(np.float32))
    assert np.allclose(b.dense.numpy(), expected_dense)
    assert (b.dense >= 0).all()  # negatives were clamped before the log
    assert b.offsets.dtype == torch.int64 and b.offsets.shape == (NUM_SPARSE, 128)
    assert (b.offsets == torch.arange(128)).all()
    assert b.indices.dtype == torch.int64 and b.indices.shape == (NUM_SPARSE, 128)
    assert np.array_equal(b.indices.numpy(), rows[:, 14:].T % np.array(counts)[:, None])
    assert b.labels.dtype == torch.float32
    assert np.array_equal(b.labels.numpy(), rows[:, 0].astype(np.float32))


def test_partial_last_batch_and_iteration(tmp_path):
    train = _random_records(1000)
    _write_dir(tmp_path, train, train[:5], [10] * NUM_SPARSE)
    rf = open_split(tmp_path, "train")
    assert rf.num_batches(300) == 4 and rf.num_batches(300, drop_last=True) == 3
    assert len(rf.batch(3, 300).labels) == 100
    with pytest.raises(IndexError):
        rf.batch(3, 300, drop_last=True)
    got = torch.cat([b.labels for b in rf.batches(300)])
    assert np.array_equal(got.numpy(), train[:, 0].astype(np.float32))
    assert sum(len(b.labels) for b in RecordFile(rf.path, batch_size=300, drop_last=True)) == 900


def test_explicit_table_sizes_override_counts(tmp_path):
    train = _random_records(50)
    _write_dir(tmp_path, train, train, [10**6] * NUM_SPARSE)
    sizes = [5] * NUM_SPARSE
    b = open_split(tmp_path, "test", table_sizes=sizes).batch(0, 50)
    assert int(b.indices.max()) < 5


def test_records_to_batch_without_sizes_keeps_ids():
    rec = _random_records(4)
    assert np.array_equal(records_to_batch(rec).indices.numpy(), rec[:, 14:].T)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        (b"", "file is empty"),
        (b"x" * 1234, "is 1234 bytes, not a multiple of the 160-byte record"),
    ],
)
def test_bad_record_files(tmp_path, content, message):
    _write_dir(tmp_path, _random_records(3), _random_records(3), [10] * NUM_SPARSE)
    path = split_path(tmp_path, "train")
    path.unlink()
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        open_split(tmp_path, "train")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("writer", "message"),
    [
        (None, "table-size file not found"),
        (lambda f: f.write(b"not a zip"), "not a valid .npz"),
        (lambda p: np.savez(p, other=np.ones(26, np.int64)), "no 'counts' array"),
        (lambda p: np.savez(p, counts=np.ones(25, np.int64)), "must be 26 integers"),
        (lambda p: np.savez(p, counts=np.zeros(26, np.int64)), "must be positive"),
    ],
)
def test_bad_counts_file(tmp_path, writer, message):
    _write_dir(tmp_path, _random_records(3), _random_records(3), [10] * NUM_SPARSE)
    path = tmp_path / COUNTS_FILE
    path.unlink()
    if writer is not None:
        with open(path, "wb") as f:
            writer(f)
    with pytest.raises(UserError, match=message) as err:
        open_split(tmp_path, "train")
    assert str(path) in str(err.value)


def test_missing_directory(tmp_path):
    with pytest.raises(UserError, match="data directory not found"):
        open_split(tmp_path / "nope", "train")


def test_scan_file_finds_integrity_problems(tmp_path):
    rec = _random_records(500)
    rec[:, 14:] %= 10
    path = tmp_path / "x.bin"
    with RecordWriter(path) as w:
        w.write(rec)
    clean = scan_file(path, [10] * NUM_SPARSE, chunk=64)
    assert clean.problems() == []
    assert clean.records == 500 and clean.positives == int(rec[:, 0].sum())
    rec[7, 0] = 2
    rec[9, 14 + 3] = 10
    with RecordWriter(path) as w:
        w.write(rec)
    bad = scan_file(path, [10] * NUM_SPARSE, chunk=64)
    assert bad.bad_labels == 1 and bad.ids_over_counts[3] == 1 and sum(bad.ids_over_counts) == 1
    assert any("C4" in p for p in bad.problems())
