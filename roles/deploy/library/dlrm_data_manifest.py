#!/usr/bin/python
"""Ansible module: a checksummed manifest that lets a dataset directory be reused across runs."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dlrm_data_manifest
short_description: Write or verify the manifest of a dlrm-bench dataset directory
description:
  - O(state=present) records every file of O(path) (size, mtime, sha256) and the parameters that
    produced it in O(path)/manifest.json; the file is rewritten only when its content changes.
  - O(state=verify) reports (never fails, never changes) whether the directory still matches its
    manifest and the given O(params); size and mtime are compared, and the sha256 too when
    O(deep=true).
options:
  path:
    description: The dataset directory.
    type: path
    required: true
  state:
    description: Write the manifest, or verify the directory against it.
    type: str
    choices: [present, verify]
    default: present
  params:
    description: What produced the data (generator settings, sources); part of the match.
    type: dict
    default: {}
  deep:
    description: With O(state=verify), compare sha256 checksums too (reads every byte).
    type: bool
    default: false
  checksum:
    description: With O(state=present), record sha256 checksums (false for very large datasets).
    type: bool
    default: true
author:
  - dlrm-bench
"""

EXAMPLES = r"""
- name: Is the cached dataset still good?
  dlrm_data_manifest:
    path: /opt/dlrm-bench/data/synthetic-tiny-0-65536-16384
    state: verify
    params: {preset: tiny, seed: 0}
  register: manifest
"""

RETURN = r"""
valid:
  description: With O(state=verify), whether the directory matches its manifest and O(params).
  returned: always
  type: bool
reason:
  description: Why the directory does not match (empty when it does).
  returned: always
  type: str
files:
  description: Relative path to size (and sha256) of every file.
  returned: always
  type: dict
"""

import hashlib
import json
import os

from ansible.module_utils.basic import AnsibleModule

MANIFEST = "manifest.json"
SCHEMA = 1


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan(root, with_checksum):
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            full = os.path.join(directory, name)
            rel = os.path.relpath(full, root)
            if rel == MANIFEST or rel.startswith(MANIFEST + "."):
                continue
            stat = os.stat(full)
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            if with_checksum:
                entry["sha256"] = sha256(full)
            files[rel] = entry
    return files


def load(root):
    try:
        with open(os.path.join(root, MANIFEST), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def verify(root, params, deep):
    if not os.path.isdir(root):
        return False, "no directory %s" % root, {}
    manifest = load(root)
    if manifest is None:
        return False, "no readable %s" % MANIFEST, {}
    if manifest.get("params", {}) != params:
        return False, "made with other parameters: %s" % manifest.get("params"), manifest.get("files", {})
    recorded = manifest.get("files", {})
    found = scan(root, False)
    if not recorded:
        return False, "the manifest lists no files", recorded
    if set(found) != set(recorded):
        missing = sorted(set(recorded) - set(found))
        extra = sorted(set(found) - set(recorded))
        return False, "files differ (missing %s, unexpected %s)" % (missing, extra), recorded
    for rel, entry in recorded.items():
        if found[rel]["size"] != entry["size"] or found[rel]["mtime_ns"] != entry["mtime_ns"]:
            return False, "%s changed since the manifest was written" % rel, recorded
        if deep and "sha256" in entry and sha256(os.path.join(root, rel)) != entry["sha256"]:
            return False, "%s has another checksum" % rel, recorded
    return True, "", recorded


def write(module, root, params, with_checksum):
    if not os.path.isdir(root):
        module.fail_json(msg="no dataset directory %s" % root)
    previous = load(root)
    files = scan(root, False)
    old_files = (previous or {}).get("files", {})
    if with_checksum:
        for rel, entry in files.items():
            old = old_files.get(rel, {})
            unchanged = old.get("size") == entry["size"] and old.get("mtime_ns") == entry["mtime_ns"]
            entry["sha256"] = old["sha256"] if unchanged and "sha256" in old else sha256(os.path.join(root, rel))
    manifest = {"schema_version": SCHEMA, "params": params, "files": files}
    if previous == manifest:
        return False, files
    if not module.check_mode:
        tmp = os.path.join(root, MANIFEST + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, os.path.join(root, MANIFEST))
    return True, files


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["present", "verify"], "default": "present"},
            "params": {"type": "dict", "default": {}},
            "deep": {"type": "bool", "default": False},
            "checksum": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    root, params = module.params["path"], module.params["params"]
    # params come through Jinja and JSON; compare them in their JSON form
    params = json.loads(json.dumps(params, sort_keys=True))
    if module.params["state"] == "verify":
        valid, reason, files = verify(root, params, module.params["deep"])
        module.exit_json(changed=False, valid=valid, reason=reason, files=files)
    changed, files = write(module, root, params, module.params["checksum"])
    module.exit_json(changed=changed, valid=True, reason="", files=files)


if __name__ == "__main__":
    main()
