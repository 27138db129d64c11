"""``dlrm-bench suite``: test-case suites (list, check, plan on a host, summary, report).

    dlrm-bench suite list                                   # the built-in suites
    dlrm-bench suite plan --suite gated [--cases A,B] [--overrides JSON] [--output FILE]
    dlrm-bench suite summary RUN_DIR                        # ctest-like summary, exit 8 on failure
    dlrm-bench suite report RUN_DIR [--hosts H ...]         # + per-case and suite HTML reports

``plan`` runs on each host (the Ansible benchmark stage): which cases this host's CPU flags
(``DLRM_BENCH_CPU_FLAGS`` honoured) and cores can run, and why not. ``dlrm-bench cases --suite``
lists the same like ``ctest -N``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from dataclasses import asdict
from typing import Any

from dlrm_bench import cpu, suites
from dlrm_bench.errors import UserError
from dlrm_bench.results import atomic_write_text


def _json_arg(name: str, text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{name} is not JSON: {exc}") from None
    if isinstance(value, str):  # JSON in a JSON string (an Ansible -e key=value string)
        return _json_arg(name, value)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{name} must be a JSON object")
    return value


def _layout_check() -> suites.LayoutCheck:
    """The launcher's own layout rules on this host's topology (detected once)."""
    from dlrm_bench import launcher, topology

    topo = topology.detect()

    def check(function: str, mode: str, cores: int | None, instances: int | None) -> None:
        launcher.plan_layout(topo, function, mode, cores, instances)

    return check


def host_plan(args: argparse.Namespace) -> dict[str, Any]:
    names = suites.select_cases(args.suite, args.cases)
    base = _json_arg("--params", getattr(args, "params", None))
    planned = suites.plan(names, _json_arg("--overrides", args.overrides), base,
                          layout=_layout_check())
    threshold = args.auc_threshold if getattr(args, "auc_threshold", None) is not None else \
        suites.default_auc_threshold(str(base.get("data_type") or "synthetic"),
                                     str(base.get("data_source") or "synthetic"),
                                     str(base.get("checkpoint") or ""))
    source = cpu.FLAGS_ENV if cpu.FLAGS_ENV in os.environ else str(cpu.CPUINFO)
    return {"schema_version": 1, "kind": "suite_plan", "suite": args.suite or "",
            "host": args.host_label or socket.gethostname(), "flags_source": source,
            "auc_threshold": threshold, "cases": [asdict(c) for c in planned]}


def _list(args: argparse.Namespace) -> int:
    for name, (description, select) in suites.SUITES.items():
        print(f"  {name:<11} {len(select()):>3} cases  {description}")
    return 0


def _check(args: argparse.Namespace) -> int:
    names = suites.select_cases(args.suite, args.cases)
    suites.check_overrides(_json_arg("--overrides", args.overrides))
    print(f"{args.suite or 'listed cases'}: {len(names)} test case(s)")
    return 0


def _plan(args: argparse.Namespace) -> int:
    doc = host_plan(args)
    text = json.dumps(doc, indent=1) + "\n"
    if args.output:
        atomic_write_text(args.output, text)
    sys.stdout.write(text)
    return 0


def _summary(args: argparse.Namespace) -> int:
    verdict = suites.evaluate(args.run_dir, args.hosts or (), args.auc_threshold)
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=1))
    else:
        sys.stdout.write(verdict.summary())
    return verdict.exit_code


def _report(args: argparse.Namespace) -> int:
    from dlrm_bench.suite_report import SUITE_REPORT, write_suite_outputs

    verdict = write_suite_outputs(args.run_dir, args.hosts or (), args.auc_threshold)
    sys.stdout.write(verdict.summary())
    print(f"\nsuite report: {args.run_dir.rstrip('/')}/{SUITE_REPORT}")
    return verdict.exit_code


def _selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", choices=list(suites.SUITES), help="a built-in suite")
    parser.add_argument("--cases", help="test cases, comma-separated (short or seed names)")
    parser.add_argument("--overrides", metavar="JSON",
                        help='per-case parameters: {"<case or glob>": {"steps": 5, ...}}')


def _verdict_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="results/<run_id> of a suite run")
    parser.add_argument("--hosts", nargs="*", metavar="HOST",
                        help="hosts the suite was meant to run on (default: those with a plan)")
    parser.add_argument("--auc-threshold", type=float, metavar="AUC",
                        help="accuracy cases pass at AUC >= this (default: the plans' value)")


def register(sub: Any) -> None:
    parser = sub.add_parser("suite", help="test-case suites: list, plan, summary, report",
                            description=__doc__.split("\n\n")[0])
    actions = parser.add_subparsers(dest="suite_command", metavar="ACTION", required=True)
    actions.add_parser("list", help="the built-in suites").set_defaults(func=_list)
    check = actions.add_parser("check", help="validate a selection of cases and overrides")
    _selection(check)
    check.set_defaults(func=_check)
    plan = actions.add_parser("plan", help="this host's plan: the cases it can run, and why not")
    _selection(plan)
    plan.add_argument("--params", metavar="JSON",
                      help="the run's parameters (cores_per_instance, data_type, checkpoint...)")
    plan.add_argument("--auc-threshold", type=float, metavar="AUC",
                      help="AUC threshold (default: 0.8025 with real data and a checkpoint, "
                           "else 0.60)")
    plan.add_argument("--host-label", help="this host's name in the plan (default: hostname)")
    plan.add_argument("--output", metavar="FILE", help="also write the plan to FILE")
    plan.set_defaults(func=_plan)
    summary = actions.add_parser("summary", help="ctest-like summary of a suite run (exit 8 "
                                                 "when a case failed)")
    _verdict_args(summary)
    summary.add_argument("--json", action="store_true", help="the verdicts as JSON")
    summary.set_defaults(func=_summary)
    rep = actions.add_parser("report", help="arrange a collected suite run, report every case, "
                                            "write suite.json, suite-summary.txt, "
                                            "suite-report.html; print the summary")
    _verdict_args(rep)
    rep.set_defaults(func=_report)
