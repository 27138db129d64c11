#!/usr/bin/python
"""Ansible module: set (and later restore) the kernel settings a DLRM benchmark runs with."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dlrm_tune
short_description: Apply or restore hugepages, transparent hugepages and the CPU governor
description:
  - With O(state=present), saves the current value of every setting it manages to O(state_file)
    (only values not saved yet, so a second run keeps the original values) and writes the
    requested values through sysfs. Values already in place are left alone (changed=false).
  - With O(state=restored), writes the saved values back and removes O(state_file).
  - The CPU governor is skipped, and reported as C(unsupported), where cpufreq is absent.
  - When it reserves hugepages and no hugetlbfs of that page size is mounted, it mounts one at
    O(hugetlbfs_mount) (where the benchmark's embedding tables go); restore unmounts it.
  - Restore first deletes C(dlrm-bench-*.tables) files that no process holds (left in a hugetlbfs
    by a killed run: they would keep their hugepages).
  - Supports check mode.
options:
  state:
    description: Apply the settings, or put the saved values back.
    type: str
    choices: [present, restored]
    default: present
  state_file:
    description: JSON file holding the values found before the first change.
    type: path
    required: true
  hugepages:
    description: Number of hugepages of O(hugepage_size_kb) to reserve; 0 leaves the setting alone.
    type: int
    default: 0
  hugepage_size_kb:
    description: Hugepage size; 0 = the kernel's default size.
    type: int
    default: 0
  hugetlbfs_mount:
    description: Where to mount a hugetlbfs when hugepages are reserved and none is mounted;
      empty = never mount.
    type: path
    default: /dev/hugepages
  thp:
    description: Transparent hugepage mode (always, madvise, never); empty leaves it alone.
    type: str
    default: ""
  governor:
    description: CPU frequency governor for every CPU; empty leaves it alone.
    type: str
    default: ""
author:
  - dlrm-bench
"""

EXAMPLES = r"""
- name: Reserve hugepages and pin the governor
  dlrm_tune:
    state_file: /opt/dlrm-bench/state/tune.json
    hugepages: 512
    governor: performance
  become: true

- name: Put everything back
  dlrm_tune:
    state: restored
    state_file: /opt/dlrm-bench/state/tune.json
  become: true
"""

RETURN = r"""
settings:
  description: Per setting (hugepages, thp, governor) the sysfs paths with the values before and after.
  returned: always
  type: dict
governor:
  description: The governor in force afterwards, or C(unsupported) without cpufreq.
  returned: always
  type: str
hugetlbfs:
  description: The hugetlbfs mount for the reserved page size (empty when none).
  returned: always
  type: str
removed:
  description: Table files of killed runs deleted by restore.
  returned: with state=restored
  type: list
warnings_hugepages:
  description: Set when the kernel reserved fewer hugepages than asked for.
  returned: when it happens
  type: str
"""

import datetime
import errno
import fcntl
import glob
import json
import os
import re

from ansible.module_utils.basic import AnsibleModule

THP_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"
HUGEPAGES_ROOT = "/sys/kernel/mm/hugepages"


def read_value(path):
    """A sysfs value; for selector files ("always [madvise] never") the selected word."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read().strip()
    match = re.search(r"\[([^\]]+)\]", text)
    return match.group(1) if match else text


def write_value(path, value):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(str(value))


def default_hugepage_kb():
    with open("/proc/meminfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("Hugepagesize:"):
                return int(line.split()[1])
    return 0


def size_kb(text):
    """A mount option size (2M, 1G, 2048k) in kB."""
    units = {"k": 1, "m": 1024, "g": 1024 * 1024}
    text = text.strip().lower()
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text) // 1024


def hugetlbfs_mounts():
    """{mount path: page size in kB} of every mounted hugetlbfs."""
    found = {}
    with open("/proc/mounts", encoding="utf-8") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) < 4 or parts[2] != "hugetlbfs":
                continue
            page = default_hugepage_kb()
            for option in parts[3].split(","):
                if option.startswith("pagesize="):
                    page = size_kb(option[len("pagesize="):])
            found[parts[1].encode().decode("unicode_escape")] = page
    return found


def remove_stale_tables():
    """Delete dlrm-bench table files in hugetlbfs mounts that no process holds a lock on."""
    removed = []
    for mount in hugetlbfs_mounts():
        try:
            names = os.listdir(mount)
        except OSError:
            continue
        for name in names:
            bare = name.lstrip(".")
            if not bare.startswith("dlrm-bench-") or not bare.endswith((".tables", ".tmp")):
                continue
            path = os.path.join(mount, name)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(path)
                removed.append(path)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.ENOENT):
                    raise
            finally:
                os.close(fd)
    return removed


def governor_paths():
    paths = sorted(glob.glob("/sys/devices/system/cpu/cpufreq/policy*/scaling_governor"))
    return paths or sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor"))


def wanted_settings(module):
    """{setting: {sysfs path: wanted value}} for what this call manages."""
    params = module.params
    wanted = {}
    if params["hugepages"] > 0:
        size = params["hugepage_size_kb"] or default_hugepage_kb()
        path = os.path.join(HUGEPAGES_ROOT, "hugepages-%dkB" % size, "nr_hugepages")
        if not os.path.exists(path):
            module.fail_json(msg="no %d kB hugepage pool on this host (%s missing)" % (size, path))
        wanted["hugepages"] = {path: str(params["hugepages"])}
    if params["thp"]:
        if not os.path.exists(THP_PATH):
            module.fail_json(msg="transparent hugepages are not supported here (%s missing)" % THP_PATH)
        wanted["thp"] = {THP_PATH: params["thp"]}
    if params["governor"]:
        paths = governor_paths()
        if paths:
            wanted["governor"] = {path: params["governor"] for path in paths}
    return wanted


def load_state(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ValueError("state file %s is not valid JSON: %s" % (path, exc)) from exc


def save_state(path, state):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def current_governor():
    paths = governor_paths()
    if not paths:
        return "unsupported"
    return ",".join(sorted({read_value(path) for path in paths}))


def apply(module):
    state_file = module.params["state_file"]
    wanted = wanted_settings(module)
    state = load_state(state_file) or {
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "settings": {},
    }
    saved = state["settings"]
    new_saved = {}
    report = {}
    changed = False
    for name, paths in wanted.items():
        report[name] = {}
        for path, value in paths.items():
            before = read_value(path)
            if path not in saved:
                new_saved[path] = {"setting": name, "value": before}
            report[name][path] = {"before": before, "after": value}
            if before != value:
                changed = True
    if new_saved:
        changed = True
    mount_at = None
    page_kb = module.params["hugepage_size_kb"] or default_hugepage_kb()
    if "hugepages" in wanted and module.params["hugetlbfs_mount"]:
        present = [path for path, page in hugetlbfs_mounts().items() if page == page_kb]
        if not present:
            mount_at = module.params["hugetlbfs_mount"]
            changed = True
        result_mount = present[0] if present else module.params["hugetlbfs_mount"]
    else:
        result_mount = ""
    result = {"settings": report, "state_file": state_file, "hugetlbfs": result_mount}
    if module.check_mode or not changed:
        result["governor"] = "unsupported" if not governor_paths() else current_governor()
        return changed, result
    if new_saved or mount_at:
        saved.update(new_saved)
        if mount_at:
            state.setdefault("mounted", []).append(mount_at)
        save_state(state_file, state)  # the originals are on disk before anything is written
    if mount_at:
        os.makedirs(mount_at, exist_ok=True)
        module.run_command(["mount", "-t", "hugetlbfs", "-o", "pagesize=%dK" % page_kb, "nodev",
                            mount_at], check_rc=True)
    for name, paths in wanted.items():
        for path, value in paths.items():
            if read_value(path) != value:
                write_value(path, value)
            after = read_value(path)
            report[name][path]["after"] = after
            if name == "hugepages" and after != value:
                result["warnings_hugepages"] = (
                    "asked for %s hugepages, the kernel reserved %s (memory fragmented?)" % (value, after)
                )
                module.warn(result["warnings_hugepages"])
    result["governor"] = current_governor()
    return changed, result


def restore(module):
    state_file = module.params["state_file"]
    removed = [] if module.check_mode else remove_stale_tables()
    state = load_state(state_file)
    if state is None:
        return bool(removed), {"settings": {}, "state_file": state_file, "removed": removed,
                               "governor": current_governor(), "hugetlbfs": ""}
    report = {}
    for path, entry in sorted(state.get("settings", {}).items()):
        if not os.path.exists(path):
            continue
        before = read_value(path)
        report.setdefault(entry["setting"], {})[path] = {"before": before, "after": entry["value"]}
        if before != entry["value"] and not module.check_mode:
            write_value(path, entry["value"])
            report[entry["setting"]][path]["after"] = read_value(path)
    unmounted = []
    for path in state.get("mounted", []):
        if path in hugetlbfs_mounts() and not module.check_mode:
            rc, _out, err = module.run_command(["umount", path])
            if rc != 0:  # still in use: leave it (harmless) rather than fail the restore
                module.warn("could not unmount the hugetlbfs at %s: %s" % (path, err.strip()))
                continue
        unmounted.append(path)
    if not module.check_mode:
        os.remove(state_file)
    return True, {"settings": report, "state_file": state_file, "governor": current_governor(),
                  "removed": removed, "hugetlbfs": "", "unmounted": unmounted}


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "restored"], "default": "present"},
            "state_file": {"type": "path", "required": True},
            "hugepages": {"type": "int", "default": 0},
            "hugepage_size_kb": {"type": "int", "default": 0},
            "hugetlbfs_mount": {"type": "path", "default": "/dev/hugepages"},
            "thp": {"type": "str", "default": "", "choices": ["", "always", "madvise", "never"]},
            "governor": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    try:
        if module.params["state"] == "present":
            changed, result = apply(module)
        else:
            changed, result = restore(module)
    except (OSError, ValueError) as exc:
        module.fail_json(msg="%s: %s" % (type(exc).__name__, exc))
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
