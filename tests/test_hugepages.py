"""Embedding tables on hugetlbfs (dlrm_bench.hugepages) and their use by the native backend.

The tests mount a private hugetlbfs and reserve a few 2 MiB pages (root, as in CI); the pool is
put back afterwards under the same lock as the Ansible tuning tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import HUGEPAGES_NR, host_tuning_lock

from dlrm_bench import hugepages as hp
from dlrm_bench.errors import UserError

PAGE = 2 << 20
RESERVE = 48  # pages: the tiny preset's tables take < 12


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[hp.HugetlbfsMount]:
    """A hugetlbfs mounted for this test, with exactly RESERVE free 2 MiB pages in the pool.

    Exactly: a host whose pool already has free pages (the tune role reserves some) would
    otherwise let "more pages than reserved" fit. Pages in use stay in use; the pool's size is
    put back afterwards."""
    if os.geteuid() != 0 or not HUGEPAGES_NR.exists():
        pytest.skip("mounting hugetlbfs and reserving hugepages needs root and a 2 MiB pool")
    where = tmp_path / "huge"
    where.mkdir()
    with host_tuning_lock():
        before = int(HUGEPAGES_NR.read_text())
        in_use = before - hp.available_pages(PAGE)
        HUGEPAGES_NR.write_text(str(in_use + RESERVE))
        if hp.available_pages(PAGE) != RESERVE:
            HUGEPAGES_NR.write_text(str(before))
            pytest.skip(f"could not make the pool hold exactly {RESERVE} free 2 MiB pages")
        subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "nodev", str(where)],
                       check=True)
        try:
            yield hp.HugetlbfsMount(where, PAGE)
        finally:
            # lazily: a failed test's traceback may still hold a mapping
            subprocess.run(["umount", "--lazy", str(where)], check=True)
            HUGEPAGES_NR.write_text(str(before))


def tables() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(3000, 128, generator=gen),
            torch.randint(0, 256, (7001, 136), dtype=torch.uint8, generator=gen)]


def test_mounts_are_read_from_proc_mounts(tmp_path: Path) -> None:
    listing = tmp_path / "mounts"
    listing.write_text(
        "proc /proc proc rw 0 0\n"
        "hugetlbfs /dev/hugepages1G hugetlbfs rw,relatime,pagesize=1024M 0 0\n"
        "nodev /mnt/huge\\040pages hugetlbfs rw,pagesize=2M 0 0\n")
    found = hp.hugetlbfs_mounts(listing)
    assert found == [hp.HugetlbfsMount(Path("/mnt/huge pages"), 2 << 20),
                     hp.HugetlbfsMount(Path("/dev/hugepages1G"), 1 << 30)]


def test_normal_leaves_the_tensors_alone() -> None:
    given = tables()
    placed = hp.place_tables(given, "normal")
    assert placed.memory == "normal"
    assert all(a is b for a, b in zip(placed.tables, given, strict=True))


def test_without_a_mount_auto_says_why_and_hugepages_fails() -> None:
    given = tables()
    placed = hp.place_tables(given, "auto", key="k", mounts=[])
    assert placed.memory == "normal" and "no hugetlbfs file system is mounted" in placed.detail
    assert all(a is b for a, b in zip(placed.tables, given, strict=True))
    with pytest.raises(UserError, match="table_memory=hugepages: no hugetlbfs"):
        hp.place_tables(given, "hugepages", key="k", mounts=[])
    with pytest.raises(UserError, match="must be one of"):
        hp.place_tables(given, "sometimes")


def test_shared_copy_is_exact_read_only_and_removed_by_the_last_user(
        mount: hp.HugetlbfsMount) -> None:
    given = tables()
    first = hp.place_tables(given, "hugepages", key="abc", mounts=[mount])
    second = hp.place_tables(given, "auto", key="abc", mounts=[mount])
    assert first.memory == second.memory == "hugepages"
    assert "shared file dlrm-bench-abc.tables" in first.detail
    for a, b, c in zip(given, first.tables, second.tables, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
        assert b.data_ptr() % 64 == 0
    files = [p.name for p in mount.path.iterdir()]
    assert files == ["dlrm-bench-abc.tables"]  # one copy for both users, no lock files
    first.release()
    assert (mount.path / "dlrm-bench-abc.tables").exists()  # `second` still maps it
    assert torch.equal(second.tables[1], given[1])
    second.release()
    assert list(mount.path.iterdir()) == []  # pages back in the pool


def test_a_short_pool_falls_back_or_fails_with_the_numbers(mount: hp.HugetlbfsMount) -> None:
    big = [torch.zeros(RESERVE + 8, PAGE // 4, dtype=torch.float32)]  # more pages than reserved
    placed = hp.place_tables(big, "auto", key="big", mounts=[mount])
    assert placed.memory == "normal" and f"the tables need {RESERVE + 8}" in placed.detail
    with pytest.raises(UserError, match=r"hugepage pool has \d+ pages free"):
        hp.place_tables(big, "hugepages", mounts=[mount])
    assert list(mount.path.iterdir()) == []  # nothing half-written left behind


def test_private_copy_only_when_asked_and_it_leaves_no_file(mount: hp.HugetlbfsMount) -> None:
    given = tables()
    kept = hp.place_tables(given, "auto", mounts=[mount])  # one copy per instance would not fit
    assert kept.memory == "normal" and "private to this process" in kept.detail
    placed = hp.place_tables(given, "hugepages", mounts=[mount])
    assert "private to this process" in placed.detail
    assert list(mount.path.iterdir()) == []
    assert all(torch.equal(a, b) for a, b in zip(given, placed.tables, strict=True))


def test_stale_files_are_removed_unless_held(mount: hp.HugetlbfsMount) -> None:
    held = hp.place_tables(tables(), "hugepages", key="held", mounts=[mount])
    stale = mount.path / "dlrm-bench-gone.tables"  # as a killed run leaves it
    stale.write_bytes(b"")
    other = mount.path / "not-ours"
    other.write_bytes(b"")
    lines = hp.remove_stale_tables([mount])
    assert lines == [f"removed {stale} (hugepage tables no run holds)"]
    assert sorted(p.name for p in mount.path.iterdir()) == ["dlrm-bench-held.tables", "not-ours"]
    held.release()


def test_runs_on_hugepages_match_normal_memory_and_say_where(
        mount: hp.HugetlbfsMount, tmp_path: Path) -> None:
    """`dlrm-bench run` with one weights cache, tables on hugepages then in normal memory: the same
    outputs as with normal memory, the result records it, and no file is left."""
    common = [sys.executable, "-m", "dlrm_bench", "run", "--preset", "tiny", "--precision",
              "avx_int8", "--mode", "accuracy", "--steps", "4", "--batch-size", "64",
              "--weights-cache", str(tmp_path / "cache")]
    results = {}
    for memory in ("hugepages", "normal"):
        out = tmp_path / memory
        proc = subprocess.run([*common, "--table-memory", memory, "--output", str(out)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        results[memory] = json.loads((out / "result.json").read_text())
    tables_fact = results["hugepages"]["model"]["tables"]
    assert tables_fact["memory"] == "hugepages"
    # the run takes the first mount with room: this test's, or one the host already had
    (used,) = [m.path for m in hp.hugetlbfs_mounts() if f"hugetlbfs {m.path}," in
               tables_fact["detail"]]
    shared_file = re.search(r"shared file (\S+\.tables)", tables_fact["detail"])
    assert shared_file is not None, tables_fact["detail"]
    assert results["normal"]["model"]["tables"]["memory"] == "normal"
    auc = [results[m]["metrics"]["auc"] for m in ("hugepages", "normal")]
    assert auc[0] == auc[1]
    assert not (used / shared_file.group(1)).exists()  # removed by its last user
    assert list(mount.path.iterdir()) == []


def test_cli_hugepages_without_room_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "dlrm_bench", "run", "--preset", "tiny", "--steps", "2",
         "--table-memory", "hugepages", "--backend", "ipex"],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("dlrm-bench: error: table_memory=hugepages is for native "
                                   "inference (IPEX and training keep the tables in process "
                                   "memory)")
