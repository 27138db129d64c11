"""Raw Criteo ``day_N[.gz]`` TSV -> the MLPerf binary files and ``day_fea_count.npz``.

Lines are ``label, 13 ints, 26 hex`` (empty = missing = 0, negative ints -> 0); a categorical
becomes ``int(hex, 16) % max_ind_range``, then a contiguous id per feature in first-seen order
(training days first, then the test day). Several files: the last day is the test set; one file:
its last 1/24 of lines is (the seed's 24 pseudo-days). Files stream in blocks of whole lines,
parsed by vectorised numpy (optionally in worker processes); the id remap runs in order in the
main process so the result never depends on the number of workers.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import platform
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlrm_bench.data.format import (
    NUM_DENSE,
    NUM_SPARSE,
    RECORD_INTS,
    RecordWriter,
    order_days,
    pack_records,
    progress_bar,
    raw_blocks,
    split_path,
    write_counts,
)
from dlrm_bench.errors import UserError

BLOCK_BYTES = 1 << 21
_INT32_MAX = (1 << 31) - 1
_LUT_LIMIT = 1 << 28  # above this max_ind_range a dict replaces the per-feature lookup array
_DEC_W, _HEX_W = 11, 8  # fast-path field widths ("-" + 10 digits; Criteo's 8 hex digits)
_POW10 = 10 ** np.arange(_DEC_W - 1, -1, -1, dtype=np.int64)
_PAD = 16
# Not in Python's mmap module before 3.13; without it a large lookup array may be refused under
# heuristic overcommit although only its touched pages are ever backed.
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if platform.machine() in (
    "x86_64", "aarch64") and sys.platform == "linux" else 0)
_HEXVAL = np.full(256, -1, dtype=np.int8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEXVAL[_c] = _i
    _HEXVAL[bytes([_c]).upper()[0]] = _i
_DEC_RE = re.compile(rb"-?[0-9]+")
_HEX_RE = re.compile(rb"[0-9a-fA-F]+")


@dataclass
class ParsedBlock:
    """One block of lines: rows for every line, ``valid`` marks the well-formed ones."""

    labels: np.ndarray  # [n] int32
    dense: np.ndarray   # [n, 13] int32, missing/negative -> 0
    cats: np.ndarray    # [n, 26] int64, already % max_ind_range
    valid: np.ndarray   # [n] bool
    errors: list[tuple[int, str, str]]  # (line index in block, kind, message)


Parsed = tuple[int, list[int], list[int]] | tuple[str, str]


def parse_line(line: bytes, max_ind_range: int) -> Parsed:
    """Reference parser for one line (the slow path): values, or ``(kind, message)``."""
    fields = line.rstrip(b"\r").split(b"\t")
    if len(fields) != RECORD_INTS:
        return "field count", f"expected {RECORD_INTS} tab-separated fields, found {len(fields)}"
    if fields[0] not in (b"0", b"1"):
        return "label", f"label {_show(fields[0])} is not 0 or 1"
    dense = []
    for j, f in enumerate(fields[1:1 + NUM_DENSE]):
        if f and not _DEC_RE.fullmatch(f):
            return "dense", f"I{j + 1} {_show(f)} is not an integer"
        dense.append(min(max(int(f), 0), _INT32_MAX) if f else 0)
    cats = []
    for j, f in enumerate(fields[1 + NUM_DENSE:]):
        if f and not _HEX_RE.fullmatch(f):
            return "categorical", f"C{j + 1} {_show(f)} is not hexadecimal"
        cats.append(int(f, 16) % max_ind_range if f else 0)
    return int(fields[0]), dense, cats


def _show(field_bytes: bytes) -> str:
    text = field_bytes.decode("utf-8", "replace")
    return repr(text if len(text) <= 24 else text[:21] + "...")


def _windows(buf: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` bytes before each field end, right-aligned (digit k has a fixed weight);
    a row gather from a sliding-window view, after ``_PAD`` leading zero bytes."""
    view = np.lib.stride_tricks.sliding_window_view(buf, width)
    return view[ends + (_PAD - width)]


def _line_fields(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Line ends, lines with exactly 40 fields, and their field starts/ends ``[m, 40]``."""
    delims = np.flatnonzero((buf == 9) | (buf == 10)).astype(np.int64)
    is_nl = buf[delims] == 10
    nl = delims[is_nl]
    n = len(nl)
    # Common case first: every line has 40 fields, so the delimiters reshape to [n, 40].
    if len(delims) == n * RECORD_INTS and is_nl[RECORD_INTS - 1::RECORD_INTS].all():
        rows = np.arange(n)
        ends = delims.reshape(n, RECORD_INTS)
    else:
        line_of = np.cumsum(is_nl) - is_nl  # line index of each delimiter
        rows = np.flatnonzero(np.bincount(line_of, minlength=n) == RECORD_INTS)
        ends = delims[np.isin(line_of, rows)].reshape(-1, RECORD_INTS)
    starts = np.empty_like(ends)
    starts[:, 1:] = ends[:, :-1] + 1
    line_start = np.concatenate(([0], nl[:-1] + 1))
    starts[:, 0] = line_start[rows]
    return nl, rows, starts, ends


def parse_block(block: bytes, max_ind_range: int) -> ParsedBlock:
    """Parse whole lines (``block`` ends with a newline), vectorised; odd lines fall back to
    ``parse_line`` (long fields, CRLF) which also names the reason a line is malformed."""
    raw = np.frombuffer(block, dtype=np.uint8)
    nl, rows, starts, ends = _line_fields(raw)
    n = len(nl)
    lens = ends - starts
    first = raw[starts[:, 0]]
    buf = np.concatenate((np.zeros(_PAD, np.uint8), raw))
    ok = (lens[:, 0] == 1) & ((first == 48) | (first == 49))

    dl = lens[:, 1:1 + NUM_DENSE]
    ch = _windows(buf, ends[:, 1:1 + NUM_DENSE], _DEC_W)
    digit = ch - np.uint8(48)
    inside = np.arange(_DEC_W) >= (_DEC_W - dl)[..., None]
    lead = np.take_along_axis(ch, np.clip(_DEC_W - dl, 0, _DEC_W - 1)[..., None], 2)[..., 0]
    neg = (lead == 45) & (dl >= 2)
    is_digit = digit <= 9
    bad = (inside & ~is_digit).sum(axis=2)  # a leading "-" is the one non-digit allowed
    ok &= (dl <= _DEC_W).all(axis=1) & ((bad == 0) | (neg & (bad == 1))).all(axis=1)
    digits = np.where(inside & is_digit, digit, 0).astype(np.float64)
    values = (digits @ _POW10.astype(np.float64)).astype(np.int64)  # exact: < 2^53
    dense = np.where(neg, 0, np.minimum(values, _INT32_MAX))

    hl = lens[:, 1 + NUM_DENSE:]
    nib = np.take(_HEXVAL, _windows(buf, ends[:, 1 + NUM_DENSE:], _HEX_W))
    inside = np.arange(_HEX_W) >= (_HEX_W - hl)[..., None]
    ok &= (hl <= _HEX_W).all(axis=1) & ((nib >= 0) | ~inside).all(axis=(1, 2))
    nib = np.where(inside, nib, 0).astype(np.uint8)
    packed = (nib[..., 0::2] << 4) | nib[..., 1::2]  # 8 nibbles -> 4 big-endian bytes
    cats = packed.view(">u4")[..., 0].astype(np.int64) % max_ind_range

    out = ParsedBlock(
        labels=np.zeros(n, np.int32), dense=np.zeros((n, NUM_DENSE), np.int32),
        cats=np.zeros((n, NUM_SPARSE), np.int64), valid=np.zeros(n, bool), errors=[],
    )
    good_rows = rows[ok]
    out.labels[good_rows] = first[ok] - 48
    out.dense[good_rows] = dense[ok]
    out.cats[good_rows] = cats[ok]
    out.valid[good_rows] = True
    line_start = np.concatenate(([0], nl[:-1] + 1))
    for i in np.flatnonzero(~out.valid):
        parsed = parse_line(block[line_start[i]:nl[i]], max_ind_range)
        if isinstance(parsed[0], str):
            out.errors.append((int(i), parsed[0], str(parsed[1])))
        else:
            label, dense_vals, cat_vals = parsed  # type: ignore[misc]
            out.labels[i], out.dense[i], out.cats[i] = label, dense_vals, cat_vals
            out.valid[i] = True
    return out


def _lazy_zeros(n: int) -> np.ndarray:
    """int32 zeros whose 4 KiB pages are only backed once touched. numpy's own allocation asks
    for huge pages, which would zero (and keep) 2 MiB for every scattered id."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
    buf = mmap.mmap(-1, n * 4, flags=flags)
    with contextlib.suppress(AttributeError, OSError):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype=np.int32)


class IdMap:
    """Per-feature raw value -> contiguous id in first-seen order.

    A lazily zeroed lookup array per feature (only touched pages cost memory) when
    ``max_ind_range`` is moderate, a dict above ``_LUT_LIMIT``.
    """

    def __init__(self, max_ind_range: int) -> None:
        self.max_ind_range = max_ind_range
        self.counts = np.zeros(NUM_SPARSE, dtype=np.int64)
        self._luts: list[np.ndarray | None] = [None] * NUM_SPARSE
        self._dicts: list[dict[int, int]] = [{} for _ in range(NUM_SPARSE)]

    def __call__(self, cats: np.ndarray) -> np.ndarray:
        out = np.empty(cats.shape, dtype=np.int32)
        for t in range(NUM_SPARSE):
            out[:, t] = self._map(t, cats[:, t])
        return out

    def _new_ids(self, t: int, new_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distinct ``new_values`` in first-seen order and the ids they get."""
        uniq, first = np.unique(new_values, return_index=True)
        uniq = uniq[np.argsort(first, kind="stable")]
        ids = self.counts[t] + np.arange(len(uniq), dtype=np.int64)
        self.counts[t] += len(uniq)
        return uniq, ids

    def _map(self, t: int, values: np.ndarray) -> np.ndarray:
        if self.max_ind_range <= _LUT_LIMIT:
            lut = self._luts[t]
            if lut is None:
                lut = self._luts[t] = _lazy_zeros(self.max_ind_range)  # holds id + 1
            ids = lut[values]
            new = ids == 0
            if new.any():
                uniq, fresh = self._new_ids(t, values[new])
                lut[uniq] = fresh + 1
                ids = lut[values]
            return ids - 1
        table = self._dicts[t]
        uniq, inverse = np.unique(values, return_inverse=True)
        known = np.fromiter((table.get(v, -1) for v in uniq.tolist()), np.int64, len(uniq))
        if (known < 0).any():
            # first-seen order among the new values: order them by first occurrence in `values`
            new_vals, fresh = self._new_ids(t, values[np.isin(values, uniq[known < 0])])
            table.update(zip(new_vals.tolist(), fresh.tolist(), strict=True))
            known = np.fromiter((table[v] for v in uniq.tolist()), np.int64, len(uniq))
        return known[inverse]


@dataclass
class PreprocessReport:
    """What ``preprocess`` read and wrote."""

    out_dir: Path
    train_files: list[Path]
    test_files: list[Path]
    lines: int = 0
    train_records: int = 0
    test_records: int = 0
    dropped_negatives: int = 0
    malformed: int = 0
    malformed_by_kind: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # first few "file:line: reason"
    counts: tuple[int, ...] = ()
    seconds: float = 0.0


def _parsed(
    blocks: Iterator[bytes], max_ind_range: int, pool: Any, workers: int
) -> Iterator[ParsedBlock]:
    """Blocks parsed in order, by a process pool with a bounded look-ahead when given."""
    if pool is None:
        for block in blocks:
            yield parse_block(block, max_ind_range)
        return
    window: deque[Any] = deque()
    for block in blocks:
        window.append(pool.apply_async(parse_block, (block, max_ind_range)))
        if len(window) > 2 * workers:
            yield window.popleft().get()
    while window:
        yield window.popleft().get()


def preprocess(
    raw_files: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str],
    max_ind_range: int = 40_000_000, sub_sample_rate: float = 1.0, seed: int = 0,
    strict: bool = False, workers: int | None = None, progress: bool | None = None,
) -> PreprocessReport:
    """Convert raw day files into ``out_dir``'s binary train/test files and table counts.

    ``sub_sample_rate`` keeps each training negative with that probability (seeded); malformed
    lines are skipped and counted, or with ``strict`` the first raises ``file:line: reason``.
    """
    files = _check_inputs(raw_files, max_ind_range, sub_sample_rate)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create output directory ({exc.strerror})") from None
    single = len(files) == 1
    report = PreprocessReport(out, files if single else files[:-1], files[-1:])
    if workers is None:  # the main process remaps and writes, so leave it a core
        workers = min(8, len(os.sched_getaffinity(0)) - 1)
    # fork, not spawn: spawn would re-run an unguarded __main__ (``python -m dlrm_bench``).
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    idmap, rng = IdMap(max_ind_range), np.random.default_rng(seed)
    start = time.perf_counter()
    total = sum(p.stat().st_size for p in files) * (2 if single else 1)
    try:
        with progress_bar("preprocess", total, progress, in_bytes=True) as bar, \
                RecordWriter(split_path(out, "train")) as train, \
                RecordWriter(split_path(out, "test")) as test:
            train_lines = _train_lines(files[0], bar) if single else 0
            for k, path in enumerate(files):
                line0 = 0
                for pb in _parsed(raw_blocks(path, bar, BLOCK_BYTES), max_ind_range, pool, workers):
                    _note_errors(report, path, line0, pb, strict)
                    n = len(pb.valid)
                    if single:
                        is_train = np.arange(line0, line0 + n) < train_lines
                    else:
                        is_train = np.full(n, k < len(files) - 1)
                    _emit(train, pb, pb.valid & is_train, idmap, rng, sub_sample_rate, report)
                    _emit(test, pb, pb.valid & ~is_train, idmap, None, 1.0, report)
                    line0 += n
                report.lines += line0
            report.train_records, report.test_records = train.records, test.records
            for name, n_rec, src in (("training", train.records, report.train_files),
                                     ("test", test.records, report.test_files)):
                if n_rec == 0:
                    raise UserError(f"no valid {name} records in {', '.join(map(str, src))}")
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    report.counts = tuple(int(c) for c in idmap.counts)
    write_counts(out, idmap.counts)
    report.seconds = time.perf_counter() - start
    return report


def _check_inputs(
    raw_files: Sequence[str | os.PathLike[str]], max_ind_range: int, rate: float
) -> list[Path]:
    if not raw_files:
        raise UserError("no raw day files given")
    if not 1 <= max_ind_range <= 1 << 62:
        raise UserError(f"max ind range must be a positive integer, got {max_ind_range}")
    if not 0.0 < rate <= 1.0:
        raise UserError(f"sub-sample rate must be in (0, 1], got {rate}")
    files = order_days(raw_files)
    for p in files:
        if not p.exists():
            raise UserError(f"{p}: file not found")
        if not p.is_file():
            raise UserError(f"{p}: not a regular file")
    if len(set(files)) != len(files):
        raise UserError("the same raw file is given twice")
    return files


def _train_lines(path: Path, bar: Any) -> int:
    """A single file is the seed's 24 pseudo-days: its last 1/24 of lines is the test set."""
    lines = sum(block.count(b"\n") for block in raw_blocks(path, bar, BLOCK_BYTES))
    if lines < 2:
        raise UserError(f"{path}: {lines} line(s) cannot be split into train and test sets")
    return lines - max(1, lines // 24)


def _note_errors(
    report: PreprocessReport, path: Path, line0: int, pb: ParsedBlock, strict: bool
) -> None:
    for i, kind, message in pb.errors:
        where = f"{path}:{line0 + i + 1}: {message}"
        if strict:
            raise UserError(where)
        report.malformed += 1
        report.malformed_by_kind[kind] += 1
        if len(report.examples) < 5:
            report.examples.append(where)


def _emit(
    writer: RecordWriter, pb: ParsedBlock, rows: np.ndarray, idmap: IdMap,
    rng: np.random.Generator | None, rate: float, report: PreprocessReport,
) -> None:
    labels = pb.labels[rows]
    if not len(labels):
        return
    keep = None
    if rng is not None and rate < 1.0:
        keep = (labels == 1) | (rng.random(len(labels)) < rate)
        report.dropped_negatives += int(len(labels) - keep.sum())
    dense, cats = pb.dense[rows], pb.cats[rows]
    if keep is not None:
        labels, dense, cats = labels[keep], dense[keep], cats[keep]
    writer.write(pack_records(labels, dense, idmap(cats)))
