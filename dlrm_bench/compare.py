"""``dlrm-bench compare RUN_A RUN_B``: per-metric deltas and whether they exceed the runs' noise.

A run is a results directory (``results/<run_id>``, a host dir, ``results/`` with ``latest``) or
a ``results.jsonl``. Metrics compared: cluster throughput, throughput per host, cluster latency
p50/p99 and the mean AUC.

Spread (how much a figure moves between measurements of the same configuration), per metric and
per run, from the best source the run has:

1. repeats: several measurements of the whole run (``repeat-N/`` directories at any level below
   the run dir, e.g. ``results/<id>/<host>/repeat-0/``, or a ``repeat`` key in the samples'
   metadata): the figure is their mean, its standard error ``sd / sqrt(n)``;
2. instances: a single measurement with several instances: the relative standard error of the
   instances' values, ``(sd / mean) / sqrt(n)``, applied to the figure (for a sum such as the
   cluster throughput that is exactly the relative error of the sum of n independent instances;
   systematic differences between instances make it conservative);
3. none: one value: only the noise floor applies.

A change is **significant** when ``|B - A|`` exceeds both the noise floor (default 3 % of A: the
run-to-run variation of a tuned Xeon host, below which a difference is not worth a claim) and
twice the combined standard error ``2 sqrt(se_A^2 + se_B^2)`` (about 95 % two-sided).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlrm_bench import kpi
from dlrm_bench.errors import UserError

DEFAULT_NOISE_FLOOR = 0.03
Z = 2.0
METRICS = (("throughput", "throughput", "samples/s", True),
           ("latency_p50", "latency p50", "ms", False),
           ("latency_p99", "latency p99", "ms", False),
           ("auc", "AUC", "", True))
_REPEAT = re.compile(r"^repeat-(\d+)$")
# Bookkeeping that differs between runs of the same configuration.
IGNORED_CONFIG = {"steps_given", "output", "instance_id", "barrier_dir", "weights_cache"}


@dataclass
class Snapshot:
    """One measurement of a run (one repeat): cluster, per-host and per-instance figures."""

    cluster: dict[str, float]
    hosts: dict[str, dict[str, float]]
    instances: dict[str, list[dict[str, float]]]  # host -> its ok instances


@dataclass
class RunData:
    path: Path
    config: dict[str, Any]
    repeats: list[Snapshot]


@dataclass
class Estimate:
    value: float | None
    rel_se: float  # relative standard error of value (0: unknown)
    n: int
    source: str  # repeats | instances | none


@dataclass
class Comparison:
    scope: str  # "cluster" or a host name
    metric: str
    label: str
    unit: str
    a: Estimate
    b: Estimate
    delta: float
    rel: float | None
    threshold: float  # |delta| must exceed it
    significant: bool
    better: bool | None  # None when not significant

    def to_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "metric": self.metric, "unit": self.unit,
                "a": self.a.value, "b": self.b.value, "delta": self.delta,
                "relative_change": self.rel, "threshold": self.threshold,
                "spread_source": [self.a.source, self.b.source],
                "significant": self.significant, "better": self.better}


@dataclass
class Report:
    a: RunData
    b: RunData
    noise_floor: float
    comparisons: list[Comparison]
    config_diff: dict[str, tuple[Any, Any]]
    only_in: dict[str, list[str]] = field(default_factory=dict)

    @property
    def significant(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.significant]

    def to_dict(self) -> dict[str, Any]:
        return {"a": str(self.a.path), "b": str(self.b.path), "noise_floor": self.noise_floor,
                "repeats": [len(self.a.repeats), len(self.b.repeats)],
                "config_diff": {k: list(v) for k, v in self.config_diff.items()},
                "only_in": self.only_in, "significant": bool(self.significant),
                "comparisons": [c.to_dict() for c in self.comparisons]}


def _figures(metrics: dict[str, Any]) -> dict[str, float]:
    lat = metrics.get("latency_ms") or {}
    raw = {"throughput": metrics.get("throughput_samples_per_s"),
           "latency_p50": lat.get("p50"), "latency_p99": lat.get("p99"),
           "auc": metrics.get("auc")}
    return {k: float(v) for k, v in raw.items() if v is not None}


def snapshot_of(cluster: kpi.ClusterKpi) -> Snapshot:
    return Snapshot(cluster=_figures(cluster.metrics),
                    hosts={h.host: _figures(h.metrics) for h in cluster.hosts},
                    instances={h.host: [_figures(i.metrics) for i in h.ok_instances]
                               for h in cluster.hosts})


def _repeat_index(path: Path, root: Path) -> int:
    for part in path.relative_to(root).parts:
        match = _REPEAT.match(part)
        if match:
            return int(match.group(1))
    return 0


def load_dir(root: Path) -> RunData:
    groups: dict[int, list[Path]] = {}
    for host_dir in kpi.find_host_dirs(root, depth=5):
        groups.setdefault(_repeat_index(host_dir, root), []).append(host_dir)
    if not groups:
        jsonl = root / "results.jsonl"
        if jsonl.is_file():
            return load_jsonl(jsonl)
        raise UserError(f"no results in {root} (expected <host>/{kpi.HOST_RESULT}, "
                        f"{kpi.INSTANCE_GLOB} or results.jsonl)")
    clusters = [kpi.rollup(groups[k]) for k in sorted(groups)]
    return RunData(root, clusters[0].config, [snapshot_of(c) for c in clusters])


def load_jsonl(path: Path) -> RunData:
    """Samples as ``dlrm-bench kpi`` writes them (``metadata.level``: instance/host/cluster)."""
    snaps: dict[int, Snapshot] = {}
    insts: dict[int, dict[tuple[str, str], dict[str, float]]] = {}
    config: dict[str, Any] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
            meta, name, value = sample["metadata"], sample["metric"], float(sample["value"])
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}:{number}: not a dlrm-bench sample") from None
        level, host = meta.get("level"), str(meta.get("host"))
        if level == "run":  # a repeated run's combined figures: the repeats' own come apart
            continue
        snap = snaps.setdefault(int(meta.get("repeat") or 0), Snapshot({}, {}, {}))
        if level == "cluster":
            snap.cluster[name] = value
            config = config or {k: v for k, v in meta.items() if k not in (
                "level", "host", "instance", "hosts", "cores", "key_kpi", "instances", "status",
                "repeat")}
        elif level == "host":
            snap.hosts.setdefault(host, {})[name] = value
        elif level == "instance" and meta.get("status", "ok") == "ok":
            key = (host, str(meta.get("instance")))
            insts.setdefault(int(meta.get("repeat") or 0), {}).setdefault(key, {})[name] = value
    if not snaps:
        raise UserError(f"no samples in {path}")
    for rep, by_instance in insts.items():
        for (host, _), figures in sorted(by_instance.items()):
            snaps[rep].instances.setdefault(host, []).append(figures)
    return RunData(path, config, [snaps[k] for k in sorted(snaps)])


def load_run(path: str | Path) -> RunData:
    """A run from a results dir or a ``results.jsonl``; ``UserError`` when there is none."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist")
    if p.is_file():
        return load_jsonl(p)
    latest = p / "latest"
    if latest.is_symlink() and latest.is_dir() and not kpi.find_host_dirs(p, depth=0):
        p = latest.resolve()
    return load_dir(p)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def estimate(run: RunData, scope: str, metric: str) -> Estimate:
    """The figure of ``metric`` at ``scope`` ("cluster" or a host) and its spread."""
    def level(s: Snapshot) -> dict[str, float]:
        return s.cluster if scope == "cluster" else s.hosts.get(scope, {})

    values = [level(s)[metric] for s in run.repeats if metric in level(s)]
    if len(values) >= 2:
        mean, sd = _mean_sd(values)
        rel = sd / abs(mean) / math.sqrt(len(values)) if mean else 0.0
        return Estimate(mean, rel, len(values), "repeats")
    if not values:
        return Estimate(None, 0.0, 0, "none")
    snap = next(s for s in run.repeats if metric in level(s))
    hosts = list(snap.instances) if scope == "cluster" else [scope]
    inst = [i[metric] for h in hosts for i in snap.instances.get(h, []) if metric in i]
    if len(inst) >= 2:
        mean, sd = _mean_sd(inst)
        rel = sd / abs(mean) / math.sqrt(len(inst)) if mean else 0.0
        return Estimate(values[0], rel, len(inst), "instances")
    return Estimate(values[0], 0.0, 1, "none")


def compare_metric(a: Estimate, b: Estimate, scope: str, metric: str,
                   noise_floor: float) -> Comparison | None:
    _, label, unit, higher_better = next(m for m in METRICS if m[0] == metric)
    if a.value is None or b.value is None:
        return None
    delta = b.value - a.value
    rel = delta / abs(a.value) if a.value else None
    se = math.hypot(a.value * a.rel_se, b.value * b.rel_se)
    threshold = max(noise_floor * abs(a.value), Z * se)
    significant = abs(delta) > threshold
    better = ((delta > 0) == higher_better) if significant else None
    return Comparison(scope, metric, label, unit, a, b, delta, rel, threshold, significant,
                      better)


def compare_runs(a: RunData, b: RunData,
                 noise_floor: float = DEFAULT_NOISE_FLOOR) -> Report:
    scopes = ["cluster"]
    hosts_a = {h for s in a.repeats for h in s.hosts}
    hosts_b = {h for s in b.repeats for h in s.hosts}
    shared = sorted(hosts_a & hosts_b)
    if len(shared) > 1 or len(hosts_a | hosts_b) > 1:
        scopes += shared
    comparisons: list[Comparison] = []
    for scope in scopes:
        metrics = [m[0] for m in METRICS] if scope == "cluster" else ["throughput"]
        for metric in metrics:
            c = compare_metric(estimate(a, scope, metric), estimate(b, scope, metric), scope,
                               metric, noise_floor)
            if c is not None:
                comparisons.append(c)
    keys = (set(a.config) | set(b.config)) - IGNORED_CONFIG
    diff = {k: (a.config.get(k), b.config.get(k)) for k in sorted(keys)
            if a.config.get(k) != b.config.get(k)}
    only = {"a": sorted(hosts_a - hosts_b), "b": sorted(hosts_b - hosts_a)}
    return Report(a, b, noise_floor, comparisons, diff,
                  {k: v for k, v in only.items() if v})


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "samples/s":
        return f"{value:,.1f}"
    return f"{value:.4f}" if unit == "" else f"{value:.3f}"


def format_report(report: Report) -> list[str]:
    """Plain-text lines: configuration differences, one line per metric, the verdict."""
    lines = [f"A: {report.a.path} ({len(report.a.repeats)} repeat(s))",
             f"B: {report.b.path} ({len(report.b.repeats)} repeat(s))"]
    for key, (va, vb) in report.config_diff.items():
        lines.append(f"config differs: {key}: {va} -> {vb}")
    for side, hosts in report.only_in.items():
        lines.append(f"hosts only in {side.upper()}: {', '.join(hosts)}")
    header = (f"{'metric':<34} {'A':>14} {'B':>14} {'delta':>14} {'change':>9} "
              f"{'noise':>8}  verdict")
    lines += ["", header, "-" * len(header)]
    for c in report.comparisons:
        name = f"{c.scope} {c.label}" + (f" ({c.unit})" if c.unit else "")
        change = "-" if c.rel is None else f"{100 * c.rel:+.1f}%"
        noise = f"±{100 * c.threshold / abs(c.a.value):.1f}%" if c.a.value else "-"
        verdict = "within noise"
        if c.significant:
            verdict = "significant, " + ("better" if c.better else "worse")
        spread = f" [{c.a.source}/{c.b.source}]"
        lines.append(f"{name:<34} {_num(c.a.value, c.unit):>14} {_num(c.b.value, c.unit):>14} "
                     f"{_num(c.delta, c.unit):>14} {change:>9} {noise:>8}  {verdict}{spread}")
    lines.append("")
    sig = report.significant
    if not sig:
        lines.append(f"no significant change (noise floor {100 * report.noise_floor:.1f}%, "
                     f"{Z:g} x combined standard error)")
    else:
        shown = ", ".join(f"{c.scope} {c.label} {100 * (c.rel or 0):+.1f}%" for c in sig)
        lines.append(f"{len(sig)} significant change(s): {shown}")
    return lines
