#!/usr/bin/python
"""Ansible module: the host facts a DLRM benchmark run depends on (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dlrm_host_facts
short_description: Gather the CPU, memory, disk and tuning facts of a dlrm-bench host
description:
  - Reads sysfs and procfs only; never changes the host.
  - Returns the facts as C(ansible_facts.dlrm_host).
options:
  disk_path:
    description:
      - Path whose file system's free space is reported (the nearest existing parent is used
        when the path does not exist yet).
    type: path
    default: /
  flags_override:
    description:
      - CPU flags (comma or space separated) that replace the host's, to simulate another CPU.
      - When empty, the environment variable C(DLRM_BENCH_CPU_FLAGS) is honoured the same way.
    type: str
    default: ""
author:
  - dlrm-bench
"""

EXAMPLES = r"""
- name: Gather host facts
  dlrm_host_facts:
    disk_path: /opt/dlrm-bench
"""

RETURN = r"""
ansible_facts:
  description: C(dlrm_host) with cpu_model, flags, flags_source, sockets, numa_nodes,
    physical_cores, logical_cpus, allowed_cpus, mem_total_bytes, mem_available_bytes,
    disk_path, disk_free_bytes, kernel, governor, cpufreq, hugepages, thp.
  returned: always
  type: dict
"""

import glob
import os
import re

from ansible.module_utils.basic import AnsibleModule

FLAGS_ENV = "DLRM_BENCH_CPU_FLAGS"


def _read(path, default=None):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return default


def parse_flags(text):
    return sorted({flag for flag in re.split(r"[\s,]+", text.strip()) if flag})


def cpu_model_and_flags(cpuinfo):
    model, flags = "unknown", []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = value.split()
    return model, sorted(set(flags))


def topology():
    """Sockets, physical cores (unique package/core pairs) and logical CPUs from sysfs."""
    packages, cores, cpus = set(), set(), 0
    for cpu_dir in glob.glob("/sys/devices/system/cpu/cpu[0-9]*"):
        if _read(os.path.join(cpu_dir, "online"), "1") == "0":
            continue
        cpus += 1
        package = _read(os.path.join(cpu_dir, "topology/physical_package_id"), "0")
        core = _read(os.path.join(cpu_dir, "topology/core_id"), os.path.basename(cpu_dir))
        packages.add(package)
        cores.add((package, core))
    cpus = cpus or os.cpu_count() or 1
    return max(len(packages), 1), max(len(cores), 1), cpus


def numa_nodes():
    nodes = glob.glob("/sys/devices/system/node/node[0-9]*")
    return max(len(nodes), 1)


def meminfo():
    values = {}
    for line in (_read("/proc/meminfo", "") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            values[key.strip()] = int(parts[0]) * scale
    return values


def free_disk(path):
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and probe != os.path.dirname(probe):
        probe = os.path.dirname(probe)
    stats = os.statvfs(probe)
    return probe, stats.f_bavail * stats.f_frsize


def governor():
    policies = sorted(glob.glob("/sys/devices/system/cpu/cpufreq/policy*/scaling_governor"))
    if not policies:
        policies = sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor"))
    values = sorted({_read(path, "") for path in policies} - {""})
    if not values:
        return "unsupported", False
    return ",".join(values), True


def hugepages(mem):
    size_kb = mem.get("Hugepagesize", 0) // 1024
    pools, available = {}, {}
    for pool in glob.glob("/sys/kernel/mm/hugepages/hugepages-*kB"):
        kb = int(re.sub(r"\D", "", os.path.basename(pool)) or 0)
        pools[str(kb)] = int(_read(os.path.join(pool, "nr_hugepages"), "0") or 0)
        # pages a new mapping can still take: free minus those reserved by existing mappings
        free = int(_read(os.path.join(pool, "free_hugepages"), "0") or 0)
        reserved = int(_read(os.path.join(pool, "resv_hugepages"), "0") or 0)
        available[str(kb)] = max(0, free - reserved)
    return {
        "default_size_kb": size_kb,
        "nr": pools.get(str(size_kb), mem.get("HugePages_Total", 0)),
        "available": available.get(str(size_kb), 0),
        "pools": pools,
    }


def thp_mode():
    text = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    if not text:
        return "unsupported"
    match = re.search(r"\[(\w+)\]", text)
    return match.group(1) if match else text


def main():
    module = AnsibleModule(
        argument_spec={
            "disk_path": {"type": "path", "default": "/"},
            "flags_override": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    model, flags = cpu_model_and_flags(_read("/proc/cpuinfo", "") or "")
    flags_source = "/proc/cpuinfo"
    override = module.params["flags_override"] or os.environ.get(FLAGS_ENV, "")
    if override.strip():
        flags = parse_flags(override)
        flags_source = "dlrm_cpu_flags_override" if module.params["flags_override"] else FLAGS_ENV
    sockets, physical_cores, logical_cpus = topology()
    mem = meminfo()
    disk_path, disk_free = free_disk(module.params["disk_path"])
    gov, has_cpufreq = governor()
    facts = {
        "cpu_model": model,
        "flags": flags,
        "flags_source": flags_source,
        "amx": all(flag in flags for flag in ("amx_tile", "amx_bf16", "amx_int8")),
        "sockets": sockets,
        "numa_nodes": numa_nodes(),
        "physical_cores": physical_cores,
        "logical_cpus": logical_cpus,
        "allowed_cpus": len(os.sched_getaffinity(0)),
        "mem_total_bytes": mem.get("MemTotal", 0),
        "mem_available_bytes": mem.get("MemAvailable", mem.get("MemFree", 0)),
        "disk_path": disk_path,
        "disk_free_bytes": disk_free,
        "kernel": os.uname().release,
        "governor": gov,
        "cpufreq": has_cpufreq,
        "hugepages": hugepages(mem),
        "thp": thp_mode(),
    }
    module.exit_json(changed=False, ansible_facts={"dlrm_host": facts})


if __name__ == "__main__":
    main()
