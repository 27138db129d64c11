"""Raw Criteo day files -> binary: values, id remapping, splits, sub-sampling, bad input."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
import pytest

from dlrm_bench.data import preprocess as pp
from dlrm_bench.data.format import split_path
from dlrm_bench.data.reader import RecordFile, read_table_sizes
from dlrm_bench.data.synth import generate
from dlrm_bench.errors import UserError
from dlrm_bench.presets import get_preset


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Small blocks, so that every file spans many of them (and the 23/24 cut falls inside one)."""
    monkeypatch.setattr(pp, "BLOCK_BYTES", 8192)


def _raw_lines(tmp_path: Path, n: int, seed: int = 0) -> list[str]:
    """Synthetic raw lines, edited to hold negatives, missing categoricals and odd hex."""
    s = generate(tmp_path / f"synth{seed}", get_preset("tiny"), n, 1, seed=seed, raw=True,
                 progress=False)
    lines = s.raw_files[0].read_text().splitlines()
    rnd = random.Random(seed)
    for i in range(0, n, 7):
        f = lines[i].split("\t")
        f[rnd.randint(1, 13)] = str(-rnd.randint(1, 3))
        f[rnd.randint(14, 39)] = ""
        f[rnd.randint(14, 39)] = rnd.choice(["0", "ABCDEF12", "1f", "0000000000ff"])
        lines[i] = "\t".join(f)
    return lines


def _expected(lines: list[str], max_ind_range: int):
    """An independent plain-Python reading of the lines."""
    fields = [ln.split("\t") for ln in lines]
    labels = np.array([int(f[0]) for f in fields])
    dense = np.array([[max(int(v), 0) if v else 0 for v in f[1:14]] for f in fields])
    cats = [[int(v, 16) % max_ind_range if v else 0 for v in f[14:]] for f in fields]
    return labels, dense, np.array(cats, dtype=np.int64)


def _write(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _records(out: Path, split: str) -> np.ndarray:
    return np.asarray(RecordFile(split_path(out, split)).data)


def _check_ids(raw_cats: np.ndarray, ids: np.ndarray, counts: tuple[int, ...]) -> None:
    for t in range(26):
        pairs = set(zip(raw_cats[:, t].tolist(), ids[:, t].tolist(), strict=True))
        # equal raw value <-> equal id (a bijection), ids contiguous from 0 in first-seen order
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
        _, first = np.unique(ids[:, t], return_index=True)
        assert np.array_equal(ids[np.sort(first), t], np.arange(len(first)))
        assert ids[:, t].max() < counts[t]


@pytest.mark.parametrize("max_ind_range", [2**40, 40_000_000, 7])
def test_values_and_ids_match_raw_lines(tmp_path, max_ind_range):
    train, test = _raw_lines(tmp_path, 1500, 1), _raw_lines(tmp_path, 300, 2)
    files = [_write(tmp_path / "day_0", train), _write(tmp_path / "day_1", test)]
    rep = pp.preprocess(files, tmp_path / "out", max_ind_range=max_ind_range, workers=1)
    assert (rep.train_records, rep.test_records, rep.malformed) == (1500, 300, 0)
    counts = read_table_sizes(tmp_path / "out")
    assert counts == rep.counts
    labels, dense, cats = _expected(train + test, max_ind_range)
    rec = np.concatenate([_records(tmp_path / "out", "train"), _records(tmp_path / "out", "test")])
    assert np.array_equal(rec[:, 0], labels)
    assert np.array_equal(rec[:, 1:14], dense)
    assert (dense == 0).sum() > (np.array([[v == "" for v in ln.split("\t")[1:14]]
                                           for ln in train + test])).sum()  # negatives -> 0
    _check_ids(cats, rec[:, 14:], counts)
    assert list(counts) == [len(np.unique(cats[:, t])) for t in range(26)]
    if max_ind_range == 7:
        assert max(counts) <= 7


def test_fast_parser_agrees_with_reference_parser():
    rnd = random.Random(3)

    def pick(good: list[str], bad: list[str]) -> str:
        return rnd.choice(bad if rnd.random() < 0.01 else good)

    lines = []
    for _ in range(3000):
        f = [pick(["0", "1"], ["2", "", "x", " 1"])]
        f += [pick(["", "0", "-4", "17", "123456789012", "9" * 10, "7"], ["1.5", "+3", "-", "1-"])
              for _ in range(13)]
        f += [pick(["", "0", "deadBEEF", "1f", "123456789abcdef0123", "05db9164"],
                   ["xyz", "0x1", " a"]) for _ in range(26)]
        f = f[:rnd.choice([40] * 30 + [3, 41])] + ([""] if rnd.random() < 0.01 else [])
        lines.append("\t".join(f) + ("\r" if rnd.random() < 0.02 else ""))
    block = ("\n".join(lines) + "\n").encode()
    got = pp.parse_block(block, 40_000_000)
    assert 0.2 < got.valid.mean() < 0.9  # both paths and every kind of error get exercised
    assert {kind for _, kind, _ in got.errors} == {"field count", "label", "dense", "categorical"}
    errors = {i: kind for i, kind, _ in got.errors}
    for i, line in enumerate(lines):
        ref = pp.parse_line(line.encode(), 40_000_000)
        if isinstance(ref[0], str):
            assert not got.valid[i] and errors[i] == ref[0]
        else:
            assert got.valid[i]
            assert (got.labels[i], got.dense[i].tolist(), got.cats[i].tolist()) == ref


def test_single_file_is_split_23_to_1(tmp_path):
    lines = _raw_lines(tmp_path, 2400, 4)
    rep = pp.preprocess([_write(tmp_path / "day_0", lines)], tmp_path / "out", workers=1)
    n_test = len(lines) // 24
    assert (rep.train_records, rep.test_records) == (len(lines) - n_test, n_test)
    labels, dense, _ = _expected(lines, 40_000_000)
    test = _records(tmp_path / "out", "test")
    assert np.array_equal(test[:, 0], labels[-n_test:])
    assert np.array_equal(test[:, 1:14], dense[-n_test:])
    assert rep.train_files == rep.test_files == [tmp_path / "day_0"]


def test_multi_day_last_day_is_test_in_day_number_order(tmp_path):
    days = {k: _raw_lines(tmp_path, 200 + k, k) for k in (0, 2, 10)}
    files = [_write(tmp_path / f"day_{k}", days[k]) for k in (10, 0, 2)]  # glob order
    rep = pp.preprocess(files, tmp_path / "out", workers=1)
    assert rep.test_files == [tmp_path / "day_10"]
    assert rep.train_files == [tmp_path / "day_0", tmp_path / "day_2"]
    assert (rep.train_records, rep.test_records) == (202 + 200, 210)
    labels, _, _ = _expected(days[0] + days[2], 1)
    assert np.array_equal(_records(tmp_path / "out", "train")[:, 0], labels)


def test_gzip_and_worker_processes_give_identical_output(tmp_path):
    a, b = _raw_lines(tmp_path, 900, 5), _raw_lines(tmp_path, 200, 6)
    plain = [_write(tmp_path / "day_0", a), _write(tmp_path / "day_1", b)]
    gz = [_write(tmp_path / "day_0.gz", a, gz=True), _write(tmp_path / "day_1.gz", b, gz=True)]
    pp.preprocess(plain, tmp_path / "one", workers=1)
    pp.preprocess(gz, tmp_path / "pool", workers=3)
    for split in ("train", "test"):
        assert np.array_equal(_records(tmp_path / "one", split), _records(tmp_path / "pool", split))
    assert read_table_sizes(tmp_path / "one") == read_table_sizes(tmp_path / "pool")


def test_sub_sampling_keeps_every_positive(tmp_path):
    a, b = _raw_lines(tmp_path, 3000, 7), _raw_lines(tmp_path, 400, 8)
    files = [_write(tmp_path / "day_0", a), _write(tmp_path / "day_1", b)]
    rep = pp.preprocess(files, tmp_path / "out", sub_sample_rate=0.25, seed=1, workers=1)
    labels, _, _ = _expected(a, 1)
    train = _records(tmp_path / "out", "train")
    positives, negatives = int(labels.sum()), int((labels == 0).sum())
    assert int(train[:, 0].sum()) == positives
    kept = int((train[:, 0] == 0).sum())
    assert 0.15 * negatives < kept < 0.35 * negatives
    assert rep.dropped_negatives == negatives - kept
    assert rep.test_records == 400  # the test set is never sub-sampled
    again = pp.preprocess(files, tmp_path / "again", sub_sample_rate=0.25, seed=1, workers=1)
    assert again.train_records == rep.train_records
    assert np.array_equal(_records(tmp_path / "again", "train"), train)


def test_malformed_lines_are_counted_and_skipped(tmp_path):
    lines = _raw_lines(tmp_path, 500, 9)
    bad = {10: "1\t2\t3", 20: lines[20].replace("\t", "\tzz", 1)}
    f = lines[30].split("\t")
    f[20] = "not-hex"
    bad[30] = "\t".join(f)
    bad[40] = "7" + lines[40][1:]
    for i, line in bad.items():
        lines[i] = line
    path = _write(tmp_path / "day_0", lines)
    rep = pp.preprocess([path, _write(tmp_path / "day_1", lines[:50])], tmp_path / "out",
                        workers=1)
    assert rep.malformed == 2 * len(bad) and rep.lines == 550
    assert rep.train_records == 500 - len(bad)
    assert rep.malformed_by_kind == {"field count": 2, "dense": 2, "categorical": 2, "label": 2}
    assert rep.examples[0].startswith(f"{path}:11: ")
    with pytest.raises(UserError) as err:
        pp.preprocess([path], tmp_path / "strict", strict=True, workers=1)
    assert str(err.value) == f"{path}:11: expected 40 tab-separated fields, found 3"
    assert not (tmp_path / "strict" / "terabyte_processed_train.bin").exists()


def test_corrupt_and_missing_input(tmp_path):
    lines = _raw_lines(tmp_path, 3000, 10)
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    (tmp_path / "day_0.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated gzip") as err:
        pp.preprocess([tmp_path / "day_0.gz"], tmp_path / "out", workers=1)
    assert "\n" not in str(err.value) and "day_0.gz" in str(err.value)
    assert not list((tmp_path / "out").glob("*.bin*"))
    (tmp_path / "day_1.gz").write_bytes(b"definitely not gzip")
    with pytest.raises(UserError, match=r"day_1\.gz: corrupt"):
        pp.preprocess([tmp_path / "day_1.gz"], tmp_path / "out", workers=1)
    with pytest.raises(UserError, match="file not found"):
        pp.preprocess([tmp_path / "day_9"], tmp_path / "out")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(UserError, match="cannot be split"):
        pp.preprocess([tmp_path / "empty"], tmp_path / "out", workers=1)
    with pytest.raises(UserError, match="sub-sample rate"):
        pp.preprocess([tmp_path / "empty"], tmp_path / "out", sub_sample_rate=0)
