"""The MLPerf Criteo Terabyte binary layout, its file names, and small I/O helpers.

A record is 40 little-endian int32: label, 13 dense integers, 26 categorical ids (160 bytes).
Raw Criteo days are ``day_N`` or ``day_N.gz`` TSV files (label, 13 ints, 26 hex).
A data directory holds ``terabyte_processed_train.bin``, ``terabyte_processed_test.bin`` and
``day_fea_count.npz`` (key ``counts``: rows per table, int64[26]).
"""

from __future__ import annotations

import gzip
import os
import re
import sys
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal

import numpy as np

from dlrm_bench.errors import UserError

NUM_DENSE = 13
NUM_SPARSE = 26
RECORD_INTS = 1 + NUM_DENSE + NUM_SPARSE
RECORD_DTYPE = np.dtype("<i4")
RECORD_BYTES = RECORD_INTS * RECORD_DTYPE.itemsize  # 160
DENSE_SLICE = slice(1, 1 + NUM_DENSE)
SPARSE_SLICE = slice(1 + NUM_DENSE, RECORD_INTS)

TRAIN_FILE = "terabyte_processed_train.bin"
TEST_FILE = "terabyte_processed_test.bin"
COUNTS_FILE = "day_fea_count.npz"
COUNTS_KEY = "counts"
SPLITS = ("train", "test")

Split = Literal["train", "test"]


def split_path(data_dir: str | os.PathLike[str], split: str) -> Path:
    """``DIR/terabyte_processed_{train,test}.bin``."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: choose train or test")
    return Path(data_dir) / (TRAIN_FILE if split == "train" else TEST_FILE)


def counts_path(data_dir: str | os.PathLike[str]) -> Path:
    """``DIR/day_fea_count.npz``."""
    return Path(data_dir) / COUNTS_FILE


def pack_records(labels: np.ndarray, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    """``[N]``, ``[N, 13]``, ``[N, 26]`` integers -> ``[N, 40]`` little-endian int32 records."""
    n = len(labels)
    out = np.empty((n, RECORD_INTS), dtype=RECORD_DTYPE)
    out[:, 0] = labels
    out[:, DENSE_SLICE] = dense
    out[:, SPARSE_SLICE] = sparse
    return out


def write_counts(data_dir: str | os.PathLike[str], counts: np.ndarray | list[int]) -> Path:
    """Write ``day_fea_count.npz`` atomically (temp file + rename)."""
    arr = np.asarray(counts, dtype=np.int64)
    if arr.shape != (NUM_SPARSE,):
        raise ValueError(f"counts must have {NUM_SPARSE} entries, got shape {arr.shape}")
    path = counts_path(data_dir)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **{COUNTS_KEY: arr})
    os.replace(tmp, path)
    return path


def read_counts(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """Rows per table from ``day_fea_count.npz``; a ``UserError`` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: table-size file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if COUNTS_KEY not in npz.files:
                raise UserError(f"{path}: no {COUNTS_KEY!r} array (keys: {', '.join(npz.files)})")
            counts = np.asarray(npz[COUNTS_KEY])
    except UserError:
        raise
    except Exception as exc:  # zip/pickle/format errors all mean the same thing to a user
        raise UserError(f"{path}: not a valid .npz file ({type(exc).__name__})") from None
    if counts.ndim != 1 or len(counts) != NUM_SPARSE or counts.dtype.kind not in "iu":
        raise UserError(
            f"{path}: {COUNTS_KEY!r} must be {NUM_SPARSE} integers, got {counts.dtype} "
            f"shape {counts.shape}"
        )
    if (counts <= 0).any():
        raise UserError(f"{path}: every table size must be positive, got {counts.tolist()}")
    return tuple(int(c) for c in counts)


class RecordWriter:
    """Append ``[N, 40]`` record chunks to ``path``; the file appears only on a clean close.

    Writes go to ``path.tmp`` and are renamed at the end, so an interrupted run never leaves a
    file that looks complete.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.records = 0
        self._f: BinaryIO = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()/abort()

    def write(self, records: np.ndarray) -> None:
        if records.ndim != 2 or records.shape[1] != RECORD_INTS:
            raise ValueError(f"records must be [N, {RECORD_INTS}], got {records.shape}")
        np.ascontiguousarray(records, dtype=RECORD_DTYPE).tofile(self._f)
        self.records += len(records)

    def close(self) -> None:
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# -- raw Criteo day files: day_N or day_N.gz, TSV ------------------------------------------
def order_days(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Sort ``day_N[.gz]`` files by N (a shell glob puts day_10 before day_2); other names
    keep the order given."""
    files = [Path(p) for p in paths]
    days = [re.fullmatch(r"day_(\d+)(\.gz)?", p.name) for p in files]
    if all(days):
        return sorted(files, key=lambda p: int(p.name.split("_")[1].split(".")[0]))
    return files


def _open_raw(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(stream of decompressed bytes, the raw file for progress); gzip by name or magic."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if path.suffix == ".gz" or raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    raw.seek(0)
    return raw, raw


def raw_blocks(path: Path, bar: Any, block_bytes: int = 1 << 21) -> Iterator[bytes]:
    """Whole-line blocks of about ``block_bytes`` of a raw day file, plain or gzip (a missing
    final newline is added); ``bar.update`` gets the bytes read from disk."""
    stream, raw = _open_raw(path)
    carry, pos = b"", 0
    try:
        with raw, stream:
            while data := stream.read(block_bytes):
                bar.update(raw.tell() - pos)
                pos = raw.tell()
                data = carry + data
                cut = data.rfind(b"\n") + 1
                carry = data[cut:]
                if cut:
                    yield data[:cut]
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if carry:
        yield carry + b"\n"


class _NullProgress:
    def update(self, advance: float = 0) -> None:
        pass


class _RichProgress:
    def __init__(self, progress: Any, task: Any) -> None:
        self._progress = progress
        self._task = task

    def update(self, advance: float = 0) -> None:
        self._progress.update(self._task, advance=advance)


@contextmanager
def progress_bar(
    description: str, total: float | None, enabled: bool | None = None, in_bytes: bool = False
) -> Iterator[_NullProgress | _RichProgress]:
    """A rich progress bar on a terminal (stderr), nothing otherwise; ``.update(advance=n)``."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield _NullProgress()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"), BarColumn(),
        DownloadColumn() if in_bytes else MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        yield _RichProgress(progress, progress.add_task(description, total=total))
