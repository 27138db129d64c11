"""Synthetic Criteo-like data with a learnable signal, deterministic by seed.

Records come in chunks of ``CHUNK`` rows; chunk ``k`` of a split draws from its own seeded
streams, so the same seed gives the same data, a shorter file is a prefix of a longer one, and
``synthetic_batches`` yields exactly the records a file generated with the same seed holds.
Memory stays constant at any size: the hidden model computes per-id effects by hashing the id.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlrm_bench.data.format import (
    NUM_DENSE,
    NUM_SPARSE,
    RecordWriter,
    pack_records,
    progress_bar,
    split_path,
    write_counts,
)
from dlrm_bench.data.reader import Batch, records_to_batch
from dlrm_bench.errors import UserError
from dlrm_bench.presets import ModelSpec

CHUNK = 1 << 16
SPLIT_CODES = {"train": 0, "test": 1}
_CALIBRATION_ROWS = 1 << 15
_INT32_MAX = (1 << 31) - 1

# Dense features shaped like Criteo's I1..I13: (median, log-scale spread, missing probability).
_DENSE_SHAPE = np.array([
    (1, 1.5, 0.45), (2, 1.8, 0.0), (6, 1.4, 0.20), (4, 1.0, 0.22), (2900, 2.0, 0.03),
    (30, 1.8, 0.22), (3, 1.6, 0.04), (8, 1.0, 0.01), (37, 1.5, 0.04), (0.5, 0.8, 0.45),
    (1, 1.2, 0.04), (0.2, 1.0, 0.76), (4, 1.2, 0.22),
])
# Per-table weight of the hashed per-id effect: strongest on the small tables (indices into the
# Terabyte table order), where a DLRM learns every id within a few thousand samples.
_STRONG = (5, 8, 12, 15, 16, 18, 24, 25)
_MID = (1, 2, 3, 6, 7, 13, 17, 23)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a cheap, well-mixed 64-bit hash (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class RawChunk:
    """One generated chunk before packing: missing dense values are kept apart for raw TSV."""

    labels: np.ndarray   # [n] int32
    dense: np.ndarray    # [n, 13] int64, 0 where missing
    missing: np.ndarray  # [n, 13] bool
    ids: np.ndarray      # [n, 26] int64, < table size

    def records(self) -> np.ndarray:
        return pack_records(self.labels, self.dense, self.ids)


class SyntheticCriteo:
    """The generator and its hidden click model for one set of table sizes and one seed."""

    def __init__(
        self, spec: ModelSpec | Sequence[int], seed: int = 0, positive_rate: float = 0.2
    ) -> None:
        sizes = spec.table_sizes if isinstance(spec, ModelSpec) else tuple(spec)
        if len(sizes) != NUM_SPARSE or min(sizes) < 1:
            raise UserError(f"synthetic data needs {NUM_SPARSE} positive table sizes")
        if not 0.0 < positive_rate < 1.0:
            raise UserError(f"positive rate must be in (0, 1), got {positive_rate}")
        self.table_sizes = tuple(int(s) for s in sizes)
        self.seed = int(seed)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 7919]))
        self._zipf_s = rng.uniform(1.05, 1.35, NUM_SPARSE)
        # rank -> id is a bijection on [0, n): a multiplier coprime to n plus an offset.
        self._perm_a = np.array([_coprime(int(n), rng) for n in self.table_sizes], dtype=np.uint64)
        self._perm_b = np.array([rng.integers(n) for n in self.table_sizes], dtype=np.uint64)
        # id -> 32-bit hex value is a bijection on uint32 (odd multiplier), so hex strings look
        # like Criteo's and distinct ids stay distinct.
        self._hex_mul = (rng.integers(1 << 30, 1 << 31, NUM_SPARSE) * 2 + 1).astype(np.uint64)
        self._hex_add = rng.integers(0, 1 << 32, NUM_SPARSE).astype(np.uint64)
        salt = np.uint64(rng.integers(0, 1 << 62))
        self._table_keys = np.arange(1, NUM_SPARSE + 1, dtype=np.uint64) * _GOLDEN + salt
        alpha = np.full(NUM_SPARSE, 0.25)
        alpha[list(_MID)] = 0.6
        alpha[list(_STRONG)] = 1.4
        self._alpha = alpha
        self._dense_w = rng.normal(0.0, 0.15, NUM_DENSE)
        strong_dense = rng.choice(NUM_DENSE, 4, replace=False)
        self._dense_w[strong_dense] = rng.choice([-1.0, 1.0], 4)
        self._dense_mu = np.log1p(_DENSE_SHAPE[:, 0])
        self._dense_sigma = _DENSE_SHAPE[:, 1]
        self._bias = 0.0
        self._bias = self._calibrate(positive_rate)

    # -- the hidden model ------------------------------------------------------------------
    def logits(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Click logit per row: dense effects on log(x+1) plus hashed per-(table, id) effects."""
        z = (np.log1p(dense) - self._dense_mu) / self._dense_sigma
        out = z @ self._dense_w + self._bias
        for t in range(NUM_SPARSE):  # column by column: small temporaries, bounded memory
            h = _splitmix64(ids[:, t].astype(np.uint64) + self._table_keys[t])
            out += self._alpha[t] * ((h >> np.uint64(11)) * (2.0 / (1 << 53)) - 1.0)
        return out

    def _calibrate(self, rate: float) -> float:
        """The bias that puts the expected positive rate at ``rate`` (bisection on a sample)."""
        chunk = self._draw((self.seed, 3, 0), _CALIBRATION_ROWS, False)
        logits = self.logits(chunk.dense, chunk.ids)
        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if np.mean(1.0 / (1.0 + np.exp(-(logits + mid)))) < rate:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    # -- drawing -----------------------------------------------------------------------------
    def _draw(self, key: tuple[int, ...], n: int, labels: bool = True) -> RawChunk:
        # One stream per field (and per table) keeps every field prefix-consistent across chunk
        # lengths; tables are drawn column by column so temporaries stay small.
        z = np.random.default_rng([*key, 0]).standard_normal((n, NUM_DENSE))
        values = np.floor(np.exp(self._dense_mu + self._dense_sigma * z) - 1.0)
        missing = np.random.default_rng([*key, 1]).random((n, NUM_DENSE)) < _DENSE_SHAPE[:, 2]
        dense = np.clip(values, 0, _INT32_MAX).astype(np.int64)
        dense[missing] = 0
        ids_t = np.empty((NUM_SPARSE, n), dtype=np.int64)
        for t, size in enumerate(self.table_sizes):
            u = np.random.default_rng([*key, 10 + t]).random(n)
            # Inverse CDF of a power law x^-s on [1, size]: rank 0 is the most frequent value.
            e = 1.0 - self._zipf_s[t]
            x = (1.0 - u * (1.0 - float(size) ** e)) ** (1.0 / e)
            ranks = np.clip(x.astype(np.int64) - 1, 0, size - 1).astype(np.uint64)
            ids_t[t] = (ranks * self._perm_a[t] + self._perm_b[t]) % np.uint64(size)
        ids = ids_t.T
        out_labels = np.zeros(n, dtype=np.int32)
        if labels:
            p = 1.0 / (1.0 + np.exp(-self.logits(dense, ids)))
            out_labels = (np.random.default_rng([*key, 3]).random(n) < p).astype(np.int32)
        return RawChunk(out_labels, dense, missing, ids)

    def chunk(self, split: str, index: int, n: int = CHUNK) -> RawChunk:
        """Rows ``[index*CHUNK, index*CHUNK + n)`` of ``split`` (``n <= CHUNK``)."""
        if split not in SPLIT_CODES:
            raise UserError(f"unknown split {split!r}: choose train or test")
        if not 0 < n <= CHUNK:
            raise ValueError(f"chunk length must be in 1..{CHUNK}, got {n}")
        return self._draw((self.seed, SPLIT_CODES[split], index), n)

    def chunks(
        self, split: str, num_records: int | None = None, workers: int = 1
    ) -> Iterator[RawChunk]:
        """``num_records`` rows of ``split`` chunk by chunk (endless when ``None``), drawn by
        ``workers`` threads (numpy releases the GIL) and yielded in order."""
        def lengths() -> Iterator[tuple[int, int]]:
            index = 0
            while num_records is None or index * CHUNK < num_records:
                yield index, CHUNK if num_records is None else min(
                    CHUNK, num_records - index * CHUNK)
                index += 1

        if workers <= 1:
            for index, n in lengths():
                yield self.chunk(split, index, n)
            return
        with ThreadPoolExecutor(workers) as pool:
            window: deque[Future[RawChunk]] = deque()
            for index, n in lengths():
                window.append(pool.submit(self.chunk, split, index, n))
                if len(window) > workers:  # bounded look-ahead keeps memory constant
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

    def hex_values(self, ids: np.ndarray) -> np.ndarray:
        """The 32-bit value behind each id's 8-digit hex string in raw TSV (a bijection)."""
        return (ids.astype(np.uint64) * self._hex_mul + self._hex_add) & np.uint64(0xFFFFFFFF)

    def raw_lines(self, chunk: RawChunk) -> bytes:
        """TSV lines ``label, 13 ints, 26 hex`` with missing dense values as empty fields."""
        return format_tsv(chunk.labels, chunk.dense, chunk.missing, self.hex_values(chunk.ids))


def _coprime(n: int, rng: np.random.Generator) -> int:
    if n <= 2:
        return 1
    while True:
        a = int(rng.integers(n // 3 + 1, n))
        if math.gcd(a, n) == 1:
            return a


_DIGITS = 10  # two groups of 5 decimal digits cover any int32
# _QUINTS[v] = the 5 ASCII digits of v (zero-padded): one division formats a whole number.
_QUINTS = np.frombuffer(
    "".join(f"{v:05d}" for v in range(100_000)).encode(), dtype=np.uint8
).reshape(100_000, 5)
# _HEX2[b] = the 2 ASCII hex digits of byte b, as one uint16 (a flat table gathers fastest).
_HEX2 = np.frombuffer("".join(f"{b:02x}" for b in range(256)).encode(), dtype=np.uint16)


def format_tsv(
    labels: np.ndarray, dense: np.ndarray, missing: np.ndarray, hex_values: np.ndarray
) -> bytes:
    """Vectorised TSV: every line is laid out at fixed width with NUL padding, then the NULs
    are dropped, which leaves variable-width decimal fields without a per-line Python loop."""
    n = len(labels)
    dense_w, hex_w = 1 + _DIGITS, 1 + 8
    width = 1 + NUM_DENSE * dense_w + NUM_SPARSE * hex_w + 1
    buf = np.zeros((n, width), dtype=np.uint8)
    buf[:, 0] = ord("0") + labels
    d = buf[:, 1:1 + NUM_DENSE * dense_w].reshape(n, NUM_DENSE, dense_w)
    d[:, :, 0] = ord("\t")
    values = np.clip(dense, 0, _INT32_MAX)
    high, low = np.divmod(values, 100_000)
    ndig = np.floor(np.log10(np.maximum(values, 1))).astype(np.int64) + 1
    pad = np.where(missing, _DIGITS, _DIGITS - ndig)  # leading positions to blank out
    keep = np.arange(_DIGITS, dtype=np.int64) >= pad[:, :, None]
    d[:, :, 1:6] = _QUINTS[high]
    d[:, :, 6:] = _QUINTS[low]
    d[:, :, 1:] *= keep
    h = buf[:, 1 + NUM_DENSE * dense_w:-1].reshape(n, NUM_SPARSE, hex_w)
    h[:, :, 0] = ord("\t")
    be_bytes = np.ascontiguousarray(hex_values, dtype=">u4").view(np.uint8)
    be_bytes = be_bytes.reshape(n, NUM_SPARSE, 4)
    h[:, :, 1:] = np.take(_HEX2, be_bytes).view(np.uint8).reshape(n, NUM_SPARSE, 8)
    buf[:, -1] = ord("\n")
    flat = buf.ravel()
    return np.compress(flat != 0, flat).tobytes()


def synthetic_batches(
    spec: ModelSpec | Sequence[int], batch_size: int, seed: int = 0, split: str = "train",
    num_batches: int | None = None, positive_rate: float = 0.2,
) -> Iterator[Batch]:
    """Batches drawn on the fly (endless unless ``num_batches``): batch ``i`` holds the records
    ``[i*B, (i+1)*B)`` that ``generate`` writes for the same seed."""
    if batch_size <= 0:
        raise UserError(f"batch size must be positive, got {batch_size}")
    gen = SyntheticCriteo(spec, seed, positive_rate)
    pending: list[np.ndarray] = []
    have, made = 0, 0
    for chunk in gen.chunks(split):
        pending.append(chunk.records())
        have += CHUNK
        if have < batch_size:
            continue
        buf = np.concatenate(pending) if len(pending) > 1 else pending[0]
        start = 0
        while have - start >= batch_size:
            if num_batches is not None and made >= num_batches:
                return
            yield records_to_batch(buf[start:start + batch_size], gen.table_sizes)
            start += batch_size
            made += 1
        pending, have = [buf[start:]], have - start
        if num_batches is not None and made >= num_batches:
            return


@dataclass
class SynthSummary:
    """What ``generate`` wrote."""

    out_dir: Path
    records: dict[str, int]
    positives: dict[str, int]
    seconds: float
    raw_files: list[Path] = field(default_factory=list)

    @property
    def records_per_second(self) -> float:
        return sum(self.records.values()) / self.seconds if self.seconds else 0.0


def generate(
    out_dir: str | os.PathLike[str], spec: ModelSpec | Sequence[int], train_samples: int,
    test_samples: int, seed: int = 0, raw: bool = False, raw_days: int = 1,
    positive_rate: float = 0.2, progress: bool | None = None, workers: int | None = None,
) -> SynthSummary:
    """Write the binary train/test files and ``day_fea_count.npz`` (counts = the table sizes);
    with ``raw``, also ``out_dir/raw/day_0..day_{raw_days-1}`` (train) and ``day_{raw_days}``
    (test) as Criteo TSV, so that preprocessing them reproduces the train/test split."""
    if train_samples < 1 or test_samples < 1:
        raise UserError("train and test sample counts must be at least 1")
    if raw_days < 1:
        raise UserError(f"raw days must be at least 1, got {raw_days}")
    gen = SyntheticCriteo(spec, seed, positive_rate)
    if workers is None:
        workers = min(4, len(os.sched_getaffinity(0)))
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if raw:
            (out / "raw").mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create output directory ({exc.strerror})") from None
    summary = SynthSummary(out, {}, {}, 0.0)
    start = time.perf_counter()
    with progress_bar("synth", train_samples + test_samples, progress) as bar:
        for split, total in (("train", train_samples), ("test", test_samples)):
            bounds = _raw_bounds(split, total, raw_days) if raw else []
            positives = 0
            with RecordWriter(split_path(out, split)) as writer, _RawDays(out, bounds) as days:
                for k, chunk in enumerate(gen.chunks(split, total, workers)):
                    writer.write(chunk.records())
                    positives += int(chunk.labels.sum())
                    if raw:
                        days.write(k * CHUNK, chunk, gen)
                    bar.update(len(chunk.labels))
            summary.records[split] = total
            summary.positives[split] = positives
            summary.raw_files.extend(days.paths)
    write_counts(out, np.asarray(gen.table_sizes, dtype=np.int64))
    summary.seconds = time.perf_counter() - start
    return summary


def _raw_bounds(split: str, total: int, days: int) -> list[tuple[str, int, int]]:
    if split == "test":
        return [(f"day_{days}", 0, total)]
    edges = [total * k // days for k in range(days + 1)]
    return [(f"day_{k}", edges[k], edges[k + 1]) for k in range(days)]


class _RawDays:
    """Routes generated rows to the raw day files covering their row range."""

    def __init__(self, out: Path, bounds: list[tuple[str, int, int]]) -> None:
        self.bounds = bounds
        self.paths = [out / "raw" / name for name, _, _ in bounds]
        self._files = [open(p.with_name(p.name + ".tmp"), "wb") for p in self.paths]  # noqa: SIM115

    def write(self, first_row: int, chunk: RawChunk, gen: SyntheticCriteo) -> None:
        n = len(chunk.labels)
        for f, (_, lo, hi) in zip(self._files, self.bounds, strict=True):
            a, b = max(lo, first_row) - first_row, min(hi, first_row + n) - first_row
            if a < b:
                part = RawChunk(chunk.labels[a:b], chunk.dense[a:b], chunk.missing[a:b],
                                chunk.ids[a:b])
                f.write(gen.raw_lines(part))

    def __enter__(self) -> _RawDays:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        for f, p in zip(self._files, self.paths, strict=True):
            f.close()
            tmp = p.with_name(p.name + ".tmp")
            if exc_type is None:
                os.replace(tmp, p)
            else:
                tmp.unlink(missing_ok=True)
