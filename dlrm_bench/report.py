"""``dlrm-bench report``: one self-contained HTML file for a run directory.

Charts are drawn with matplotlib (Agg) and embedded as base64 PNG data URIs; the styles are
inline; nothing is fetched when the file is opened (no scripts, fonts or links). Content: the Key
KPI block, throughput per host and per instance, latency percentiles per host and the latency
distribution (when latencies were measured), AUC (when measured), the per-host/instance table,
the configuration, the host facts (CPU model, ISA flags, NUMA, governor, hugepages, THP), the
software versions (python, torch, oneDNN) and the failures with their log tails.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from pathlib import Path
from typing import Any

from dlrm_bench import __version__, kpi
from dlrm_bench.errors import UserError
from dlrm_bench.results import atomic_write_text

PERCENTILES = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99_9", "p99.9"))
COLORS = ("#0068b5", "#00a3f6", "#f5a623", "#6f42c1", "#28a745", "#d63384", "#20c997", "#6c757d")
STYLE = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1150px;color:#1b1f23;background:#fff}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;border-bottom:1px solid #ddd;
padding-bottom:4px;margin-top:30px}h3{font-size:15px;margin:14px 0 6px}
.sub{color:#555;margin-top:0}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 16px;min-width:150px}
.card .v{font-size:22px;font-weight:600}.card .l{color:#555;font-size:12px}
pre{background:#f6f8fa;padding:10px;border-radius:6px;overflow-x:auto;font-size:12px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left}th{background:#f6f8fa}
td.n{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b31d28;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:8px}.charts img{max-width:100%;height:auto;
border:1px solid #eee}
"""


def resolve_run_dir(path: str | Path) -> Path:
    """A run directory (``results/<run_id>``, a host dir, or ``results/`` with a ``latest``)."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"{root} does not exist")
    if not root.is_dir():
        raise UserError(f"{root} is not a directory")
    latest = root / "latest"
    if latest.is_dir() and not (root / kpi.HOST_RESULT).is_file() and latest.is_symlink():
        return latest.resolve()
    if not kpi.find_host_dirs(root):
        raise UserError(f"no results in {root} (expected <host>/{kpi.HOST_RESULT} or "
                        f"{kpi.INSTANCE_GLOB})")
    return root


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 5.6, height: float = 3.3) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _bar_labels(ax: Any, bars: Any, fmt: str = "{:,.0f}") -> None:
    for bar in bars:
        height = bar.get_height()
        ax.annotate(fmt.format(height), (bar.get_x() + bar.get_width() / 2, height),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")


def chart_throughput_hosts(cluster: kpi.ClusterKpi) -> str | None:
    hosts = [(h.host, h.metrics.get("throughput_samples_per_s")) for h in cluster.hosts]
    hosts = [(n, v) for n, v in hosts if v is not None]
    if not hosts:
        return None
    fig, ax = _figure()
    bars = ax.bar([n for n, _ in hosts], [v for _, v in hosts],
                  color=[COLORS[i % len(COLORS)] for i in range(len(hosts))])
    _bar_labels(ax, bars)
    total = cluster.metrics.get("throughput_samples_per_s") or 0.0
    ax.set_title(f"Throughput per host (cluster {total:,.1f} samples/s)", fontsize=11)
    ax.set_ylabel("samples/s")
    return _png(fig)


def chart_throughput_instances(cluster: kpi.ClusterKpi) -> str | None:
    labels, values, colors = [], [], []
    for k, host in enumerate(cluster.hosts):
        for inst in host.instances:
            value = inst.metrics.get("throughput_samples_per_s")
            if value is not None and inst.status == "ok":
                labels.append(f"{host.host}/{inst.instance}")
                values.append(value)
                colors.append(COLORS[k % len(COLORS)])
    if not values:
        return None
    fig, ax = _figure(max(5.6, 0.5 * len(values) + 2))
    bars = ax.bar(range(len(values)), values, color=colors)
    _bar_labels(ax, bars)
    ax.set_xticks(range(len(values)), labels, rotation=30 if len(values) > 4 else 0,
                  ha="right" if len(values) > 4 else "center", fontsize=8)
    ax.set_title("Throughput per instance (host/instance)", fontsize=11)
    ax.set_ylabel("samples/s")
    return _png(fig)


def chart_latency_percentiles(cluster: kpi.ClusterKpi) -> str | None:
    rows = [(h.host, h.metrics.get("latency_ms") or {}) for h in cluster.hosts]
    if len(cluster.hosts) > 1:
        rows.append(("cluster", cluster.metrics.get("latency_ms") or {}))
    rows = [(n, lat) for n, lat in rows if any(k in lat for k, _ in PERCENTILES)]
    if not rows:
        return None
    import numpy as np

    fig, ax = _figure(max(5.6, 1.2 * len(rows) + 3))
    width = 0.8 / len(PERCENTILES)
    x = np.arange(len(rows))
    for j, (key, name) in enumerate(PERCENTILES):
        vals = [lat.get(key, 0.0) for _, lat in rows]
        bars = ax.bar(x + (j - (len(PERCENTILES) - 1) / 2) * width, vals, width, label=name,
                      color=COLORS[j])
        _bar_labels(ax, bars, "{:.2f}")
    ax.set_xticks(x, [n for n, _ in rows])
    ax.set_ylabel("ms per batch")
    ax.set_title("Latency percentiles per host", fontsize=11)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def chart_latency_cdf(cluster: kpi.ClusterKpi) -> str | None:
    series = []
    for host in cluster.hosts:
        raw = [v for i in host.ok_instances for v in i.metrics.get("latencies_ms") or []]
        if len(raw) >= 2:
            series.append((host.host, sorted(raw)))
    if not series:
        return None
    import numpy as np

    fig, ax = _figure()
    for k, (name, raw) in enumerate(series):
        ax.plot(raw, np.arange(1, len(raw) + 1) / len(raw), label=name,
                color=COLORS[k % len(COLORS)], drawstyle="steps-post")
    ax.set_xscale("log")
    ax.set_xlabel("ms per batch (log)")
    ax.set_ylabel("fraction of batches")
    ax.set_title("Latency distribution (per-batch CDF)", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def chart_auc(cluster: kpi.ClusterKpi) -> str | None:
    labels, values, colors = [], [], []
    for k, host in enumerate(cluster.hosts):
        for inst in host.ok_instances:
            if inst.metrics.get("auc") is not None:
                labels.append(f"{host.host}/{inst.instance}")
                values.append(float(inst.metrics["auc"]))
                colors.append(COLORS[k % len(COLORS)])
    if not values:
        return None
    fig, ax = _figure(max(5.6, 0.5 * len(values) + 2))
    bars = ax.bar(range(len(values)), values, color=colors)
    _bar_labels(ax, bars, "{:.4f}")
    low, high = min(values), max(values)
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.03))
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    mean = cluster.metrics.get("auc")
    ax.set_title("AUC per instance" + (f" (mean {mean:.4f})" if mean is not None else ""),
                 fontsize=11)
    return _png(fig)


CHARTS = (("throughput per host", chart_throughput_hosts),
          ("throughput per instance", chart_throughput_instances),
          ("latency percentiles per host", chart_latency_percentiles),
          ("latency distribution", chart_latency_cdf),
          ("AUC per instance", chart_auc))


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(f"<td{' class=n' if i in numeric else ''}>{_cell(v)}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) >= 1 else f"{value:.4f}"
    if isinstance(value, list | tuple):
        return html.escape(" ".join(map(str, value))) or "-"
    if isinstance(value, dict):
        return html.escape(", ".join(f"{k}: {v}" for k, v in value.items())) or "-"
    return html.escape(str(value))


def _kpi_table(cluster: kpi.ClusterKpi) -> str:
    rows = []

    def add(host: str, inst: str, status: str, cores: Any, cpus: Any, m: dict[str, Any]) -> None:
        lat = m.get("latency_ms") or {}
        rows.append([host, inst, status, cores, cpus, m.get("throughput_samples_per_s"),
                     lat.get("p50"), lat.get("p99"), m.get("auc")])

    for host in cluster.hosts:
        for i in host.instances:
            add(host.host, i.instance, i.status, i.cores, i.cpus, i.metrics)
        add(host.host, "all", host.status, host.cores, None, host.metrics)
    if len(cluster.hosts) > 1 or cluster.repeats:
        add("cluster", "all", "", None, None, cluster.metrics)
    for rep in cluster.repeats:  # the run-to-run spread behind the mean
        add(f"cluster, repeat {rep.repeat}", "all", "partial" if rep.partial else "", None, None,
            rep.metrics)
    return _table(["host", "instance", "status", "cores", "cpus", "samples/s", "p50 ms",
                   "p99 ms", "AUC"], rows, {3, 5, 6, 7, 8})


def host_details(host: kpi.HostKpi) -> dict[str, Any]:
    """Facts, versions, layout and tuning of one host, from its result files."""
    path = Path(host.path)
    result: dict[str, Any] = {}
    for inst in host.ok_instances + host.instances:
        result = _read_json(Path(inst.path)) if inst.path.endswith(".json") else {}
        if result:
            break
    host_result = _read_json(path / kpi.HOST_RESULT)
    ansible = _read_json(path / "ansible-host.json")
    return {"facts": result.get("host") or {}, "versions": result.get("versions") or {},
            "model": result.get("model") or {}, "host_result": host_result,
            "tuning": ansible.get("tuning") or {}, "ansible_host": ansible.get("host") or {}}


def _facts_section(cluster: kpi.ClusterKpi) -> str:
    rows: list[list[Any]] = []
    vers: list[list[Any]] = []
    for host in cluster.hosts:
        d = host_details(host)
        f, hr, tuning = d["facts"], d["host_result"], d["tuning"]
        mem = f.get("memory_bytes")
        rows.append([host.host, f.get("cpu_model"), f.get("sockets"),
                     len(f.get("numa_nodes") or {}) or (hr.get("topology") or {}).get("numa_nodes"),
                     f.get("logical_cpus"), f"{mem / 2**30:.1f} GiB" if mem else None,
                     f.get("isa_flags"), f.get("governor"), _hugepages(f.get("hugepages")),
                     f.get("thp"),
                     f.get("kernel"), (hr.get("pinning") or {}).get("method"),
                     (hr.get("allocator") or {}).get("name"),
                     {k: tuning[k] for k in ("governor", "hugepages", "thp") if tuning.get(k)}])
        v = d["versions"]
        vers.append([host.host, v.get("python"), v.get("torch"), v.get("onednn"),
                     v.get("backend"), v.get("dlrm_bench"), v.get("numpy")])
    facts = _table(["host", "CPU model", "sockets", "NUMA nodes", "logical CPUs", "memory",
                    "ISA flags (AMX/AVX-512)", "governor", "hugepages", "THP", "kernel",
                    "pinning", "allocator", "tuned by Ansible"], rows)
    versions = _table(["host", "python", "torch", "oneDNN", "backend", "dlrm-bench", "numpy"],
                      vers)
    return f"<h2>Hosts</h2>{facts}<h3>Software versions</h3>{versions}"


def _hugepages(pools: Any) -> str | None:
    if not isinstance(pools, dict) or not pools:
        return None
    return ", ".join(f"{size}: {p.get('nr')} (free {p.get('free')})" if isinstance(p, dict)
                     else f"{size}: {p}" for size, p in pools.items())


def _failures_section(cluster: kpi.ClusterKpi) -> str:
    parts = []
    for host in cluster.hosts:
        hr = host_details(host)["host_result"]
        for inst in hr.get("instances") or []:
            if inst.get("state") in ("failed", "stopped") or inst.get("exit_code") not in (0, None):
                tail = "\n".join(inst.get("log_tail") or []) if isinstance(
                    inst.get("log_tail"), list) else str(inst.get("log_tail") or "")
                parts.append(f"<h3 class=bad>{html.escape(host.host)} instance {inst.get('id')}: "
                             f"{html.escape(str(inst.get('exit') or inst.get('state')))}</h3>"
                             f"<pre>{html.escape(tail)}</pre>")
        for note in host.notes:
            parts.append(f"<p class=bad>{html.escape(host.host)}: {html.escape(note)}</p>")
    return "<h2>Failures</h2>" + "".join(parts) if parts else ""


def _cards(cluster: kpi.ClusterKpi) -> str:
    m = cluster.metrics
    lat = m.get("latency_ms") or {}
    items = [("cluster throughput", m.get("throughput_samples_per_s"), "samples/s", "{:,.1f}"),
             ("latency p50", lat.get("p50"), "ms", "{:.3f}"),
             ("latency p99", lat.get("p99"), "ms", "{:.3f}"),
             ("AUC", m.get("auc"), "", "{:.4f}"),
             ("hosts", len(cluster.hosts), "", "{}"),
             ("instances", sum(len(h.instances) for h in cluster.hosts), "", "{}")]
    return "<div class=cards>" + "".join(
        f"<div class=card><div class=v>{fmt.format(v)} {unit}</div><div class=l>{label}</div>"
        "</div>" for label, v, unit, fmt in items if v is not None) + "</div>"


def render_report(run_dir: str | Path) -> str:
    """The HTML text of the report for ``run_dir`` (see ``resolve_run_dir``)."""
    root = resolve_run_dir(run_dir)
    cluster = kpi.rollup([root])
    charts = [(name, draw(cluster)) for name, draw in CHARTS]
    imgs = "".join(f'<img src="{src}" alt="{name}" title="{name}">' for name, src in charts
                   if src)
    title = f"{cluster.function} {cluster.mode} {cluster.precision}".strip()
    config_rows = [[k, v] for k, v in sorted(cluster.config.items())]
    summary = root / "summary.txt"
    status = "ok" if all(h.status == "ok" for h in cluster.hosts) else "failed"
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dlrm-bench report: {html.escape(root.name)}</title><style>{STYLE}</style></head>
<body>
<h1>dlrm-bench report: {html.escape(title)}</h1>
<p class=sub>run <b>{html.escape(root.name)}</b> &middot; {len(cluster.hosts)} host(s) &middot;
status <b class="{'' if status == 'ok' else 'bad'}">{status}</b> &middot;
{html.escape(str(root))}</p>
{_cards(cluster)}
<h2>Key KPI</h2><pre>{html.escape(cluster.kpi_block())}</pre>
<h2>Charts</h2><div class=charts>{imgs}</div>
<h2>Hosts and instances</h2>{_kpi_table(cluster)}
{_failures_section(cluster)}
<h2>Configuration</h2>{_table(["parameter", "value"], config_rows)}
{_facts_section(cluster)}
{f"<h2>Summary</h2><pre>{html.escape(summary.read_text(errors='replace'))}</pre>"
 if summary.is_file() else ""}
<p class=sub>generated by dlrm-bench {__version__} on {generated}</p>
</body></html>
"""


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Render the report and write it atomically (default: ``<run_dir>/report.html``)."""
    text = render_report(run_dir)
    target = Path(output) if output else resolve_run_dir(run_dir) / "report.html"
    return atomic_write_text(target, text)
