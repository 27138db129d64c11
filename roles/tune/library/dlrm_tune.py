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
warnings_hugepages:
  description: Set when the kernel reserved fewer hugepages than asked for.
  returned: when it happens
  type: str
"""

import datetime
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
    result = {"settings": report, "state_file": state_file}
    if module.check_mode or not changed:
        result["governor"] = "unsupported" if not governor_paths() else current_governor()
        return changed, result
    if new_saved:
        saved.update(new_saved)
        save_state(state_file, state)  # the originals are on disk before anything is written
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
    state = load_state(state_file)
    if state is None:
        return False, {"settings": {}, "state_file": state_file, "governor": current_governor()}
    report = {}
    for path, entry in sorted(state.get("settings", {}).items()):
        if not os.path.exists(path):
            continue
        before = read_value(path)
        report.setdefault(entry["setting"], {})[path] = {"before": before, "after": entry["value"]}
        if before != entry["value"] and not module.check_mode:
            write_value(path, entry["value"])
            report[entry["setting"]][path]["after"] = read_value(path)
    if not module.check_mode:
        os.remove(state_file)
    return True, {"settings": report, "state_file": state_file, "governor": current_governor()}


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "restored"], "default": "present"},
            "state_file": {"type": "path", "required": True},
            "hugepages": {"type": "int", "default": 0},
            "hugepage_size_kb": {"type": "int", "default": 0},
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
