"""``dlrm-bench kernels``: build the native backend's fused C kernels here and say whether they run.

The native backend builds them on first use anyway; this command does it ahead of a run (the
deploy role calls it on every host, so instances starting together do not all compile) and says
why not where they cannot run (no C compiler, a CPU without AVX-512 BW/VL/DQ,
``DLRM_BENCH_FUSED=0``): the backend then uses torch ops, which are slower, and records that in
each result.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dlrm_bench.errors import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "kernels", help="build the fused C kernels on this host and report whether they run",
        description="Build (once per source, compiler and user) and load the native backend's "
                    "fused C kernels; print where they are or why they cannot run here.")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a line")
    p.add_argument("--require", action="store_true",
                   help="exit with status 2 when the kernels cannot run here")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from dlrm_bench.backends import kernel_build  # torch-free once the kernel has loaded here

    state = kernel_build.status()
    if args.json:
        print(json.dumps(state, sort_keys=True))
    elif state["available"]:
        how = "built now" if state["built_now"] else "cached"
        print(f"fused kernels: ready ({state['path']}, {how})")
    else:
        print(f"fused kernels: unavailable: {state['reason']} (the native backend uses torch "
              "ops instead, slower)")
    if args.require and not state["available"]:
        raise UserError(f"fused kernels cannot run here: {state['reason']}")
    return 0
