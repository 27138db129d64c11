"""``dlrm-bench launch``: N pinned ``dlrm-bench run`` instances on one host, started together.

Plan: instances never share a physical core (SMT siblings stay idle); each is bound to its cores
and its node's memory (``numactl --physcpubind --membind``, else ``sched_setaffinity``), runs with
OMP_NUM_THREADS = its cores and the seed's KMP settings, with jemalloc (seed MALLOC_CONF) or
tcmalloc preloaded when the host has one. Run (``dlrm_bench.supervisor``): every instance waits
at a file barrier (``<run_dir>/.barrier``) until all are ready; an instance dying before that
stops the others; no instance outlives the launcher. Results: ``<run_dir>/host_result.json``
(atomic; written with status "running" first) and ``<run_dir>/combined.log`` (every instance's
``run.log``, for the seed's kpi.sh).

Python use: ``plan_layout`` -> ``build_plan`` -> ``execute(plan) -> (exit code, host result)``, or
``dlrm_bench.commands.launch.launch(argv)`` with the CLI's arguments.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlrm_bench.errors import UserError
from dlrm_bench.results import atomic_write_json, atomic_write_text, now_iso
from dlrm_bench.supervisor import InstanceStatus, Lease, Progress, Supervisor, describe_exit
from dlrm_bench.topology import Topology, format_cpulist

SEED_MALLOC_CONF = ("oversize_threshold:1,background_thread:true,metadata_thp:auto,"
                    "dirty_decay_ms:9000000000,muzzy_decay_ms:9000000000")
KMP_ENV = {"KMP_AFFINITY": "granularity=fine,compact,1,0", "KMP_BLOCKTIME": "1"}
ALLOCATOR_LIBS = {"jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
                  "tcmalloc": ("libtcmalloc.so.4", "libtcmalloc_minimal.so.4", "libtcmalloc.so")}
LATENCY_CORES = 4
LEASE_LAPSED_EXIT = 3  # the controller stopped renewing --lease: instances stopped


@dataclass(frozen=True)
class Slot:
    cpus: tuple[int, ...]
    nodes: tuple[int, ...]


def plan_layout(topo: Topology, function: str, mode: str,
                cores_per_instance: int | None = None, instances: int | None = None) -> list[Slot]:
    """Assign each instance its own physical cores, node-local where possible (seed defaults)."""
    cores = topo.cores
    total = len(cores)
    if total == 0:
        raise UserError("this process may use no CPU at all (empty affinity mask)")
    if cores_per_instance is not None and cores_per_instance < 1:
        raise UserError(f"cores per instance must be > 0, got {cores_per_instance}")
    if instances is not None and instances < 1:
        raise UserError(f"instances must be > 0, got {instances}")
    node_of = {c.cpu: c.node for c in cores}
    perf = mode in ("throughput", "latency") and function == "inference"
    if perf and mode == "throughput" and cores_per_instance is None and instances is None:
        return [Slot(tuple(n.physical_cpus), (n.node,)) for n in topo.nodes_with_cores]
    cpi = cores_per_instance
    if cpi is None:
        if perf and mode == "latency":
            if total < LATENCY_CORES:
                raise UserError(
                    f"latency mode needs {LATENCY_CORES} cores per instance but this host allows "
                    f"{total}; pass --cores-per-instance 1 (CORES_PER_INSTANCE)")
            cpi = LATENCY_CORES
        else:
            cpi = max(1, total // (instances or 1))
    count = instances if instances is not None else (total // cpi if perf else 1)
    if count < 1 or count * cpi > total:
        raise UserError(
            f"{max(count, 1)} instance(s) x {cpi} core(s) need {max(count, 1) * cpi} physical "
            f"cores but this host allows {total} (cpus {format_cpulist(topo.physical_cpus)}); "
            "lower --instances (INSTANCE_NUMBER) or --cores-per-instance (CORES_PER_INSTANCE)")
    by_node = [[c.cpu for c in n.cores] for n in topo.nodes_with_cores]
    chunks = [[cpus[i:i + cpi] for i in range(0, len(cpus) - cpi + 1, cpi)] for cpus in by_node]
    local = [chunk for rnd in range(max(map(len, chunks))) for per_node in chunks
             if rnd < len(per_node) for chunk in [per_node[rnd]]]  # round-robin over nodes
    if len(local) >= count:
        groups = sorted(local[:count], key=lambda g: (node_of[g[0]], g[0]))
    else:  # not enough node-local groups: some instances straddle nodes
        flat = topo.physical_cpus
        groups = [flat[i * cpi:(i + 1) * cpi] for i in range(count)]
    return [Slot(tuple(g), tuple(sorted({node_of[c] for c in g}))) for g in groups]


@dataclass
class Pinning:
    method: str  # "numactl", "affinity" or "none"
    numactl: str | None = None
    note: str = ""

    def prefix(self, slot: Slot) -> list[str]:
        if self.method != "numactl" or self.numactl is None:
            return []
        nodes = ",".join(map(str, slot.nodes))
        return [self.numactl, f"--physcpubind={format_cpulist(slot.cpus)}", f"--membind={nodes}"]


def choose_pinning(requested: str, probe: Slot) -> Pinning:
    """numactl when present and allowed to bind here (containers may forbid it), else affinity."""
    if requested == "none":
        return Pinning("none", note="pinning disabled (--pinning none)")
    exe = shutil.which("numactl")
    if requested in ("auto", "numactl") and exe:
        try:
            subprocess.run([*Pinning("numactl", exe).prefix(probe), "true"], check=True,
                           capture_output=True, timeout=30)
            return Pinning("numactl", exe)
        except (OSError, subprocess.SubprocessError) as exc:
            err = getattr(exc, "stderr", b"") or b""
            note = f"numactl cannot bind here: {err.decode(errors='replace').strip() or exc}"
            if requested == "numactl":
                raise UserError(note) from None
            return Pinning("affinity", note=note + "; using sched_setaffinity, no membind")
    if requested == "numactl":
        raise UserError("--pinning numactl but numactl is not installed (apt-get install numactl)")
    return Pinning("affinity", note="numactl not found; using sched_setaffinity, no membind")


@dataclass
class Allocator:
    name: str  # "jemalloc", "tcmalloc" or "none"
    path: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def _lib_dirs() -> list[Path]:
    arch = platform.machine()
    dirs = [Path(sys.prefix) / "lib", Path(os.environ.get("CONDA_PREFIX", sys.prefix)) / "lib",
            Path(f"/usr/lib/{arch}-linux-gnu"), Path(f"/lib/{arch}-linux-gnu"),
            Path("/usr/lib64"), Path("/usr/local/lib"), Path("/usr/lib")]
    return list(dict.fromkeys(dirs))


def find_allocator(requested: str = "auto", base_env: dict[str, str] | None = None) -> Allocator:
    """jemalloc (with the seed's MALLOC_CONF unless one is set) or tcmalloc, if installed."""
    env = os.environ if base_env is None else base_env
    if requested == "none":
        return Allocator("none")
    names = ("jemalloc", "tcmalloc") if requested == "auto" else (requested,)
    for name in names:
        for directory in _lib_dirs():
            for lib in ALLOCATOR_LIBS[name]:
                path = directory / lib
                if path.is_file():
                    extra = {"LD_PRELOAD": ":".join(filter(None, [str(path),
                                                                  env.get("LD_PRELOAD")]))}
                    if name == "jemalloc":
                        extra["MALLOC_CONF"] = env.get("MALLOC_CONF") or SEED_MALLOC_CONF
                    return Allocator(name, str(path), extra)
    if requested != "auto":
        raise UserError(f"--allocator {requested}: no {' or '.join(ALLOCATOR_LIBS[requested])} "
                        f"found in {', '.join(map(str, _lib_dirs()))}")
    return Allocator("none")


@dataclass
class InstancePlan:
    id: int
    slot: Slot
    threads: int
    command: list[str]
    env: dict[str, str]  # what the launcher sets on top of its own environment
    output_dir: Path
    weights_cache: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "cpus": list(self.slot.cpus), "nodes": list(self.slot.nodes),
                "cpulist": format_cpulist(self.slot.cpus),
                "nodelist": ",".join(map(str, self.slot.nodes)), "threads": self.threads,
                "command": self.command, "env": self.env, "output_dir": str(self.output_dir),
                "weights_cache": str(self.weights_cache) if self.weights_cache else None}


@dataclass
class LaunchPlan:
    run_dir: Path
    function: str
    mode: str
    weight_sharing: bool
    pinning: Pinning
    allocator: Allocator
    topology: Topology
    instances: list[InstancePlan]
    barrier_timeout: float = 600.0
    host: str = field(default_factory=socket.gethostname)
    lease: Lease | None = None
    # tune.json to put back when the lease lapses (the controller will not run its restore play)
    lease_restore: Path | None = None

    @property
    def barrier_dir(self) -> Path:
        return self.run_dir / ".barrier"


def build_plan(run_args: Sequence[str], run_dir: Path, topo: Topology, slots: Sequence[Slot], *,
               function: str, mode: str, weight_sharing: bool, pinning: Pinning,
               allocator: Allocator, weights_root: Path | None = None, threads: int | None = None,
               barrier_timeout: float = 600.0, host: str | None = None) -> LaunchPlan:
    """Command line and environment of every instance (no side effects: ``--dry-run`` prints it)."""
    plans: list[InstancePlan] = []
    for k, slot in enumerate(slots):
        n = threads or len(slot.cpus)
        out = run_dir / f"instance-{k}"
        cache = (weights_root or run_dir) / f"weights-node{slot.nodes[0]}" if weight_sharing \
            else None
        cmd = [*pinning.prefix(slot), sys.executable, "-m", "dlrm_bench", "run", *run_args,
               "--threads", str(n), "--output", str(out), "--instance-id", str(k),
               "--barrier-dir", str(run_dir / ".barrier"), "--barrier-timeout",
               f"{barrier_timeout:g}"]
        if cache is not None:
            cmd += ["--weights-cache", str(cache)]
        env = {"OMP_NUM_THREADS": str(n), **{k2: os.environ.get(k2, v) for k2, v in
                                              KMP_ENV.items()}, **allocator.env}
        plans.append(InstancePlan(k, slot, n, cmd, env, out, cache))
    return LaunchPlan(run_dir, function, mode, weight_sharing, pinning, allocator, topo, plans,
                      barrier_timeout, host or socket.gethostname())


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def host_result(plan: LaunchPlan, sup: Supervisor | None, started: str) -> dict[str, Any]:
    """The ``host_result.json`` payload (status "running" while ``sup`` has not finished)."""
    instances, ok_metrics, config = [], [], {}
    for k, ip in enumerate(plan.instances):
        st = sup.states[k] if sup else None
        entry = ip.to_dict()
        if st is not None:
            entry.update(pid=st.pid, exit_code=st.returncode, state=st.state,
                         exit=describe_exit(st.returncode) if st.returncode is not None else None,
                         elapsed_s=round((st.ended or time.monotonic()) - st.started, 3)
                         if st.started else None)
            if st.state in ("failed", "stopped"):
                entry["log_tail"] = st.log_tail
        result = _read_result(ip.output_dir / "result.json")
        entry["result"] = str(ip.output_dir / "result.json") if result else None
        if result is not None:
            config = config or result.get("config", {})
            entry["timing"] = result.get("timing")
            if result.get("status") == "ok" and st is not None and st.returncode == 0:
                metrics = result.get("metrics", {})
                ok_metrics.append(metrics)
                entry["metrics"] = {k2: v for k2, v in metrics.items() if k2 != "latencies_ms"}
        instances.append(entry)
    finished = sup is not None and all(st.returncode is not None for st in sup.states)
    ok = finished and sup is not None and not sup.failures \
        and len(ok_metrics) == len(plan.instances)
    doc: dict[str, Any] = {
        "schema_version": 1, "kind": "host_result",
        "status": "running" if not finished else ("ok" if ok else "failed"),
        "host": plan.host, "run_dir": str(plan.run_dir), "started": started,
        "finished": now_iso() if finished else None,
        "layout": {"function": plan.function, "mode": plan.mode, "instances": len(instances),
                   "cores_per_instance": sorted({len(i.slot.cpus) for i in plan.instances}),
                   "weight_sharing": plan.weight_sharing},
        "pinning": {"method": plan.pinning.method, "numactl": plan.pinning.numactl,
                    "note": plan.pinning.note},
        "allocator": {"name": plan.allocator.name, "path": plan.allocator.path,
                      "env": plan.allocator.env},
        "topology": plan.topology.to_dict(),
        "failures": list(sup.failures) if sup else [],
        "instances": instances,
    }
    if sup is None:  # before the instances start: no numpy in the launcher while it forks
        return doc
    from dlrm_bench import kpi

    merged = kpi.merge_metrics(ok_metrics)
    label, value, unit = kpi.key_kpi(plan.mode, merged)
    doc.update(config=kpi.run_parameters(config), metrics=merged,
               kpi={"metric": label, "value": value, "unit": unit})
    return doc


def write_combined_log(plan: LaunchPlan) -> Path:
    """Every instance's ``run.log`` in order: the seed's kpi.sh sums its ``Throughput`` lines."""
    parts: list[str] = []
    for ip in plan.instances:
        log = ip.output_dir / "run.log"
        parts.append(f"### instance-{ip.id} cpus {format_cpulist(ip.slot.cpus)}\n")
        if log.is_file():
            text = log.read_text(encoding="utf-8", errors="replace")
            parts.append(text if text.endswith("\n") or not text else text + "\n")
    return atomic_write_text(plan.run_dir / "combined.log", "".join(parts))


class _OutputGuard(Progress):
    """Forwards to ``inner`` until writing fails, then goes quiet. Under Ansible the launcher
    writes into ``| tee launch.log`` and the async job's pipe; stopping a run kills that job's
    shell, its reader goes away and the next line hits a closed pipe. The stop must still reach
    the instances and the final host result must still be written."""

    def __init__(self, inner: Progress) -> None:
        self.inner, self.broken = inner, False

    def event(self, message: str) -> None:
        if not self.broken:
            try:
                self.inner.event(message)
            except OSError:
                self.broken = True

    def update(self, states: Sequence[InstanceStatus], phase: str, elapsed: float) -> None:
        if not self.broken:
            try:
                self.inner.update(states, phase, elapsed)
            except OSError:
                self.broken = True


def execute(plan: LaunchPlan, progress: Progress | None = None) -> tuple[int, dict[str, Any]]:
    """Run the plan; returns (exit code, host result). 0 only when every instance succeeded."""
    progress = _OutputGuard(progress or Progress())
    started = now_iso()
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.run_dir / "host_result.json", host_result(plan, None, started))
    sup = Supervisor(plan.instances, plan.barrier_dir, plan.pinning.method == "affinity",
                     progress, plan.lease)
    sup.run()
    if sup.lease_lapsed and plan.lease_restore is not None:
        from dlrm_bench.tuning import restore_saved_settings

        restored = restore_saved_settings(plan.lease_restore)
        sup.failures.append("host settings restored by the launcher: " + "; ".join(restored))
        progress.event(sup.failures[-1])
    result = host_result(plan, sup, started)
    atomic_write_json(plan.run_dir / "host_result.json", result)
    write_combined_log(plan)
    shutil.rmtree(plan.barrier_dir, ignore_errors=True)
    if sup.signum is not None:
        return 128 + sup.signum, result
    if sup.lease_lapsed:
        return LEASE_LAPSED_EXIT, result
    if result["status"] == "ok":
        return 0, result
    early_usage = [st for st in sup.states if st.returncode == 2 and sup.phase == "aborted"]
    return (2 if early_usage else 1), result
