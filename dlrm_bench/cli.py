"""``dlrm-bench`` command line: each subcommand lives in ``dlrm_bench.commands.<name>``.

Every command module exposes ``register(subparsers)`` and sets ``func`` on its parser; a
``UserError`` anywhere becomes one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dlrm_bench import __version__
from dlrm_bench.errors import UserError

COMMAND_MODULES = ("run", "cases", "data", "launch", "kpi", "cluster", "report", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


if __name__ == "__main__":
    sys.exit(main())
