"""``dlrm-bench cases``: the seed's test cases, numbered like ``ctest -N``.

With ``--suite`` or ``--cases``, the suite's cases (numbered within the suite) and, for each case
this host cannot run, why: ``not supported on <host>: <reason>`` (CPU flags, honouring
``DLRM_BENCH_CPU_FLAGS``, and the launcher's core layout).
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

from dlrm_bench import suites
from dlrm_bench.config import SEED_CASE_PREFIX, all_cases


def _shown(name: str, seed_names: bool) -> str:
    return f"{SEED_CASE_PREFIX}{name}" if seed_names else name


def _suite_command(args: argparse.Namespace) -> int:
    from dlrm_bench.commands.suite import host_plan

    args.host_label = args.host_label or socket.gethostname()
    doc = host_plan(args)
    cases = [c for c in doc["cases"] if not args.filter or args.filter in c["name"]]
    for case in cases:
        line = f"  Test #{case['number']}: {_shown(case['name'], args.seed_names)}"
        if not case["supported"]:
            line += f"  (not supported on {doc['host']}: {case['reason']})"
        print(line)
    unsupported = sum(not c["supported"] for c in cases)
    note = f" ({unsupported} not supported on {doc['host']})" if unsupported else ""
    print(f"\nTotal Tests: {len(cases)}{note}")
    return 0


def _command(args: argparse.Namespace) -> int:
    if args.suite or args.cases:
        return _suite_command(args)
    cases = all_cases()
    if args.filter:
        cases = [c for c in cases if args.filter in c]
    for number, name in enumerate(cases, start=1):
        print(f"  Test #{number}: {_shown(name, args.seed_names)}")
    print(f"\nTotal Tests: {len(cases)}")
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser("cases", help="list the test cases (like ctest -N)")
    parser.add_argument("--filter", help="only cases containing this text")
    parser.add_argument("--seed-names", action="store_true",
                        help="print the seed's full names (test_dlrm_pytorch_xeon_public_...)")
    parser.add_argument("--suite", choices=list(suites.SUITES),
                        help="the cases of a suite, with what this host cannot run and why "
                             "(see `dlrm-bench suite list`)")
    parser.add_argument("--cases", help="these test cases (comma-separated), as a suite")
    parser.add_argument("--overrides", metavar="JSON",
                        help='per-case parameters, e.g. {"inference_latency_*": '
                             '{"cores_per_instance": 1}}')
    parser.add_argument("--params", metavar="JSON",
                        help="the run's parameters (cores_per_instance, instance_number)")
    parser.add_argument("--host-label", help="this host's name in the list (default: hostname)")
    parser.set_defaults(func=_command)
