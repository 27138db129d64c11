"""Topology from fake sysfs trees (2 sockets, 4 nodes, SMT) and from the real host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dlrm_bench import topology
from dlrm_bench.errors import UserError
from dlrm_bench.topology import detect, format_cpulist, parse_cpulist, parse_lscpu


def make_sysfs(root: Path, sockets: int = 2, nodes_per_socket: int = 2, cores_per_node: int = 4,
               smt: int = 2, online: str | None = None, with_nodes: bool = True) -> Path:
    """Linux numbering: thread t of core c is cpu c + t * (total cores)."""
    total_cores = sockets * nodes_per_socket * cores_per_node
    cpu_root = root / "devices/system/cpu"
    node_cpus: dict[int, list[int]] = {}
    for core in range(total_cores):
        node = core // cores_per_node
        socket = node // nodes_per_socket
        threads = [core + t * total_cores for t in range(smt)]
        for cpu in threads:
            topo = cpu_root / f"cpu{cpu}" / "topology"
            topo.mkdir(parents=True)
            (topo / "physical_package_id").write_text(f"{socket}\n")
            (topo / "core_id").write_text(f"{core % cores_per_node}\n")  # repeats per socket
            (topo / "thread_siblings_list").write_text(format_cpulist(threads) + "\n")
            node_cpus.setdefault(node, []).append(cpu)
    (cpu_root / "online").write_text((online or f"0-{total_cores * smt - 1}") + "\n")
    if with_nodes:
        for node, cpus in node_cpus.items():
            d = root / "devices/system/node" / f"node{node}"
            d.mkdir(parents=True)
            (d / "cpulist").write_text(format_cpulist(cpus) + "\n")
    return root


def test_cpulist_round_trip() -> None:
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert format_cpulist([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11"
    assert parse_cpulist("") == []


def test_two_sockets_four_nodes_smt(tmp_path: Path) -> None:
    topo = detect(make_sysfs(tmp_path), allowed=range(32))
    assert topo.source == "sysfs"
    assert topo.sockets == [0, 1]
    assert [n.node for n in topo.nodes] == [0, 1, 2, 3]
    assert [n.socket for n in topo.nodes] == [0, 0, 1, 1]
    assert topo.threads_per_core == 2 and topo.logical_cpus == 32
    # Physical cores are the first thread of each core: the SMT siblings 16-31 are excluded.
    assert topo.physical_cpus == list(range(16))
    assert topo.nodes[1].physical_cpus == [4, 5, 6, 7]
    assert topo.nodes[1].cpus == [4, 5, 6, 7, 20, 21, 22, 23]
    assert topo.nodes[3].cores[0].siblings == (28,)
    d = topo.to_dict()
    json.dumps(d)
    assert d["sockets"] == 2 and d["numa_nodes"] == 4 and d["allowed_physical_cores"] == 16
    assert d["nodes"][2]["physical_cpus"] == "8-11" and d["nodes"][2]["siblings"]["8"] == [24]


def test_allowed_subset_uses_an_allowed_thread_per_core(tmp_path: Path) -> None:
    # A cpuset granting only the second threads of cores 0 and 1, and both threads of core 2.
    topo = detect(make_sysfs(tmp_path), allowed=[16, 17, 2, 18])
    assert topo.physical_cpus == [16, 17, 2]
    assert [c.siblings for c in topo.cores] == [(0,), (1,), (18,)]
    assert [n.physical_cpus for n in topo.nodes_with_cores] == [[16, 17, 2]]
    assert topo.allowed_cpus == [2, 16, 17, 18]


def test_offline_cpus_and_missing_node_dirs(tmp_path: Path) -> None:
    root = make_sysfs(tmp_path, sockets=1, nodes_per_socket=1, cores_per_node=4, smt=2,
                      online="0-5", with_nodes=False)
    topo = detect(root, allowed=range(8))
    assert topo.logical_cpus == 6
    assert [n.node for n in topo.nodes] == [0]
    assert topo.physical_cpus == [0, 1, 2, 3]
    assert [c.siblings for c in topo.cores] == [(4,), (5,), (), ()]


def test_lscpu_parsing_and_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "# CPU,Core,Socket,Node\n0,0,0,0\n1,1,0,0\n2,0,0,0\n3,1,0,0\n4,2,1,1\n5,2,1,1\n"
    cpus = parse_lscpu(text)
    assert cpus is not None
    topo = topology.build_topology(cpus, None, "lscpu")
    assert topo.physical_cpus == [0, 1, 4]
    assert topo.sockets == [0, 1] and [n.node for n in topo.nodes] == [0, 1]
    monkeypatch.setattr(topology, "_lscpu_cpus", lambda: cpus)
    assert detect(tmp_path, allowed=[0, 1, 2, 3]).source == "lscpu"
    with pytest.raises(UserError, match="cannot read the CPU topology"):
        detect(tmp_path, allowed=[0], use_lscpu=False)


def test_real_host_matches_affinity_and_lscpu() -> None:
    topo = detect()
    allowed = sorted(os.sched_getaffinity(0))
    assert topo.allowed_cpus == allowed
    assert set(topo.physical_cpus) <= set(allowed)
    assert 1 <= len(topo.physical_cpus) <= len(allowed)
    node_cpus = {c for n in topo.nodes for c in n.cpus}
    assert set(allowed) <= node_cpus
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu", "-p=CPU,CORE,SOCKET,NODE"], capture_output=True,
                             text=True, check=True).stdout
        rows = [line.split(",") for line in out.splitlines() if not line.startswith("#")]
        cores = {(r[2], r[1]) for r in rows if int(r[0]) in allowed}
        assert len(topo.physical_cpus) == len(cores)
        assert len(topo.sockets) == len({r[2] for r in rows})
