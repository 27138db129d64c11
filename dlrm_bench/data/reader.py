"""Memory-mapped reader of the MLPerf binary files, yielding model-ready ``Batch`` objects.

Like the reference loader, a batch is one contiguous slice of records: batch ``i`` holds records
``[i*B, (i+1)*B)``. Dense values are clamped at 0 and turned into ``log(x + 1)``; categorical ids
are taken modulo the table sizes; offsets are one-hot (``arange(B)`` per table).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dlrm_bench.data.format import (
    DENSE_SLICE,
    NUM_SPARSE,
    RECORD_BYTES,
    RECORD_DTYPE,
    RECORD_INTS,
    SPARSE_SLICE,
    counts_path,
    read_counts,
    split_path,
)
from dlrm_bench.errors import UserError

if TYPE_CHECKING:
    import torch


@dataclass
class Batch:
    dense: torch.Tensor    # [B, 13] float32, already log(x + 1)
    offsets: torch.Tensor  # [T, B] int64 (one-hot: arange(B) per table)
    indices: torch.Tensor  # [T, B] int64, already modulo the table size
    labels: torch.Tensor   # [B] float32 in {0, 1}


def records_to_batch(records: np.ndarray, table_sizes: Sequence[int] | None = None) -> Batch:
    """``[B, 40]`` int32 records -> ``Batch`` (ids modulo ``table_sizes`` when given)."""
    import torch

    n = len(records)
    dense = np.log1p(np.maximum(records[:, DENSE_SLICE], 0).astype(np.float32))
    indices = np.ascontiguousarray(records[:, SPARSE_SLICE].T, dtype=np.int64)
    if table_sizes is not None:
        np.remainder(indices, np.asarray(table_sizes, dtype=np.int64)[:, None], out=indices)
    offsets = np.broadcast_to(np.arange(n, dtype=np.int64), (indices.shape[0], n))
    return Batch(
        dense=torch.from_numpy(dense),
        offsets=torch.from_numpy(np.ascontiguousarray(offsets)),
        indices=torch.from_numpy(indices),
        labels=torch.from_numpy(records[:, 0].astype(np.float32)),
    )


def check_record_file(path: str | os.PathLike[str]) -> int:
    """Number of records in ``path``; a one-line ``UserError`` when it cannot be a record file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if not path.is_file():
        raise UserError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path}: file is empty (0 bytes)")
    if size % RECORD_BYTES:
        raise UserError(f"{path} is {size} bytes, not a multiple of the {RECORD_BYTES}-byte record")
    return size // RECORD_BYTES


class RecordFile:
    """One ``terabyte_processed_*.bin`` file, memory-mapped read-only.

    ``batch(i, B)`` reads records ``[i*B, (i+1)*B)``; the last batch may be partial unless
    ``drop_last``. Iterating yields batches of ``batch_size`` (set here or via ``batches``).
    """

    def __init__(
        self, path: str | os.PathLike[str], table_sizes: Sequence[int] | None = None,
        batch_size: int | None = None, drop_last: bool = False,
    ) -> None:
        self.path = Path(path)
        self.num_records = check_record_file(self.path)
        if table_sizes is not None and len(table_sizes) != NUM_SPARSE:
            raise UserError(f"expected {NUM_SPARSE} table sizes, got {len(table_sizes)}")
        self.table_sizes = tuple(table_sizes) if table_sizes is not None else None
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.data = np.memmap(
            self.path, dtype=RECORD_DTYPE, mode="r", shape=(self.num_records, RECORD_INTS)
        )

    def __len__(self) -> int:
        return self.num_records

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        if batch_size <= 0:
            raise UserError(f"batch size must be positive, got {batch_size}")
        full, rest = divmod(self.num_records, batch_size)
        return full + (1 if rest and not drop_last else 0)

    def records(self, start: int, stop: int) -> np.ndarray:
        """Records ``[start, stop)`` as a ``[N, 40]`` int32 view of the map."""
        return self.data[start:stop]

    def batch(self, i: int, batch_size: int, drop_last: bool = False) -> Batch:
        if not 0 <= i < self.num_batches(batch_size, drop_last):
            raise IndexError(f"batch {i} out of range for {self.path} at batch size {batch_size}")
        return records_to_batch(
            self.data[i * batch_size:(i + 1) * batch_size], self.table_sizes
        )

    def batches(
        self, batch_size: int | None = None, drop_last: bool | None = None, start: int = 0
    ) -> Iterator[Batch]:
        bs = batch_size or self.batch_size
        if bs is None:
            raise ValueError("batch_size is required (here or in the constructor)")
        drop = self.drop_last if drop_last is None else drop_last
        for i in range(start, self.num_batches(bs, drop)):
            yield self.batch(i, bs, drop)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()


def read_table_sizes(data_dir: str | os.PathLike[str]) -> tuple[int, ...]:
    """Rows per table from ``DIR/day_fea_count.npz``."""
    _check_dir(data_dir)
    return read_counts(counts_path(data_dir))


def open_split(
    data_dir: str | os.PathLike[str], split: str, table_sizes: Sequence[int] | None = None,
    batch_size: int | None = None, drop_last: bool = False,
) -> RecordFile:
    """The ``train`` or ``test`` file of a data directory; ids modulo ``table_sizes``
    (default: the directory's ``day_fea_count.npz``)."""
    _check_dir(data_dir)
    path = split_path(data_dir, split)
    check_record_file(path)
    sizes = read_table_sizes(data_dir) if table_sizes is None else table_sizes
    records = RecordFile(path, sizes, batch_size=batch_size, drop_last=drop_last)
    check_labels(records)
    return records


LABEL_PROBE = 4096  # records whose labels open_split checks (cheap: one page-cached read)


def check_labels(records: RecordFile, probe: int = LABEL_PROBE) -> None:
    """A file of another record size or format can still be a multiple of 160 bytes long; its
    "labels" are then not 0/1. Refuse it in one line before it is benchmarked as garbage."""
    labels = np.asarray(records.data[:probe, 0])
    bad = int(np.count_nonzero((labels != 0) & (labels != 1)))
    if bad:
        raise UserError(
            f"{records.path}: {bad} of the first {len(labels)} records have a label other than "
            f"0 or 1: not a file of {RECORD_INTS} x int32 records (wrong record size or format?)")


def _check_dir(data_dir: str | os.PathLike[str]) -> None:
    if not Path(data_dir).is_dir():
        raise UserError(f"{data_dir}: data directory not found")


@dataclass
class FileStats:
    """Integrity figures of one record file (see ``scan_file``)."""

    path: Path
    records: int
    positives: int = 0
    bad_labels: int = 0
    negative_dense: int = 0
    negative_ids: int = 0
    max_ids: list[int] = field(default_factory=lambda: [-1] * NUM_SPARSE)
    ids_over_counts: list[int] = field(default_factory=lambda: [0] * NUM_SPARSE)

    @property
    def positive_rate(self) -> float:
        return self.positives / self.records if self.records else 0.0

    def problems(self) -> list[str]:
        out = []
        if self.bad_labels:
            out.append(f"{self.bad_labels} labels not in {{0, 1}}")
        if self.negative_ids:
            out.append(f"{self.negative_ids} negative categorical ids")
        over = [f"C{t + 1}" for t, n in enumerate(self.ids_over_counts) if n]
        if over:
            out.append(f"ids >= table size in {', '.join(over)}")
        return out


def scan_file(
    path: str | os.PathLike[str], counts: Sequence[int] | None = None, chunk: int = 1 << 18
) -> FileStats:
    """Read every record in chunks and count integrity problems. Plain reads, not the memory
    map, so a full scan leaves the process's RSS at one chunk."""
    rf = RecordFile(path)
    stats = FileStats(rf.path, rf.num_records)
    limits = np.asarray(counts, dtype=np.int64) if counts is not None else None
    max_ids = np.full(NUM_SPARSE, -1, dtype=np.int64)
    over = np.zeros(NUM_SPARSE, dtype=np.int64)
    with open(rf.path, "rb") as f:
        while len(rec := np.fromfile(f, RECORD_DTYPE, chunk * RECORD_INTS)):
            rec = rec.reshape(-1, RECORD_INTS)
            labels = rec[:, 0]
            stats.positives += int(np.count_nonzero(labels == 1))
            stats.bad_labels += int(np.count_nonzero((labels != 0) & (labels != 1)))
            stats.negative_dense += int(np.count_nonzero(rec[:, DENSE_SLICE] < 0))
            ids = rec[:, SPARSE_SLICE]
            stats.negative_ids += int(np.count_nonzero(ids < 0))
            np.maximum(max_ids, ids.max(axis=0), out=max_ids)
            if limits is not None:
                over += np.count_nonzero(ids >= limits, axis=0)
    stats.max_ids = max_ids.tolist()
    stats.ids_over_counts = over.tolist()
    return stats
