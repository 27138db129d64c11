"""Embedding tables on hugetlbfs pages, one copy shared by the instances of a host.

A random embedding lookup lands on a new 4 KB page nearly every time: with tables of gigabytes
almost every lookup misses the TLB and walks the page table first. On 2 MB pages the tables of
``terabyte-small`` (0.9 GB int8, 3.6 GB fp32) need 500-1800 TLB entries, which the second-level
TLB of a current core holds. The tune role reserves hugepages sized for the tables
(``hugepages: auto``); ``place_tables`` puts the tables there:

- ``table_memory=auto`` (default): on hugepages when a hugetlbfs file system is mounted and its
  pool has room, else left where they are (the page-cache mapping of the shared weights file, or
  process memory), with the reason recorded in the result;
- ``hugepages``: on hugepages or a one-line error saying why not;
- ``normal``: left where they are.

Sharing: with a ``key`` (the identity of the shared prepared-weights file) the copy is one file,
``dlrm-bench-<key>.tables`` in the mount, written once under a lock (and renamed into place
complete) and mapped read-only by every instance. Each instance holds a shared ``flock`` on it;
the last one to finish (the one that gets the exclusive lock) removes it, so the pages go back to
the pool. A run killed before that leaves the file: the next run with the same weights reuses it,
and the tune role's restore (or ``remove_stale_tables``) deletes it. Without a key (no shared
weights: each instance has its own tables) ``auto`` leaves the tables alone, since the pool is
sized for one copy per host; ``hugepages`` copies them into an unlinked file private to the
process, freed when it exits.

Torch-free at import: the restore code uses the mount and clean-up helpers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlrm_bench.config import TABLE_MEMORY
from dlrm_bench.errors import UserError

if TYPE_CHECKING:
    import torch

FILE_PREFIX = "dlrm-bench-"
FILE_SUFFIX = ".tables"
ALIGN = 64  # tables start on a cache line: the file needs the pages preflight reserves
HUGEPAGES_SYSFS = Path("/sys/kernel/mm/hugepages")


@dataclass(frozen=True)
class HugetlbfsMount:
    """A mounted hugetlbfs file system and the size of its pages."""

    path: Path
    page_bytes: int


def _size_bytes(text: str) -> int:
    """``2M`` / ``1G`` / ``2048k`` (mount option syntax) -> bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def default_page_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The kernel's default hugepage size (``Hugepagesize``), 0 when it has none."""
    try:
        for line in meminfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("Hugepagesize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def hugetlbfs_mounts(mounts: Path = Path("/proc/mounts")) -> list[HugetlbfsMount]:
    """Every mounted hugetlbfs, smallest pages first (2 MB before 1 GB: less rounding)."""
    try:
        lines = mounts.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    found = []
    default = default_page_bytes()
    for line in lines:
        parts = line.split()
        if len(parts) < 4 or parts[2] != "hugetlbfs":
            continue
        page = default
        for option in parts[3].split(","):
            if option.startswith("pagesize="):
                with contextlib.suppress(ValueError):
                    page = _size_bytes(option.removeprefix("pagesize="))
        # /proc/mounts escapes blanks in paths as octal (\040)
        path = parts[1].encode().decode("unicode_escape")
        if page > 0:
            found.append(HugetlbfsMount(Path(path), page))
    return sorted(found, key=lambda m: m.page_bytes)


def available_pages(page_bytes: int, root: Path = HUGEPAGES_SYSFS) -> int:
    """Pages of the pool that a new mapping can still reserve (free minus reserved)."""
    pool = root / f"hugepages-{page_bytes // 1024}kB"
    try:
        free = int((pool / "free_hugepages").read_text())
        reserved = int((pool / "resv_hugepages").read_text())
    except (OSError, ValueError):
        return 0
    return max(0, free - reserved)


def _layout(tables: Sequence[torch.Tensor]) -> tuple[list[int], int]:
    """Byte offset of each table in the file, and the bytes of all."""
    offsets, end = [], 0
    for table in tables:
        offsets.append(end)
        end += -(-table.numel() * table.element_size() // ALIGN) * ALIGN
    return offsets, end


def tables_key(source: Path, tables: Sequence[torch.Tensor]) -> str:
    """A name for the hugepage copy of ``tables`` read from ``source``: changes when the file is
    rewritten (device, inode, size, mtime) or the tables' layout does."""
    st = source.stat()
    ident = {"file": [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns],
             "tables": [[list(t.shape), str(t.dtype)] for t in tables]}
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:20]


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` (the mount: no lock files left in it)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


class TablePlacement:
    """Where the tables of a prepared model live; ``tables`` are the tensors to use.

    ``memory`` is ``hugepages`` or ``normal``; ``detail`` says where exactly, or why not on
    hugepages. Keep the object alive while the tables are used: when it goes (or the process
    exits, or ``release`` is called) its claim on the shared file is given up.
    """

    def __init__(self, tables: list[torch.Tensor], memory: str, detail: str,
                 path: Path | None = None, fd: int | None = None) -> None:
        self.tables, self.memory, self.detail = tables, memory, detail
        self._release = weakref.finalize(self, _release, fd, path) if fd is not None else None

    def facts(self) -> dict[str, Any]:
        return {"memory": self.memory, "detail": self.detail}

    def release(self) -> None:
        """Give up this process's claim; the last process using the shared file removes it."""
        if self._release is not None:
            self._release()


def _release(fd: int, path: Path | None) -> None:
    try:
        if path is not None:
            with _locked(path.parent):
                try:  # exclusive only when no other process holds its shared lock
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_ino == os.fstat(fd).st_ino:
                        os.unlink(path)
    except OSError:
        pass  # the mount went away: nothing left to free
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _views(flat: torch.Tensor, tables: Sequence[torch.Tensor],
           offsets: Sequence[int]) -> list[torch.Tensor]:
    """Each table's place in the file's bytes ``flat``, with the table's dtype and shape."""
    return [flat[offset:offset + table.numel() * table.element_size()]
            .view(table.dtype).view(table.shape)
            for table, offset in zip(tables, offsets, strict=True)]


def _map_tensors(mem: mmap.mmap, tables: Sequence[torch.Tensor],
                 offsets: Sequence[int]) -> list[torch.Tensor]:
    import torch

    with warnings.catch_warnings():  # read-only on purpose: nothing writes a shared table
        warnings.filterwarnings("ignore", message=".*not writable.*")
        flat = torch.frombuffer(mem, dtype=torch.uint8)
    return _views(flat, tables, offsets)


def _fill(fd: int, size: int, tables: Sequence[torch.Tensor], offsets: Sequence[int]) -> None:
    """Size the file, map it writable (this reserves its hugepages) and copy the tables in."""
    import torch

    os.ftruncate(fd, size)
    mem = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        views = _views(torch.frombuffer(mem, dtype=torch.uint8), tables, offsets)
        for view, table in zip(views, tables, strict=True):
            view.copy_(table)
        del views
    finally:
        with contextlib.suppress(BufferError):
            mem.close()


def _why_not(err: OSError, needed: int, mount: HugetlbfsMount) -> str:
    if err.errno in (errno.ENOMEM, errno.ENOSPC):
        return (f"the {mount.page_bytes >> 20} MB hugepage pool has "
                f"{available_pages(mount.page_bytes)} pages free, the tables need {needed}")
    return f"cannot use {mount.path}: {err.strerror or err}"


def place_tables(
    tables: Sequence[torch.Tensor], policy: str, key: str | None = None,
    mounts: Sequence[HugetlbfsMount] | None = None,
) -> TablePlacement:
    """Put ``tables`` on hugepages according to ``policy`` (see the module docstring)."""
    if policy not in TABLE_MEMORY:
        raise UserError(f"table_memory must be one of {', '.join(TABLE_MEMORY)}, got {policy!r}")
    tables = list(tables)
    if policy == "normal":
        return TablePlacement(tables, "normal", "left where they were loaded: table_memory=normal")
    if key is None and policy == "auto":  # the pool is sized for one copy per host, not one each
        return TablePlacement(tables, "normal", "not on hugepages: tables private to this process "
                              "(no shared weights file); table_memory=hugepages copies them anyway")
    mounts = hugetlbfs_mounts() if mounts is None else list(mounts)
    reasons = []
    if not mounts:
        reasons.append("no hugetlbfs file system is mounted (e.g. mount -t hugetlbfs nodev "
                       "/dev/hugepages; the tune role mounts one)")
    offsets, nbytes = _layout(tables)
    for mount in mounts:
        size = -(-nbytes // mount.page_bytes) * mount.page_bytes
        pages = size // mount.page_bytes
        try:
            placed = (_shared(tables, offsets, size, mount, key) if key
                      else _private(tables, offsets, size, mount))
        except OSError as err:
            reasons.append(_why_not(err, pages, mount))
            continue
        mapped, fd, path = placed
        share = f"shared file {path.name}" if path else "private to this process"
        detail = f"hugetlbfs {mount.path}, {pages} x {mount.page_bytes >> 20} MB pages, {share}"
        return TablePlacement(mapped, "hugepages", detail, path, fd)
    why = "; ".join(reasons)
    if policy == "hugepages":
        raise UserError(f"table_memory=hugepages: {why}")
    return TablePlacement(tables, "normal", f"not on hugepages: {why}")


def _shared(tables: Sequence[torch.Tensor], offsets: Sequence[int], size: int,
            mount: HugetlbfsMount, key: str) -> tuple[list[torch.Tensor], int, Path]:
    path = mount.path / f"{FILE_PREFIX}{key}{FILE_SUFFIX}"
    with _locked(mount.path):
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # remove_stale_tables leaves it alone
                _fill(fd, size, tables, offsets)
                os.rename(tmp, path)  # complete, or not there at all
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            finally:
                os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        try:
            if os.fstat(fd).st_size != size:
                raise OSError(errno.EINVAL, f"{path} holds {os.fstat(fd).st_size} bytes, "
                                            f"expected {size} (remove it)")
            fcntl.flock(fd, fcntl.LOCK_SH)  # released by TablePlacement.release (or exit)
            mem = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
    return _map_tensors(mem, tables, offsets), fd, path


def _private(tables: Sequence[torch.Tensor], offsets: Sequence[int], size: int,
             mount: HugetlbfsMount) -> tuple[list[torch.Tensor], None, None]:
    tmp = mount.path / f".{FILE_PREFIX}private-{os.getpid()}-{id(tables)}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.unlink(tmp)  # pages freed when this process unmaps them
        _fill(fd, size, tables, offsets)
        mem = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return _map_tensors(mem, tables, offsets), None, None


def remove_stale_tables(mounts: Sequence[HugetlbfsMount] | None = None) -> list[str]:
    """Delete table files that no running process holds (left by killed runs): one line each."""
    lines = []
    for mount in hugetlbfs_mounts() if mounts is None else mounts:
        try:
            with _locked(mount.path):
                lines += _remove_unheld(mount.path)
        except OSError:
            continue
    return lines


def _remove_unheld(directory: Path) -> list[str]:
    lines = []
    for entry in list(directory.iterdir()):
        name = entry.name.lstrip(".")
        if not name.startswith(FILE_PREFIX) or not name.endswith((FILE_SUFFIX, ".tmp")):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            entry.unlink()
            lines.append(f"removed {entry} (hugepage tables no run holds)")
        except (BlockingIOError, FileNotFoundError):
            pass
        finally:
            os.close(fd)
    return lines
