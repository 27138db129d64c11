"""Coordination between instances on one host: the start barrier and the shared weights file."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dlrm_bench.errors import UserError


def wait_at_barrier(barrier_dir: str | None, instance_id: int, timeout_s: float) -> float:
    """Announce ``ready.<id>`` and wait for the launcher's ``go``; returns seconds waited."""
    if not barrier_dir:
        return 0.0
    directory = Path(barrier_dir)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"ready.{instance_id}").write_text(str(os.getpid()))
    go = directory / "go"
    start = time.monotonic()
    while not go.exists():
        if time.monotonic() - start > timeout_s:
            raise UserError(
                f"instance {instance_id}: no start signal in {barrier_dir} after {timeout_s:.0f} s"
            )
        time.sleep(0.005)
    return time.monotonic() - start


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def weights_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def shared_weights(
    cache_dir: str, identity: dict[str, Any],
    create: Callable[[Path], None], load: Callable[[Path], Any],
) -> tuple[Any, bool]:
    """Load the prepared weights for ``identity`` from ``cache_dir``, creating them once.

    The first instance to take the lock builds the file (``create`` writes it atomically); every
    instance then memory-maps it with ``load``, so instances share one copy in the page cache.
    Returns ``(loaded, created_here)``.
    """
    directory = Path(cache_dir)
    target = directory / f"prepared-{weights_key(identity)}.pt"
    created = False
    with _locked(directory / ".lock"):
        if not target.exists():
            create(target)
            (directory / f"{target.stem}.json").write_text(json.dumps(identity, indent=2))
            created = True
    return load(target), created
