"""The synthetic Criteo-like generator: determinism, ranges, layout, signal, bounded memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from dlrm_bench.data.format import COUNTS_FILE, RECORD_BYTES, split_path
from dlrm_bench.data.reader import RecordFile, open_split, read_table_sizes
from dlrm_bench.data.synth import CHUNK, SyntheticCriteo, generate, synthetic_batches
from dlrm_bench.presets import PRESETS, get_preset

REPO = Path(__file__).resolve().parents[1]
TINY = get_preset("tiny")


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = generate(tmp_path / "a", TINY, 3000, 500, seed=5, raw=True, progress=False)
    b = generate(tmp_path / "b", TINY, 3000, 500, seed=5, raw=True, progress=False, workers=3)
    c = generate(tmp_path / "c", TINY, 3000, 500, seed=6, progress=False)
    for split in ("train", "test"):
        assert _bytes(split_path(a.out_dir, split)) == _bytes(split_path(b.out_dir, split))
        assert _bytes(split_path(a.out_dir, split)) != _bytes(split_path(c.out_dir, split))
    for ra, rb in zip(a.raw_files, b.raw_files, strict=True):
        assert _bytes(ra) == _bytes(rb)


def test_file_sizes_and_counts(tmp_path):
    s = generate(tmp_path, TINY, 1234, 321, seed=0, progress=False)
    assert split_path(tmp_path, "train").stat().st_size == 1234 * RECORD_BYTES
    assert split_path(tmp_path, "test").stat().st_size == 321 * RECORD_BYTES
    assert (tmp_path / COUNTS_FILE).is_file()
    assert read_table_sizes(tmp_path) == TINY.table_sizes
    assert s.records == {"train": 1234, "test": 321}
    assert s.positives["train"] == int(RecordFile(split_path(tmp_path, "train")).data[:, 0].sum())
    assert not list(tmp_path.glob("*.tmp"))


def test_shorter_file_is_prefix_of_longer_one(tmp_path):
    generate(tmp_path / "short", TINY, 1000, 10, seed=1, progress=False)
    generate(tmp_path / "long", TINY, CHUNK + 77, 10, seed=1, progress=False)
    short = _bytes(split_path(tmp_path / "short", "train"))
    assert _bytes(split_path(tmp_path / "long", "train"))[:len(short)] == short


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_ranges_and_positive_rate(preset):
    spec = PRESETS[preset]
    gen = SyntheticCriteo(spec, seed=2)
    chunk = gen.chunk("train", 0, 20_000)
    rec = chunk.records()
    assert rec.dtype == np.dtype("<i4") and rec.shape == (20_000, 40)
    assert set(np.unique(rec[:, 0])) == {0, 1}
    assert 0.03 <= rec[:, 0].mean() <= 0.25
    ids = rec[:, 14:]
    assert (ids >= 0).all() and (ids < np.array(spec.table_sizes)).all()
    dense = rec[:, 1:14]
    assert (dense >= 0).all()
    assert chunk.missing.any() and (dense[chunk.missing] == 0).all()
    assert dense.max() > 1000  # heavy-tailed, not a narrow range
    # Zipf-like: in a big table the most frequent id is far above the uniform frequency
    big = int(np.argmax(spec.table_sizes))
    top = np.bincount(ids[:, big]).max()
    assert top > 50 * len(ids) / min(spec.table_sizes[big], len(ids))


def test_train_and_test_are_different_streams():
    gen = SyntheticCriteo(TINY, seed=0)
    train, test = gen.chunk("train", 0, 1000).records(), gen.chunk("test", 0, 1000).records()
    assert not np.array_equal(train, test)
    assert abs(train[:, 0].mean() - test[:, 0].mean()) < 0.06


def test_synthetic_batches_match_generated_file(tmp_path):
    generate(tmp_path, TINY, CHUNK + 500, 100, seed=9, progress=False)
    rf = open_split(tmp_path, "train")
    bs = 1000  # a batch that straddles the chunk boundary
    got = list(synthetic_batches(TINY, bs, seed=9, num_batches=rf.num_batches(bs, True)))
    assert len(got) == rf.num_batches(bs, drop_last=True)
    for i in (0, CHUNK // bs, len(got) - 1):
        want = rf.batch(i, bs)
        for name in ("dense", "offsets", "indices", "labels"):
            assert (getattr(got[i], name) == getattr(want, name)).all(), (i, name)
    test = next(synthetic_batches(TINY, 64, seed=9, split="test"))
    assert (test.labels == open_split(tmp_path, "test").batch(0, 64).labels).all()


def test_raw_tsv_matches_binary(tmp_path):
    s = generate(tmp_path, TINY, 700, 300, seed=4, raw=True, raw_days=2, progress=False)
    assert [p.name for p in s.raw_files] == ["day_0", "day_1", "day_2"]
    lines = [ln.split("\t") for p in s.raw_files[:2] for ln in p.read_text().splitlines()]
    assert len(lines) == 700 and len(s.raw_files[2].read_text().splitlines()) == 300
    rec = RecordFile(split_path(tmp_path, "train")).data
    assert all(len(f) == 40 for f in lines)
    assert [int(f[0]) for f in lines] == rec[:, 0].tolist()
    dense = np.array([[int(v) if v else 0 for v in f[1:14]] for f in lines])
    assert np.array_equal(dense, rec[:, 1:14])
    assert any(v == "" for f in lines for v in f[1:14])  # missing dense values are empty
    hexes = [f[14:] for f in lines]
    assert all(len(h) == 8 and int(h, 16) >= 0 for row in hexes for h in row)
    for t in range(26):  # hex <-> id is a bijection within a table
        pairs = {(row[t], int(rec[i, 14 + t])) for i, row in enumerate(hexes)}
        assert len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


def test_signal_is_learnable():
    """A plain logistic regression on one-hot small tables and log dense values beats chance
    clearly on held-out data; the hidden model's own AUC bounds what a DLRM can reach."""
    gen = SyntheticCriteo(TINY, seed=0)
    train, test = gen.chunk("train", 0, 8_000), gen.chunk("test", 0, 4_000)

    def features(chunk):
        dense = np.log1p(chunk.dense)
        cols = [(dense - dense.mean(axis=0)) / (dense.std(axis=0) + 1e-9)]
        for t in (5, 8, 12, 15, 16, 18, 24, 25):  # the low-cardinality tables
            cols.append(np.eye(TINY.table_sizes[t])[chunk.ids[:, t]])
        return np.hstack(cols)

    model = LogisticRegression(max_iter=200).fit(features(train), train.labels)
    auc = roc_auc_score(test.labels, model.predict_proba(features(test))[:, 1])
    assert auc >= 0.70
    bayes = roc_auc_score(test.labels, gen.logits(test.dense, test.ids))
    assert bayes > auc


def test_generate_rejects_bad_arguments(tmp_path):
    from dlrm_bench.errors import UserError

    with pytest.raises(UserError):
        generate(tmp_path, TINY, 0, 10, progress=False)
    with pytest.raises(UserError):
        SyntheticCriteo([10] * 25)
    with pytest.raises(UserError):
        SyntheticCriteo(TINY, positive_rate=1.5)


def test_memory_stays_bounded(tmp_path):
    """2M terabyte-small samples in a fresh process: its peak RSS stays well under 1 GB.

    The child reports its own VmHWM: ru_maxrss would also carry the high-water mark of this
    (much larger) pytest process, which Linux keeps across fork and exec."""
    code = (
        "import re; from dlrm_bench.data.synth import generate;"
        "from dlrm_bench.presets import get_preset;"
        f"generate({str(tmp_path)!r}, get_preset('terabyte-small'), 2_000_000, 10_000,"
        " progress=False);"
        "print(re.search(r'VmHWM:\\s*(\\d+) kB', open('/proc/self/status').read())[1])"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, text=True,
                          capture_output=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    peak_kib = int(proc.stdout.split()[-1])
    assert split_path(tmp_path, "train").stat().st_size == 2_000_000 * RECORD_BYTES
    assert 0 < peak_kib * 1024 < 600 * 2**20, f"peak RSS {peak_kib / 1024:.0f} MiB"
