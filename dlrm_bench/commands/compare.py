"""``dlrm-bench compare RUN_A RUN_B``: per-metric deltas, % change, significance vs. run noise."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dlrm_bench.errors import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare", help="compare two runs: deltas and whether they exceed the run-to-run noise",
        description="Compare two runs (each a results/<run-id> directory, a host run dir or a "
                    "results.jsonl): cluster throughput, per-host throughput, latency p50/p99 "
                    "and AUC, with the change in %% and whether it is significant: beyond the "
                    "noise floor and beyond 2x the combined standard error measured in the runs "
                    "(from repeat-N measurements, else from the instances' spread).")
    p.add_argument("run_a", metavar="RUN_A", help="baseline run")
    p.add_argument("run_b", metavar="RUN_B", help="run compared with the baseline")
    p.add_argument("--noise-floor", type=float, default=3.0, metavar="PCT",
                   help="smallest change reported as significant, in %% of A (default: 3)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 when a change is significant and worse")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from dlrm_bench import compare

    if not 0 <= args.noise_floor < 100:
        raise UserError(f"--noise-floor {args.noise_floor}: expected a percentage in [0, 100)")
    report = compare.compare_runs(compare.load_run(args.run_a), compare.load_run(args.run_b),
                                  args.noise_floor / 100.0)
    if not report.comparisons:
        raise UserError("no metric in common between the two runs")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(compare.format_report(report)))
    regress = any(c.better is False for c in report.significant)
    return 1 if args.fail_on_regression and regress else 0
