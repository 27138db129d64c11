"""``dlrm-bench`` command line: each subcommand lives in ``dlrm_bench.commands.<name>``.

Every command module exposes ``register(subparsers)`` and sets ``func`` on its parser; a
``UserError`` anywhere becomes one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from dlrm_bench import __version__
from dlrm_bench.errors import UserError

# Storage failures reported as one line (exit 1): disk full, quota, read-only, too large, I/O.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO)
COMMAND_MODULES = ("run", "cases", "suite", "data", "launch", "kpi", "cluster", "report",
                   "compare", "kernels")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (like a ``UserError``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("dlrm-bench").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"dlrm-bench: error: {where}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dlrm-bench",
        description="DLRM (Criteo Terabyte) benchmark for Intel Xeon CPUs.",
    )
    parser.add_argument("--version", action="version", version=f"dlrm-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"dlrm_bench.commands.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet (or its optional extra)
            if exc.name and exc.name.startswith("dlrm_bench.commands"):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"dlrm-bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dlrm-bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except OSError as exc:  # a full or read-only disk: one line, not a traceback
        if exc.errno not in STORAGE_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"dlrm-bench: error: cannot write {where}{exc.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
