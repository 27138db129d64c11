"""Rules for user-supplied names and paths that end up in a delete or an overwrite.

A run id or a host label becomes one path component (``runs/<run_id>``,
``results/<run_id>/<host>``), so it must be a plain name: ``^[A-Za-z0-9._-]+$``, not ``.`` or
``..``. An install root (``dlrm_root``) or a results directory must be absolute, without
``.``/``..`` components, and not a system directory itself (``/``, ``/usr``, ``/etc``, ...),
since the pipeline creates and removes things below it. The preflight role asserts the same
rules (``roles/preflight/defaults/main.yml``: ``dlrm_preflight_forbidden_roots`` and
``dlrm_preflight_name_pattern``; tests/test_reliability_security.py keeps them equal).
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

from dlrm_bench.errors import UserError

NAME_PATTERN = r"^[A-Za-z0-9._-]+$"
NAME_MAX = 128
# Directories that must never be an install root, a results dir or a run output dir themselves.
FORBIDDEN_ROOTS = (
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
    "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr",
    "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib64", "/usr/local", "/usr/local/bin",
    "/usr/local/lib", "/usr/sbin", "/usr/share", "/var", "/var/lib", "/var/log", "/var/tmp",
)


def check_name(what: str, value: str) -> str:
    """``value`` as one safe path component, or ``UserError`` naming ``what`` and the rule."""
    text = str(value)
    if (not re.match(NAME_PATTERN, text) or text in (".", "..")
            or len(text) > NAME_MAX):
        raise UserError(
            f"{what} {text!r} is not a plain name: use letters, digits, '.', '_' and '-' "
            f"(at most {NAME_MAX} characters, not '.' or '..')")
    return text


def check_root(what: str, value: str | os.PathLike[str], *, resolve: bool = False) -> str:
    """``value`` as a directory the tool may create and clean below, or ``UserError``.

    ``resolve``: a command-line output dir, made absolute first (relative and ``..`` allowed);
    otherwise (an install root from a variable) it must already be absolute and plain.
    """
    text = str(value)
    if not text.strip():
        raise UserError(f"{what} is empty")
    if resolve:
        text = os.path.abspath(text)
    if not PurePosixPath(text).is_absolute():
        raise UserError(f"{what} {text!r} must be an absolute path")
    if any(part in (".", "..") for part in text.split("/")):
        raise UserError(f"{what} {text!r} must not contain '.' or '..' components")
    normal = "/" + "/".join(p for p in text.split("/") if p)
    if normal in FORBIDDEN_ROOTS:
        raise UserError(f"{what} {text!r} is a system directory; use a directory of its own "
                        f"below it (e.g. {normal.rstrip('/')}/dlrm-bench)")
    return text
