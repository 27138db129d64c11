"""``dlrm-bench cases``: the seed's test cases, numbered like ``ctest -N``."""

from __future__ import annotations

import argparse
from typing import Any

from dlrm_bench.config import SEED_CASE_PREFIX, all_cases


def _command(args: argparse.Namespace) -> int:
    cases = all_cases()
    if args.filter:
        cases = [c for c in cases if args.filter in c]
    for number, name in enumerate(cases, start=1):
        shown = f"{SEED_CASE_PREFIX}{name}" if args.seed_names else name
        print(f"  Test #{number}: {shown}")
    print(f"\nTotal Tests: {len(cases)}")
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser("cases", help="list the test cases (like ctest -N)")
    parser.add_argument("--filter", help="only cases containing this text")
    parser.add_argument("--seed-names", action="store_true",
                        help="print the seed's full names (test_dlrm_pytorch_xeon_public_...)")
    parser.set_defaults(func=_command)
