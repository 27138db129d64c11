"""The instance log (lines a WSF kpi.sh user recognises) and progress display."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from dlrm_bench.config import RunConfig

# The parameter echo of the seed's benchmark log, in its order.
ECHO = (
    ("FUNCTION", "function"), ("MODE", "mode"), ("PRECISION", "precision"),
    ("DATA_TYPE", "data_type"), ("CASE_TYPE", "case_type"), ("BATCH_SIZE", "batch_size"),
    ("WARMUP_STEPS", "warmup_steps"), ("STEPS", "steps"), ("ONEDNN_VERBOSE", "onednn_verbose"),
)


class RunLog:
    """Writes each line to stdout and to ``<output>/run.log`` (flushed: the launcher tails it)."""

    def __init__(self, output: str | None) -> None:
        self._file: IO[str] | None = None
        self.path = Path(output) / "run.log" if output else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8")

    def line(self, text: str) -> None:
        print(text, flush=True)
        if self._file:
            try:
                self._file.write(text + "\n")
                self._file.flush()
            except OSError as exc:  # e.g. a full disk: name the file, do not fail again on close
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None
                raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def echo_parameters(self, cfg: RunConfig, extra: dict[str, Any]) -> None:
        for name, attr in ECHO:
            self.line(f"{name}: {getattr(cfg, attr)}")
        for name, value in extra.items():
            self.line(f"{name}: {value}")

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


class _Plain:
    """Progress as occasional plain lines on stderr (no terminal, e.g. under the launcher)."""

    def __init__(self, description: str, total: int) -> None:
        self.description, self.total, self.done = description, total, 0
        self._next = 0.25
        self._start = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.total and self.done / self.total >= self._next:
            elapsed = time.monotonic() - self._start
            print(f"{self.description}: {self.done}/{self.total} ({elapsed:.1f} s)",
                  file=sys.stderr, flush=True)
            self._next += 0.25


class _Rich:
    def __init__(self, progress: Any, task: Any) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)


@contextmanager
def progress(description: str, total: int) -> Iterator[_Plain | _Rich]:
    """A rich progress bar when stderr is a terminal, plain quarter-way lines otherwise."""
    if not sys.stderr.isatty():
        yield _Plain(description, total)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        yield _Rich(bar, bar.add_task(description, total=total))
