"""A suite run's outputs on the controller: case-major layout, per-case KPIs and reports, verdicts.

``write_suite_outputs(run_dir)`` (what ``dlrm-bench suite report`` and the Ansible report role run):

1. ``arrange``: the collect stage brings each host's run home whole, as
   ``<run_dir>/<host>/<case>/``; each case directory moves to ``<run_dir>/<case>/<host>/``, so that
   ``<run_dir>/<case>/`` is an ordinary run directory (``dlrm-bench kpi``, ``report`` and
   ``compare`` work on it); ``<run_dir>/<host>/`` keeps the host's ``suite-plan.json``.
2. per case: ``results.jsonl``, ``summary.txt`` (the Key KPI block) and ``report.html``
   (``dlrm_bench.report``) in ``<run_dir>/<case>/``;
3. the verdicts (``dlrm_bench.suites.evaluate``): ``suite.json``, ``suite-summary.txt`` (ctest's
   summary) and ``suite-report.html``: the per-case KPI table with verdicts, a precision sweep
   chart per function and case type (throughput per precision per host) and links to the cases'
   reports. Self-contained like ``report.html``: embedded PNGs, inline styles.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Sequence
from pathlib import Path

from dlrm_bench import __version__, kpi, report, suites
from dlrm_bench.config import PRECISIONS
from dlrm_bench.errors import UserError
from dlrm_bench.results import atomic_write_text

SUITE_JSON = "suite.json"
SUITE_SUMMARY = "suite-summary.txt"
SUITE_REPORT = "suite-report.html"
VERDICT_CLASS = {"Passed": "ok", "Failed": "bad", "Not Run": "skip"}
STYLE = report.STYLE + ".ok{color:#1a7f37;font-weight:600}.skip{color:#6c757d}"


def arrange(run_dir: Path) -> list[str]:
    """Move ``<host>/<case>/`` to ``<case>/<host>/`` for every case of every host's plan.

    Idempotent: a case already in place is left alone; returns what could not be moved."""
    notes = []
    for host, doc in suites.load_plans(run_dir).items():
        for case in doc.get("cases") or []:
            source, target = run_dir / host / case["name"], run_dir / case["name"] / host
            if not source.is_dir():
                continue
            if target.exists():
                notes.append(f"{source} not moved: {target} exists")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)
    return notes


def write_case_outputs(run_dir: Path, name: str) -> Path | None:
    """``results.jsonl``, ``summary.txt`` and ``report.html`` of one case (``None``: no results
    to report, e.g. the launch failed on every host before any instance started)."""
    case_dir = run_dir / name
    if not case_dir.is_dir() or not kpi.find_host_dirs(case_dir):
        return None
    try:
        cluster = kpi.rollup([case_dir])
        kpi.write_jsonl(case_dir / "results.jsonl", cluster.samples())
        atomic_write_text(case_dir / "summary.txt",
                          f"case {name} of run {run_dir.name} on {len(cluster.hosts)} host(s)\n"
                          + cluster.kpi_block())
        return report.write_report(case_dir)
    except UserError:
        return None


def chart_precision_sweeps(verdict: suites.SuiteVerdict) -> list[tuple[str, str]]:
    """Throughput per precision per host: one chart per (function, case type) that has results."""
    import numpy as np

    groups: dict[tuple[str, str], list[suites.CaseVerdict]] = {}
    for case in verdict.cases:
        if case.mode == "throughput":
            groups.setdefault((case.function, case.case_type), []).append(case)
    charts = []
    for (function, case_type), cases in groups.items():
        cases.sort(key=lambda c: PRECISIONS.index(c.precision))
        values = {(c.precision, h.host): h.key_kpi["value"] for c in cases for h in c.hosts
                  if h.status == "passed" and h.key_kpi and h.key_kpi.get("value") is not None}
        hosts = [h for h in verdict.hosts if any(k[1] == h for k in values)]
        if not hosts:
            continue
        precisions = [c.precision for c in cases]
        fig, ax = report._figure(max(5.6, 1.1 * len(precisions) * max(1, len(hosts)) ** 0.5 + 2))
        width = 0.8 / len(hosts)
        x = np.arange(len(precisions))
        for j, host in enumerate(hosts):   # a precision a host did not run has no bar
            ran = [i for i, p in enumerate(precisions) if (p, host) in values]
            bars = ax.bar(x[ran] + (j - (len(hosts) - 1) / 2) * width,
                          [values[(precisions[i], host)] for i in ran], width, label=host,
                          color=report.COLORS[j % len(report.COLORS)])
            report._bar_labels(ax, bars)
        ax.set_xticks(x, precisions, fontsize=8)
        ax.set_ylabel("samples/s")
        title = f"{function} throughput per precision" + (f" ({case_type})" if case_type else "")
        ax.set_title(title, fontsize=11)
        if len(hosts) > 1:
            ax.legend(fontsize=8, frameon=False)
        charts.append((title, report._png(fig)))
    return charts


def _kpi_text(value: dict | None) -> str:
    if not value or value.get("value") is None:
        return "-"
    return f"{value['value']:,.3f} {value['unit']}"


def _cases_table(verdict: suites.SuiteVerdict, links: dict[str, str]) -> str:
    head = ["#", "test case", "verdict", "time (s)", "key KPI (all hosts)",
            *verdict.hosts, "notes", "report"]
    rows = []
    for case in verdict.cases:
        cells = [str(case.number), html.escape(case.name),
                 f"<span class={VERDICT_CLASS[case.status]}>{case.status}</span>",
                 f"{case.seconds:.1f}", html.escape(_kpi_text(case.key_kpi) + (
                     " (partial)" if case.status == "Failed" and case.key_kpi else ""))]
        for host in case.hosts:
            shown = {"passed": _kpi_text(host.key_kpi), "failed": "FAILED",
                     "not supported": "not supported"}[host.status]
            cls = {"passed": "", "failed": " class=bad", "not supported": " class=skip"}[
                host.status]
            cells.append(f"<span{cls}>{html.escape(shown)}</span>")
        cells.append(html.escape("; ".join(case.notes)) or "-")
        link = links.get(case.name)
        cells.append(f'<a href="{html.escape(link)}">report</a>' if link else "-")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def render_suite_report(verdict: suites.SuiteVerdict, links: dict[str, str]) -> str:
    root = Path(verdict.run_dir)
    counts = {s: len(verdict.with_status(s)) for s in ("Passed", "Failed", "Not Run")}
    cards = "".join(f"<div class=card><div class='v {VERDICT_CLASS[s]}'>{n}</div>"
                    f"<div class=l>{s.lower()}</div></div>" for s, n in counts.items())
    charts = "".join(f'<img src="{src}" alt="{html.escape(t)}" title="{html.escape(t)}">'
                     for t, src in chart_precision_sweeps(verdict))
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    status = "failed" if counts["Failed"] else "passed"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dlrm-bench suite: {html.escape(root.name)}</title><style>{STYLE}</style></head>
<body>
<h1>dlrm-bench suite {html.escape(verdict.suite or "(listed cases)")}</h1>
<p class=sub>run <b>{html.escape(root.name)}</b> &middot; {len(verdict.cases)} test case(s) on
{len(verdict.hosts)} host(s): {html.escape(", ".join(verdict.hosts))} &middot;
<b class={'bad' if status == 'failed' else 'ok'}>{status}</b> &middot;
AUC threshold {verdict.auc_threshold:.4f}</p>
<div class=cards>{cards}</div>
<h2>Test cases</h2>{_cases_table(verdict, links)}
{f"<h2>Precision sweep</h2><div class=charts>{charts}</div>" if charts else ""}
<h2>Summary</h2><pre>{html.escape(verdict.summary())}</pre>
<p class=sub>generated by dlrm-bench {__version__} on {generated}</p>
</body></html>
"""


def write_suite_outputs(run_dir: str | Path, hosts: Sequence[str] = (),
                        auc_threshold: float | None = None) -> suites.SuiteVerdict:
    """Arrange, report every case, judge the suite and write its summary and report."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory")
    arrange(root)
    verdict = suites.evaluate(root, hosts, auc_threshold)
    links = {}
    for case in verdict.cases:
        if write_case_outputs(root, case.name) is not None:
            links[case.name] = f"{case.name}/report.html"
    atomic_write_text(root / SUITE_JSON, json.dumps(verdict.to_dict(), indent=1) + "\n")
    atomic_write_text(root / SUITE_SUMMARY, verdict.summary())
    atomic_write_text(root / SUITE_REPORT, render_suite_report(verdict, links))
    return verdict
