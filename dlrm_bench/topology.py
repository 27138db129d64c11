"""CPU topology: sockets, NUMA nodes, physical cores and the CPUs this process may use.

Read from sysfs (``/sys/devices/system/cpu/cpu*/topology`` and ``/sys/devices/system/node``) with
``lscpu -p=CPU,CORE,SOCKET,NODE`` as a fallback; never from ``/proc/cpuinfo`` "physical id" alone.
A core is identified by its SMT sibling set: the lowest *allowed* thread of each core is its
"physical" CPU and the other threads are listed as its siblings, so pinning one instance per
physical CPU never puts two instances on the two hyper-threads of one core. The allowed set comes
from ``os.sched_getaffinity`` (which reflects cgroup cpusets and any outer ``taskset``/``numactl``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlrm_bench.errors import UserError


def parse_cpulist(text: str) -> list[int]:
    """``"0-3,8,10-11"`` -> ``[0, 1, 2, 3, 8, 10, 11]`` (the kernel's cpulist format)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.update(range(int(lo), int(hi) + 1))
        else:
            cpus.add(int(part))
    return sorted(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 8]`` -> ``"0-3,8"`` (what numactl and the kernel accept)."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class LogicalCpu:
    """One hardware thread: its socket, NUMA node and the sibling threads of its core."""

    cpu: int
    socket: int
    node: int
    core_key: tuple[int, ...]  # the core's full SMT sibling set (sorted), identifies the core


@dataclass(frozen=True)
class Core:
    """A physical core: ``cpu`` is its representative thread, ``siblings`` the other threads."""

    cpu: int
    siblings: tuple[int, ...]
    socket: int
    node: int


@dataclass
class NumaNode:
    node: int
    socket: int
    cpus: list[int]  # every logical CPU of the node
    cores: list[Core]  # the physical cores with at least one allowed thread

    @property
    def physical_cpus(self) -> list[int]:
        return [core.cpu for core in self.cores]


@dataclass
class Topology:
    """The host's CPU layout as far as this process is concerned."""

    sockets: list[int]
    nodes: list[NumaNode]
    allowed_cpus: list[int]
    logical_cpus: int
    threads_per_core: int
    source: str  # "sysfs" or "lscpu"
    notes: list[str] = field(default_factory=list)

    @property
    def cores(self) -> list[Core]:
        return [core for node in self.nodes for core in node.cores]

    @property
    def physical_cpus(self) -> list[int]:
        """Allowed physical CPUs (one per core), node by node."""
        return [core.cpu for core in self.cores]

    @property
    def nodes_with_cores(self) -> list[NumaNode]:
        return [node for node in self.nodes if node.cores]

    def node_of(self, cpu: int) -> int:
        for node in self.nodes:
            if cpu in node.cpus:
                return node.node
        raise KeyError(cpu)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sockets": len(self.sockets),
            "socket_ids": list(self.sockets),
            "numa_nodes": len(self.nodes),
            "logical_cpus": self.logical_cpus,
            "threads_per_core": self.threads_per_core,
            "allowed_cpus": format_cpulist(self.allowed_cpus),
            "allowed_physical_cores": len(self.physical_cpus),
            "nodes": [
                {
                    "node": node.node,
                    "socket": node.socket,
                    "cpus": format_cpulist(node.cpus),
                    "physical_cpus": format_cpulist(node.physical_cpus),
                    "siblings": {str(c.cpu): list(c.siblings) for c in node.cores if c.siblings},
                }
                for node in self.nodes
            ],
            "notes": list(self.notes),
        }


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _sysfs_cpus(root: Path) -> list[LogicalCpu] | None:
    cpu_dir = root / "devices/system/cpu"
    online_text = _read(cpu_dir / "online")
    online = set(parse_cpulist(online_text)) if online_text else None
    node_of: dict[int, int] = {}
    node_dir = root / "devices/system/node"
    for path in sorted(node_dir.glob("node[0-9]*")):
        cpulist = _read(path / "cpulist")
        if cpulist is not None:
            for cpu in parse_cpulist(cpulist):
                node_of[cpu] = int(path.name[4:])
    result: list[LogicalCpu] = []
    for path in cpu_dir.glob("cpu[0-9]*"):
        cpu = int(path.name[3:])
        if online is not None and cpu not in online:
            continue
        topo = path / "topology"
        package = _read(topo / "physical_package_id")
        siblings = _read(topo / "thread_siblings_list") or _read(topo / "core_cpus_list")
        if package is None or siblings is None:
            return None  # no usable topology directory: let lscpu try
        result.append(
            LogicalCpu(cpu, int(package), node_of.get(cpu, 0), tuple(parse_cpulist(siblings)))
        )
    return sorted(result, key=lambda c: c.cpu) or None


def _lscpu_cpus() -> list[LogicalCpu] | None:
    exe = shutil.which("lscpu")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "-p=CPU,CORE,SOCKET,NODE"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_lscpu(out)


def parse_lscpu(text: str) -> list[LogicalCpu] | None:
    """Parse ``lscpu -p=CPU,CORE,SOCKET,NODE`` output (comment lines start with ``#``)."""
    rows: list[tuple[int, int, int, int]] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        cpu, core, socket, node = (int(f) if f else 0 for f in [*fields, "", "", ""][:4])
        rows.append((cpu, core, socket, node))
    by_core: dict[tuple[int, int], list[int]] = {}
    for cpu, core, socket, _node in rows:
        by_core.setdefault((socket, core), []).append(cpu)
    return [
        LogicalCpu(cpu, socket, node, tuple(sorted(by_core[(socket, core)])))
        for cpu, core, socket, node in sorted(rows)
    ] or None


def build_topology(
    cpus: list[LogicalCpu], allowed: Iterable[int] | None, source: str
) -> Topology:
    """Group logical CPUs into nodes and cores, keeping only cores with an allowed thread."""
    present = {c.cpu for c in cpus}
    allowed_set = set(present if allowed is None else allowed) & present
    notes: list[str] = []
    if allowed is not None and set(allowed) - present:
        notes.append(f"affinity lists CPUs unknown to {source}: {sorted(set(allowed) - present)}")
    by_node: dict[int, list[LogicalCpu]] = {}
    for c in cpus:
        by_node.setdefault(c.node, []).append(c)
    nodes: list[NumaNode] = []
    for node_id in sorted(by_node):
        members = by_node[node_id]
        seen: set[tuple[int, ...]] = set()
        cores: list[Core] = []
        for c in members:  # members are sorted by CPU number
            if c.core_key in seen:
                continue
            usable = [t for t in c.core_key if t in allowed_set]
            if not usable:
                continue
            seen.add(c.core_key)
            others = tuple(t for t in c.core_key if t != usable[0] and t in present)
            cores.append(Core(usable[0], others, c.socket, node_id))
        sockets_here = sorted({c.socket for c in members})
        nodes.append(NumaNode(node_id, sockets_here[0], [c.cpu for c in members], cores))
        if len(sockets_here) > 1:
            notes.append(f"node {node_id} spans sockets {sockets_here}")
    threads = max((len(c.core_key) for c in cpus), default=1)
    return Topology(
        sockets=sorted({c.socket for c in cpus}),
        nodes=nodes,
        allowed_cpus=sorted(allowed_set),
        logical_cpus=len(cpus),
        threads_per_core=threads,
        source=source,
        notes=notes,
    )


def detect(sysfs_root: Path | str = "/sys", allowed: Iterable[int] | None = None,
           use_lscpu: bool = True) -> Topology:
    """The topology of this host (or of a fake sysfs tree under ``sysfs_root`` in tests).

    ``allowed`` defaults to ``os.sched_getaffinity(0)``.
    """
    if allowed is None:
        allowed = sorted(os.sched_getaffinity(0))
    cpus = _sysfs_cpus(Path(sysfs_root))
    source = "sysfs"
    if cpus is None and use_lscpu:
        cpus, source = _lscpu_cpus(), "lscpu"
    if cpus is None:
        raise UserError(
            f"cannot read the CPU topology: no {sysfs_root}/devices/system/cpu/cpu*/topology "
            "and no usable `lscpu -p`"
        )
    return build_topology(cpus, allowed, source)
