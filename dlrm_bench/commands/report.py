"""``dlrm-bench report RESULTS_DIR [--output report.html]``: one self-contained HTML report."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report", help="write a self-contained HTML report (charts, KPIs, host facts)",
        description="Write one self-contained HTML file for a run directory (results/<run-id>, "
                    "a host run dir, or results/ with a 'latest' link): Key KPI, throughput per "
                    "host and instance, latency percentiles, AUC, configuration, host facts and "
                    "versions. Charts are embedded PNGs; nothing external is loaded.")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="run directory to report on")
    p.add_argument("-o", "--output", metavar="FILE.html",
                   help="where to write the report (default: RESULTS_DIR/report.html)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from dlrm_bench.report import write_report

    path = write_report(args.results_dir, args.output)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)", file=sys.stderr)
    print(path)
    return 0
