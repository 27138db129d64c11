"""``dlrm-bench cluster run -i INVENTORY -e precision=amx_int8 ...``: run.yml with live progress.

On a terminal the per-host progress (stage, task, instances, status, elapsed) is a live table;
otherwise one plain line per change. The run ends on the Key KPI block and the per-host table;
the exit status is 1 when a host failed or was unreachable (or the run failed), 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from dlrm_bench.errors import UserError

# run_benchmark's own keyword arguments: not accepted as -e variables
RESERVED = {"inventory", "playbook_dir", "keep", "event_callback", "cancel_callback", "tracker",
            "timeout", "limit", "tags", "envvars", "restore_on_cancel", "quiet"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "cluster", help="run the whole Ansible pipeline (run.yml) on an inventory",
        description="Provision, deploy, benchmark, collect, report and restore every host of an "
                    "inventory through ansible-runner, showing per-host progress.")
    sub = p.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="run run.yml with live per-host progress",
                         description="Run run.yml on every host of INVENTORY; results land in "
                                     "RESULTS_DIR/<run-id>/<host>/.")
    run.add_argument("-i", "--inventory", metavar="INVENTORY",
                     help="inventory file (default: inventory/localhost.yml)")
    run.add_argument("-e", "--extra-vars", action="append", default=[], metavar="VARS",
                     help="Ansible variable(s): key=value [key=value...], a JSON/YAML mapping, "
                          "or @file.yml; repeatable (e.g. -e precision=amx_int8 -e steps=20)")
    run.add_argument("--results-dir", metavar="DIR",
                     help="results on the controller (default: <repository>/results)")
    run.add_argument("--run-id", help="run id (default: UTC timestamp and a random suffix)")
    run.add_argument("--playbook-dir", metavar="DIR", help="directory holding run.yml")
    run.add_argument("--limit", metavar="PATTERN", help="only these hosts (Ansible --limit)")
    run.add_argument("--timeout", type=int, metavar="S", help="stop the run after S seconds")
    run.add_argument("--keep", action="store_true",
                     help="keep ansible-runner's private data dir (artifacts, events)")
    run.add_argument("--report", nargs="?", const="", metavar="FILE.html",
                     help="also write the HTML report (default: RESULTS_DIR/<run-id>/report.html)")
    run.add_argument("--json", metavar="FILE", help="write the result summary as JSON")
    run.add_argument("--plain", action="store_true",
                     help="plain progress lines even on a terminal")
    run.set_defaults(func=main)


def _scalar(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none", "~"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_extra_vars(items: list[str]) -> dict[str, Any]:
    """``-e`` values the way ansible-playbook takes them: key=value pairs (numbers, true/false
    and null typed), a JSON or YAML mapping, or ``@file``."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        item = item.strip()
        if item.startswith("@"):
            path = Path(item[1:])
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                raise UserError(f"cannot read extra vars {path}: {exc}") from None
        elif item.startswith("{"):
            try:
                data = yaml.safe_load(item)
            except yaml.YAMLError as exc:
                raise UserError(f"bad extra vars {item!r}: {exc}") from None
        else:
            data = {}
            for pair in shlex.split(item):
                key, sep, value = pair.partition("=")
                if not sep or not key.strip():
                    raise UserError(f"bad extra var {pair!r}: expected key=value")
                data[key.strip()] = _scalar(value) if value else ""
        if not isinstance(data, dict):
            raise UserError(f"extra vars {item!r} are not a mapping")
        out.update(data)
    return out


class _LiveView:
    """The rich renderable of the live table (re-rendered on every refresh: elapsed moves)."""

    def __init__(self, tracker: Any, title: str) -> None:
        self.tracker, self.title = tracker, title

    def __rich__(self) -> Any:
        from dlrm_bench.orchestrate_events import render_table

        return render_table(self.tracker.snapshot(), self.title, time.time())


def main(args: argparse.Namespace) -> int:
    from dlrm_bench.orchestrate import run_benchmark_async
    from dlrm_bench.orchestrate_events import ProgressTracker

    params = parse_extra_vars(args.extra_vars)
    # results_dir and run_id are settled by the API (it reads the results from there)
    results_dir = args.results_dir or params.pop("results_dir", None)
    run_id = args.run_id or params.pop("run_id", None)
    params.pop("results_dir", None)
    params.pop("run_id", None)
    reserved = sorted(set(params) & RESERVED)
    if reserved:
        raise UserError(f"-e {', '.join(reserved)}: not an Ansible variable of this pipeline "
                        "(use the command's options)")
    live = sys.stderr.isatty() and not args.plain
    console = None
    if live:
        from rich.console import Console

        console = Console(stderr=True)

        def on_line(line: str) -> None:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    else:
        def on_line(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

    planned = params.get("instance_number")
    tracker = ProgressTracker(planned_instances=int(planned) if isinstance(planned, int) else None,
                              on_line=on_line)
    handle = run_benchmark_async(
        args.inventory, tracker=tracker, playbook_dir=args.playbook_dir,
        results_dir=results_dir, run_id=run_id, keep=args.keep,
        timeout=args.timeout, limit=args.limit, **params)
    interrupted = _wait(handle, tracker, console)
    result = handle.wait()
    return _finish(args, result, interrupted)


def _wait(handle: Any, tracker: Any, console: Any) -> bool:
    """Wait for the run; the first Ctrl-C cancels it (stop, restore), a second one aborts."""
    interrupted = False

    def on_sigint(_signum: int, _frame: Any) -> None:
        nonlocal interrupted
        if interrupted:
            raise KeyboardInterrupt
        interrupted = True
        print("dlrm-bench: canceling: stopping the playbook, the instances, restoring the hosts "
              "(Ctrl-C again to abort)", file=sys.stderr, flush=True)
        handle.cancel()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        if console is not None:
            from rich.live import Live

            title = f"dlrm-bench cluster run {handle.run_id}"
            with Live(_LiveView(tracker, title), console=console, refresh_per_second=2,
                      transient=False):
                while not handle.done():
                    time.sleep(0.1)
        else:
            while not handle.done():
                time.sleep(0.1)
    finally:
        signal.signal(signal.SIGINT, previous)
    return interrupted


def _finish(args: argparse.Namespace, result: Any, interrupted: bool) -> int:
    from dlrm_bench.commands.kpi import render_table

    out = sys.stdout
    if result.cluster is not None:
        from rich.console import Console

        print(result.cluster.kpi_block(), end="", file=out)
        Console(file=out, width=None if out.isatty() else 120).print(
            render_table(result.cluster))
    print(f"run {result.run_id}: {result.status} (rc {result.rc}); results in "
          f"{result.results_dir}", file=out)
    for host in result.failed_hosts:
        print(f"failed: {host}: {result.errors.get(host, 'see the results')}", file=out)
    for host in result.unreachable_hosts:
        print(f"unreachable: {host}: {result.errors.get(host, '')}", file=out)
    if result.cluster is None:
        print(f"no results in {result.results_dir}", file=out)
    if args.json:
        from dlrm_bench.results import atomic_write_text

        atomic_write_text(args.json, json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    if args.report is not None and result.cluster is not None:
        from dlrm_bench.report import write_report

        path = write_report(result.results_dir, args.report or None)
        print(f"report: {path}", file=out)
    if interrupted or result.status == "canceled":
        return 130
    return 0 if result.ok else 1
