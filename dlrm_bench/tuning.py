"""Host-side restore of the settings the tune role changed, for when the controller is gone.

The tune role's ``dlrm_tune`` module saves each sysfs value it changes (hugepages, THP, the
cpufreq governor) in ``dlrm_root/state/tune.json`` before writing, as
``{"settings": {path: {"setting": name, "value": original}}}``, and its ``state=restored`` puts
them back. When the controller dies mid-run (Ctrl-C of ``ansible-playbook``, a lost laptop), no
restore play comes: ``dlrm-bench launch --lease ... --lease-restore STATE`` then does the same
writes itself once the lease lapses. Only paths under /sys are written; the state file is
removed when every value is back, so a later ``playbooks/restore.yml`` finds nothing to do.
Like the module, it first deletes hugepage table files no process holds any more
(``dlrm_bench.hugepages``) and unmounts the hugetlbfs the tune role mounted (``mounted``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from dlrm_bench.hugepages import hugetlbfs_mounts, remove_stale_tables
from dlrm_bench.results import sysfs_selected

SYSFS = Path("/sys")


def _read(path: Path) -> str:
    return sysfs_selected(path.read_text(encoding="utf-8").strip())


def restore_saved_settings(state_file: Path) -> list[str]:
    """Write the saved values back; return one line per setting (or why nothing was done)."""
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"nothing to restore: no {state_file}"]
    except (OSError, ValueError) as exc:
        return [f"cannot read {state_file}: {exc}"]
    settings = state.get("settings", {}) if isinstance(state, dict) else {}
    lines, failed = remove_stale_tables(), False
    for raw_path, entry in sorted(settings.items()):
        path = Path(raw_path)
        if not path.is_relative_to(SYSFS) or ".." in path.parts or not isinstance(entry, dict):
            lines.append(f"skipped {raw_path}: not a sysfs setting")
            failed = True
            continue
        if not path.exists():
            continue
        value = str(entry.get("value", ""))
        try:
            if _read(path) != value:
                path.write_text(value, encoding="utf-8")
            lines.append(f"{entry.get('setting', path.name)}: {path} = {_read(path)}")
        except OSError as exc:
            lines.append(f"cannot restore {path}: {exc.strerror or exc}")
            failed = True
    mounted = {str(m.path) for m in hugetlbfs_mounts()}
    for path in state.get("mounted", []) if isinstance(state, dict) else []:
        if str(path) in mounted:
            proc = subprocess.run(["umount", str(path)], capture_output=True, text=True)
            lines.append(f"unmounted the hugetlbfs at {path}" if proc.returncode == 0 else
                         f"left the hugetlbfs at {path} mounted: {proc.stderr.strip()}")
    if not failed:
        state_file.unlink(missing_ok=True)
    return lines
