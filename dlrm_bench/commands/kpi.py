"""``dlrm-bench kpi DIR...``: the seed's Key KPI block, a per-host/instance table, results.jsonl."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from dlrm_bench import kpi


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "kpi", help="roll up host run directories: Key KPI, table, results.jsonl",
        description="Roll up one or many host run directories (or parents of them, e.g. "
                    "results/<run-id>/) into the seed's Key KPI block, a per-host and "
                    "per-instance table and PerfKitBenchmarker-style results.jsonl samples.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="host run dir(s) or parent dir(s)")
    p.add_argument("--output", metavar="FILE.jsonl",
                   help="where to write the samples (default: DIR/results.jsonl, or the dirs' "
                        "common parent)")
    p.add_argument("--no-table", action="store_true", help="print only the Key KPI block")
    p.add_argument("--expect-hosts", metavar="H1,H2", default="",
                   help="every host the run covered: those without results are named and the "
                        "KPI is marked partial")
    p.set_defaults(func=main)


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def render_table(cluster: kpi.ClusterKpi) -> Any:
    from rich.table import Table

    table = Table(title=f"{cluster.function} {cluster.mode} {cluster.precision}".strip())
    for name in ("host", "instance", "status", "cores", "cpus", "node"):
        table.add_column(name)
    for name in ("samples/s", "p50 ms", "p99 ms", "AUC"):
        table.add_column(name, justify="right")

    def row(host: str, inst: str, status: str, cores: Any, cpus: Any, nodes: Any,
            m: dict[str, Any], style: str | None = None) -> None:
        lat = m.get("latency_ms", {})
        table.add_row(host, inst, status, _fmt(cores, "d"), cpus or "-", nodes or "-",
                      _fmt(m.get("throughput_samples_per_s")), _fmt(lat.get("p50")),
                      _fmt(lat.get("p99")), _fmt(m.get("auc"), ".4f"), style=style)

    for host in cluster.hosts:
        for i in host.instances:
            row(host.host, i.instance, i.status, i.cores, i.cpus, i.nodes, i.metrics)
        cores = host.cores
        row(host.host, "all", host.status, cores, None, None, host.metrics, "bold")
    if len(cluster.hosts) > 1:
        cores = sum(h.cores or 0 for h in cluster.hosts) or None
        row("cluster", "all", "", cores, None, None, cluster.metrics, "bold")
    return table


def main(args: argparse.Namespace) -> int:
    expected = [h.strip() for h in args.expect_hosts.split(",") if h.strip()]
    cluster = kpi.rollup(args.dirs, expected_hosts=expected)
    print(cluster.kpi_block(), end="")
    if not args.no_table:
        from rich.console import Console

        wide = sys.stdout.isatty() or os.environ.get("COLUMNS")  # rich reads COLUMNS itself
        console = Console(width=None if wide else 120)
        console.print()
        console.print(render_table(cluster))
    if cluster.partial:
        print(f"dlrm-bench kpi: {cluster.partial_note}", file=sys.stderr)
    for host in cluster.hosts:
        for note in host.notes:
            print(f"dlrm-bench kpi: {host.host}: {note}", file=sys.stderr)
    samples = cluster.samples()
    path = kpi.write_jsonl(args.output or kpi.default_jsonl_path(args.dirs), samples)
    print(f"wrote {len(samples)} samples to {path}", file=sys.stderr)
    return 0
