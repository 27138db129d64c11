"""KPI rollup over host run directories: the seed's Key KPI block and ``results.jsonl`` samples.

Layout read: a host run dir holds ``host_result.json`` (written by ``dlrm-bench launch``) and
``instance-K/result.json``; a single ``dlrm-bench run --output DIR`` (``DIR/result.json``) counts
as a host with one instance; any other directory is searched for host dirs below it (for example
``results/<run-id>/<host>/``). A run measured several times (the pipeline's ``repeats``) holds
``repeat-N/`` host dirs (``results/<run-id>/<host>/repeat-N/``): each repeat is rolled up on its
own, and the run's figures combine them (see ``combine_repeats``).

Rules:
- throughput is the sum over the instances that finished ok, per host and over the cluster;
- latency percentiles (host and cluster) come from the MERGED raw per-batch latencies
  (``metrics.latencies_ms``) of all instances, never from averaged percentiles; numpy's default
  (linear) percentile; when an instance has no raw latencies, its percentiles are averaged in and
  the figure is marked ``latency_source: "averaged"``;
- AUC, accuracy and log loss are the mean over instances;
- the Key KPI is the seed's: ``*Throughput (samples/sec)`` (throughput mode),
  ``*Latency (ms)`` = the MEAN per-batch latency, as the seed prints it (latency mode; p50/p99 and
  throughput follow as non-key lines), ``*Accuracy (%)`` = 100 x mean AUC (accuracy mode).
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dlrm_bench.errors import UserError
from dlrm_bench.results import atomic_write_text

KPI_RULE = "#" + "=" * 48
HOST_RESULT = "host_result.json"
INSTANCE_GLOB = "instance-*/result.json"
REPEAT_DIR = re.compile(r"^repeat-(\d+)$")  # one measurement of a repeated run
# Per-instance plumbing in result.json's config: not a parameter of the benchmark.
PER_INSTANCE_KEYS = ("output", "instance_id", "barrier_dir", "barrier_timeout", "weights_cache",
                     "extra")


def run_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """The scalar benchmark parameters of a result's config (no per-instance paths)."""
    return {k: v for k, v in config.items()
            if k not in PER_INSTANCE_KEYS and isinstance(v, str | int | float | bool)}


def _mean(values: Iterable[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def merge_metrics(metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge instances' ``result.json`` metrics into one host (or cluster) figure."""
    import numpy as np  # here, not at import: the launcher forks its instances numpy-free

    from dlrm_bench.engine.metrics import latency_summary

    merged: dict[str, Any] = {"instances": len(metrics)}
    if not metrics:
        return merged
    throughputs = [m.get("throughput_samples_per_s") for m in metrics]
    if any(t is not None for t in throughputs):
        merged["throughput_samples_per_s"] = float(sum(t or 0.0 for t in throughputs))
    merged["samples"] = int(sum(m.get("samples") or 0 for m in metrics))
    raw: list[float] = []
    averaged: list[dict[str, float]] = []
    for m in metrics:
        if m.get("latencies_ms"):
            raw.extend(m["latencies_ms"])
        elif m.get("latency_ms"):
            averaged.append(m["latency_ms"])
    if raw and not averaged:
        merged["latency_ms"] = latency_summary(raw)
        merged["latency_source"] = "merged"
        merged["latency_count"] = len(raw)
    elif raw or averaged:
        parts = ([latency_summary(raw)] if raw else []) + averaged
        keys = set.intersection(*(set(p) for p in parts))
        merged["latency_ms"] = {k: float(np.mean([p[k] for p in parts])) for k in sorted(keys)}
        merged["latency_source"] = "averaged"
    for key in ("auc", "accuracy", "log_loss"):
        value = _mean(m.get(key) for m in metrics)
        if value is not None:
            merged[key] = value
    return merged


def key_kpi(mode: str, metrics: dict[str, Any]) -> tuple[str, float | None, str]:
    """The seed's key KPI for ``mode`` from merged metrics: (label, value, unit)."""
    if mode == "accuracy":
        auc = metrics.get("auc")
        return "Accuracy", None if auc is None else 100.0 * auc, "%"
    if mode == "latency":
        return "Latency", metrics.get("latency_ms", {}).get("mean"), "ms"
    return "Throughput", metrics.get("throughput_samples_per_s"), "samples/sec"


@dataclass
class InstanceKpi:
    host: str
    instance: str
    status: str
    cores: int | None
    cpus: str | None
    nodes: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    timestamp: float
    path: str
    repeat: int | None = None  # set in a repeated run's combined hosts

    def to_dict(self) -> dict[str, Any]:
        metrics = {k: v for k, v in self.metrics.items() if k != "latencies_ms"}
        return {"host": self.host, "instance": self.instance, "status": self.status,
                "cores": self.cores, "cpus": self.cpus, "nodes": self.nodes,
                "path": self.path, "timestamp": self.timestamp, "metrics": metrics}


@dataclass
class HostKpi:
    host: str
    path: str
    status: str
    instances: list[InstanceKpi]
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def ok_instances(self) -> list[InstanceKpi]:
        return [i for i in self.instances if i.status == "ok"]

    @property
    def cores(self) -> int | None:
        """Cores of the host's instances (of one repeat, in a repeated run)."""
        first = self.instances[0].repeat if self.instances else None
        return sum(i.cores or 0 for i in self.instances if i.repeat == first) or None

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "path": self.path, "status": self.status,
                "metrics": self.metrics, "notes": self.notes,
                "instances": [i.to_dict() for i in self.instances]}


@dataclass
class ClusterKpi:
    function: str
    mode: str
    precision: str
    config: dict[str, Any]
    hosts: list[HostKpi]
    metrics: dict[str, Any]
    # Hosts the run was meant to cover that produced no results (unreachable, lost mid-run):
    # the figures are then partial, and say so.
    lost_hosts: list[str] = field(default_factory=list)
    # A repeated run: the rollup of each repeat (``repeat`` set on each), which this one combines.
    repeats: list[ClusterKpi] = field(default_factory=list)
    repeat: int | None = None

    @property
    def partial(self) -> bool:
        return bool(self.lost_hosts)

    @property
    def partial_note(self) -> str:
        return f"partial: lost hosts: {', '.join(self.lost_hosts)}" if self.lost_hosts else ""

    @property
    def key(self) -> tuple[str, float | None, str]:
        """(label, value, unit) of the seed's key KPI."""
        return key_kpi(self.mode, self.metrics)

    def kpi_lines(self) -> list[str]:
        """The seed's list-kpi block: key line starred, other figures after a blank line."""
        label, value, unit = self.key
        shown = "nan" if value is None else f"{value:.3f}"
        lines = [KPI_RULE, "#Key KPI", KPI_RULE, f"*{label} ({unit}): {shown}"]
        extra: list[str] = []
        lat = self.metrics.get("latency_ms", {})
        if self.mode == "latency":
            for key, name in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99_9", "p99.9")):
                if key in lat:
                    extra.append(f"Latency {name} (ms): {lat[key]:.3f}")
        if label != "Throughput" and "throughput_samples_per_s" in self.metrics:
            total = self.metrics["throughput_samples_per_s"]
            extra.append(f"Throughput (samples/sec): {total:.3f}")
        if self.repeats:
            values = [r.key[1] for r in self.repeats]
            shown_values = ", ".join("nan" if v is None else f"{v:.3f}" for v in values)
            rsd = self.metrics.get("key_kpi_rsd")
            spread = "" if rsd is None else f"; relative stdev {100.0 * rsd:.2f} %"
            extra.append(f"Repeats: {len(values)} (the key figure is their mean; per repeat: "
                         f"{shown_values}{spread})")
        if self.partial:
            extra.append(self.partial_note)
        return lines + (["", *extra] if extra else [])

    def kpi_block(self) -> str:
        return "\n".join(self.kpi_lines()) + "\n"

    def to_dict(self) -> dict[str, Any]:
        label, value, unit = self.key
        return {"function": self.function, "mode": self.mode, "precision": self.precision,
                "key_kpi": {"metric": label, "value": value, "unit": unit},
                "partial": self.partial, "lost_hosts": list(self.lost_hosts),
                "metrics": self.metrics, "hosts": [h.to_dict() for h in self.hosts],
                "repeats": [{"repeat": r.repeat, "key_kpi": r.key[1], "partial": r.partial,
                             "metrics": r.metrics} for r in self.repeats]}

    def samples(self) -> list[dict[str, Any]]:
        """PerfKitBenchmarker-style samples for every instance, every host and the cluster.

        A repeated run gives each repeat's samples (``metadata.repeat``: its index), then the
        combined figures at ``level: run`` (with ``repeats``: how many)."""
        if self.repeats:
            out = []
            for rep in self.repeats:
                for sample in rep.samples():
                    sample["metadata"]["repeat"] = rep.repeat
                    out.append(sample)
            meta = {**run_parameters(self.config), "level": "run", "host": "all",
                    "instance": "all", "hosts": len(self.hosts), "key_kpi": self.key[0],
                    "repeats": len(self.repeats),
                    "status": "partial" if self.partial else
                    ("ok" if all(h.status == "ok" for h in self.hosts) else "failed")}
            if self.metrics.get("key_kpi_rsd") is not None:
                meta["key_kpi_rsd"] = self.metrics["key_kpi_rsd"]
            stamp = max((s["timestamp"] for s in out), default=time.time())
            return out + _metric_samples(self.metrics, meta, stamp)
        base = run_parameters(self.config)
        out: list[dict[str, Any]] = []
        for host in self.hosts:
            for inst in host.instances:
                meta = {**base, **run_parameters(inst.config), "level": "instance",
                        "host": host.host,
                        "instance": inst.instance, "cores": inst.cores, "cpus": inst.cpus,
                        "nodes": inst.nodes, "status": inst.status}
                out.extend(_metric_samples(inst.metrics, meta, inst.timestamp))
            cores = host.cores
            meta = {**base, "level": "host", "host": host.host, "instance": "all",
                    "instances": len(host.instances), "cores": cores, "status": host.status}
            stamp = max((i.timestamp for i in host.instances), default=time.time())
            out.extend(_metric_samples(host.metrics, meta, stamp))
        label = self.key[0]
        cores = sum(h.cores or 0 for h in self.hosts) or None
        meta = {**base, "level": "cluster", "host": "all", "instance": "all",
                "hosts": len(self.hosts), "cores": cores, "key_kpi": label,
                "instances": sum(len(h.instances) for h in self.hosts),
                "status": "partial" if self.partial else
                ("ok" if all(h.status == "ok" for h in self.hosts) else "failed")}
        if self.partial:
            meta["lost_hosts"] = ",".join(self.lost_hosts)
        stamp = max((s["timestamp"] for s in out), default=time.time())
        out.extend(_metric_samples(self.metrics, meta, stamp))
        return out


def _metric_samples(metrics: dict[str, Any], meta: dict[str, Any], stamp: float) -> list[dict]:
    rows: list[tuple[str, Any, str]] = [
        ("throughput", metrics.get("throughput_samples_per_s"), "samples/sec")]
    for key, value in metrics.get("latency_ms", {}).items():
        rows.append((f"latency_{key}", value, "ms"))
    rows += [("auc", metrics.get("auc"), "fraction"), ("accuracy", metrics.get("accuracy"),
             "fraction"), ("log_loss", metrics.get("log_loss"), "")]
    return [{"metric": name, "value": float(value), "unit": unit, "timestamp": stamp,
             "metadata": dict(meta)} for name, value, unit in rows if value is not None]


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object")
    return data


def find_host_dirs(root: Path, depth: int = 4) -> list[Path]:
    """Host run dirs at or below ``root`` (not descending into a host dir)."""
    if (root / HOST_RESULT).is_file() or any(root.glob(INSTANCE_GLOB)) \
            or (root / "result.json").is_file():
        return [root]
    if depth == 0 or not root.is_dir():
        return []
    found: list[Path] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found.extend(find_host_dirs(child, depth - 1))
    return found


def _timestamp(result: dict[str, Any]) -> float:
    end = result.get("timing", {}).get("timed_end_unix")
    return float(end) if end else time.time()


def load_host(path: Path) -> HostKpi:
    """One host dir -> per-instance and merged host figures."""
    host_result = _load(path / HOST_RESULT) if (path / HOST_RESULT).is_file() else {}
    planned = {str(i.get("id")): i for i in host_result.get("instances", [])}
    files = sorted(path.glob(INSTANCE_GLOB), key=lambda p: _instance_order(p.parent.name))
    if not files and (path / "result.json").is_file():
        files = [path / "result.json"]
    host_name = host_result.get("host")
    instances: list[InstanceKpi] = []
    seen: set[str] = set()
    for file in files:
        result = _load(file)
        inst_id = file.parent.name.removeprefix("instance-") if file.parent != path else "0"
        seen.add(inst_id)
        plan = planned.get(inst_id, {})
        host_name = host_name or result.get("host", {}).get("hostname")
        status = result.get("status", "failed")
        if plan.get("exit_code") not in (None, 0):
            status = "failed"
        config = result.get("config", {})
        cpus = plan.get("cpus")
        instances.append(InstanceKpi(
            host="", instance=inst_id, status=status,
            cores=len(cpus) if cpus else config.get("threads"),
            cpus=plan.get("cpulist"), nodes=plan.get("nodelist"), config=config,
            metrics=result.get("metrics", {}), timestamp=_timestamp(result), path=str(file)))
    for inst_id, plan in planned.items():  # instances that died before writing a result
        if inst_id not in seen:
            cpus = plan.get("cpus")
            instances.append(InstanceKpi(
                host="", instance=inst_id, status="failed", cores=len(cpus) if cpus else None,
                cpus=plan.get("cpulist"), nodes=plan.get("nodelist"), config={}, metrics={},
                timestamp=time.time(), path=str(path / f"instance-{inst_id}")))
    if not instances:
        raise UserError(f"no results in {path} (expected {HOST_RESULT} or {INSTANCE_GLOB})")
    name = host_name or host_dir_name(path) or socket.gethostname()
    for inst in instances:
        inst.host = name
    ok = [i for i in instances if i.status == "ok"]
    status = host_result.get("status") or ("ok" if len(ok) == len(instances) else "failed")
    if len(ok) != len(instances):
        status = "failed"
    notes = [f"{len(instances) - len(ok)} of {len(instances)} instances failed"] \
        if len(ok) != len(instances) else []
    return HostKpi(name, str(path), status, instances, merge_metrics([i.metrics for i in ok]),
                   notes)


def repeat_of(path: Path) -> int | None:
    """The repeat index of a host dir ``repeat-N/`` or ``repeat-N/<host>/``, else None."""
    for name in (path.name, path.parent.name):
        match = REPEAT_DIR.match(name)
        if match:
            return int(match.group(1))
    return None


def host_dir_name(path: Path) -> str:
    """The host's directory name: ``<host>`` of ``<host>/`` and of ``<host>/repeat-N/``."""
    return path.parent.name if repeat_of(path) is not None else path.name


def _instance_order(name: str) -> tuple[int, str]:
    suffix = name.removeprefix("instance-")
    return (int(suffix), "") if suffix.isdigit() else (1 << 30, suffix)


def rollup(dirs: Sequence[str | Path], expected_hosts: Sequence[str] = ()) -> ClusterKpi:
    """Roll up one or many host run dirs (or parents of host dirs) into cluster KPIs.

    ``expected_hosts``: every host the run was meant to cover (inventory names, the launcher's
    ``--host-label``); those without results are the cluster's ``lost_hosts`` (partial KPI).
    Host dirs named ``repeat-N`` are grouped by N: one repeat is rolled up as it is, several are
    rolled up each and combined (``combine_repeats``)."""
    host_dirs: list[Path] = []
    for d in dirs:
        path = Path(d)
        if not path.is_dir():
            raise UserError(f"{path} is not a directory")
        found = find_host_dirs(path)
        if not found:
            raise UserError(f"no results in {path} (expected {HOST_RESULT} or {INSTANCE_GLOB})")
        host_dirs.extend(p for p in found if p not in host_dirs)
    groups: dict[int | None, list[Path]] = {}
    for p in host_dirs:
        groups.setdefault(repeat_of(p), []).append(p)
    if len(groups) == 1:
        [(index, paths)] = groups.items()
        cluster = _rollup_hosts(paths, expected_hosts)
        cluster.repeat = index
        return cluster
    repeats = []
    for index in sorted(groups, key=lambda k: -1 if k is None else k):
        cluster = _rollup_hosts(groups[index], expected_hosts)
        cluster.repeat = 0 if index is None else index
        repeats.append(cluster)
    return combine_repeats(repeats)


def _rollup_hosts(host_dirs: Sequence[Path], expected_hosts: Sequence[str]) -> ClusterKpi:
    hosts = [load_host(p) for p in host_dirs]
    names = [h.host for h in hosts]
    for h in hosts:  # loopback hosts share a hostname: tell them apart by their directory
        if names.count(h.host) > 1:
            h.host = f"{h.host}:{host_dir_name(Path(h.path))}"
            for inst in h.instances:
                inst.host = h.host
    configs = [i.config for h in hosts for i in h.instances if i.config]
    kinds = {(c.get("function"), c.get("mode"), c.get("precision")) for c in configs}
    if len(kinds) > 1:
        shown = ", ".join(sorted("_".join(map(str, k)) for k in kinds))
        raise UserError(f"cannot roll up runs of different kinds together: {shown}")
    config = configs[0] if configs else {}
    ok_metrics = [i.metrics for h in hosts for i in h.ok_instances]
    found = {h.host for h in hosts} | {host_dir_name(Path(h.path)) for h in hosts}
    lost = [h for h in dict.fromkeys(expected_hosts) if h and h not in found]
    return ClusterKpi(
        function=str(config.get("function", "inference")),
        mode=str(config.get("mode", "throughput")),
        precision=str(config.get("precision", "")),
        config=run_parameters(config),
        hosts=hosts, metrics=merge_metrics(ok_metrics), lost_hosts=lost)


def combine_metrics(mode: str, per_repeat: Sequence[dict[str, Any]],
                    instances: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One figure over repeats: throughput = the mean of the repeats' throughputs (each a sum
    over instances); latency percentiles from all repeats' merged raw latencies; AUC and the
    like the mean over every instance. ``key_kpi_rsd``: the relative standard deviation of the
    key KPI over the repeats (the run-to-run spread), with the per-repeat values alongside."""
    merged = merge_metrics(instances)
    merged["instances"] = max((m.get("instances", 0) for m in per_repeat), default=0)
    merged["repeats"] = len(per_repeat)
    throughputs = [float(m["throughput_samples_per_s"]) for m in per_repeat
                   if m.get("throughput_samples_per_s") is not None]
    if throughputs:
        merged["throughput_samples_per_s"] = statistics.fmean(throughputs)
        merged["throughput_repeats"] = throughputs
    keys = [v for v in (key_kpi(mode, m)[1] for m in per_repeat) if v is not None]
    if len(keys) > 1 and statistics.fmean(keys):
        merged["key_kpi_rsd"] = statistics.stdev(keys) / abs(statistics.fmean(keys))
    return merged


def combine_repeats(repeats: Sequence[ClusterKpi]) -> ClusterKpi:
    """The run's figures from its repeats' rollups: per host and for the cluster, as
    ``combine_metrics`` says; a host's instances are those of every repeat, named
    ``<instance>/r<repeat>``; a host is failed when it failed in any repeat, and lost when it
    was lost in any."""
    first = repeats[0]
    kinds = {(r.function, r.mode, r.precision) for r in repeats if r.config}
    if len(kinds) > 1:
        shown = ", ".join(sorted("_".join(k) for k in kinds))
        raise UserError(f"cannot combine repeats of different kinds: {shown}")
    hosts: dict[str, list[tuple[int, HostKpi]]] = {}
    for rep in repeats:
        for h in rep.hosts:
            hosts.setdefault(h.host, []).append((rep.repeat or 0, h))
    combined_hosts = []
    for name, reps in hosts.items():
        instances = [replace(i, instance=f"{i.instance}/r{index}", repeat=index)
                     for index, h in reps for i in h.instances]
        ok = [i.metrics for i in instances if i.status == "ok"]
        notes = [f"repeat {index}: {note}" for index, h in reps for note in h.notes]
        missing = [r.repeat for r in repeats if name not in {h.host for h in r.hosts}]
        if missing:
            notes.append(f"no results in repeat(s) {', '.join(map(str, missing))}")
        failed = missing or any(h.status != "ok" for _, h in reps)
        combined_hosts.append(HostKpi(
            name, reps[0][1].path, "failed" if failed else "ok", instances,
            combine_metrics(first.mode, [h.metrics for _, h in reps], ok), notes))
    all_ok = [i.metrics for r in repeats for h in r.hosts for i in h.ok_instances]
    lost = list(dict.fromkeys(h for r in repeats for h in r.lost_hosts))
    return ClusterKpi(
        function=first.function, mode=first.mode, precision=first.precision,
        config=first.config, hosts=combined_hosts,
        metrics=combine_metrics(first.mode, [r.metrics for r in repeats], all_ok),
        lost_hosts=lost, repeats=list(repeats))


def default_jsonl_path(dirs: Sequence[str | Path]) -> Path:
    """``results.jsonl`` next to the dirs: in the one dir given, or in their common parent."""
    paths = [Path(d).resolve() for d in dirs]
    if len(paths) == 1:
        return paths[0] / "results.jsonl"
    return Path(os.path.commonpath([str(p) for p in paths])) / "results.jsonl"


def write_jsonl(path: str | Path, samples: Sequence[dict[str, Any]]) -> Path:
    text = "".join(json.dumps(s, sort_keys=True) + "\n" for s in samples)
    return atomic_write_text(path, text)
