"""Python API of the whole pipeline: ``run.yml`` through ansible-runner, KPIs back as objects.

Example (from the repository root; the README's snippet)::

    from dlrm_bench.orchestrate import run_benchmark

    result = run_benchmark(inventory="inventory/localhost.yml", precision="avx_fp32",
                           preset="tiny", steps=20)
    print(result.status, result.throughput)          # "successful", cluster samples/sec
    for name, host in result.hosts.items():          # per-host KPIs (dlrm_bench.kpi.HostKpi)
        print(name, host.metrics["throughput_samples_per_s"])
    result.raise_for_status()                        # RuntimeError naming failed hosts

Every keyword that is not an argument below is an Ansible variable of ``group_vars/all.yml``
(``precision``, ``steps``, ``dlrm_root``, ``hugepages``, ...) passed as an extra var. Each run gets
a fresh private data dir (ansible-runner writes ``env/extravars`` there, so nothing leaks into the
next run), removed afterwards unless ``keep=True``. The run id is settled here (``run_id``, or a
new UTC timestamp with a random suffix) and passed to the playbook together with ``results_dir``,
so the results are always ``<results_dir>/<run_id>/<host>/``.

In the background, with live events and cancellation::

    handle = run_benchmark_async(inventory="inventory/lab.yml", precision="amx_int8")
    for state in handle.tracker.snapshot(): ...      # per-host stage, instances, elapsed
    handle.cancel()                                  # stops the playbook, the instances, restores
    result = handle.wait()                           # result.status == "canceled"

A canceled (or timed-out) run stops the benchmark instances of this run on every host (matched by
their run directory) and runs ``playbooks/restore.yml`` so that the hosts' tuning is put back.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlrm_bench import kpi
from dlrm_bench.errors import UserError
from dlrm_bench.orchestrate_events import HostState, ProgressTracker
from dlrm_bench.safety import check_name, check_root

PLAYBOOK = "run.yml"
RESTORE_PLAYBOOK = "playbooks/restore.yml"
DEFAULT_INVENTORY = "inventory/localhost.yml"
EventCallback = Callable[[dict[str, Any]], None]

# Stops this run's processes on a host: the launch wrapper, the launcher and its instances carry
# `--output <dlrm_root>/runs/<run_id>` on their command lines (the path is built in the shell, so
# this script's own command line never matches).
STOP_PLAYBOOK = """\
- name: Stop the benchmark processes of a canceled run
  hosts: "{{ dlrm_stop_pattern | default('dlrm_hosts') }}"
  gather_facts: false
  ignore_unreachable: true
  tasks:
    - name: Stop the processes of this run (launch wrapper, launcher, instances)
      ansible.builtin.shell:
        cmd: |
          root={{ dlrm_root | default('/opt/dlrm-bench') | quote }}
          id={{ dlrm_stop_run_id | quote }}
          pattern="--output $root/runs/$id"
          for cmdline in /proc/[0-9]*/cmdline; do
            pid=${cmdline#/proc/}; pid=${pid%/cmdline}
            [ "$pid" = "$$" ] && continue
            if tr '\\0' ' ' < "$cmdline" 2>/dev/null | grep -qF -- "$pattern"; then
              kill -TERM "$pid" 2>/dev/null && echo "stopped pid $pid"
            fi
          done
          exit 0
        executable: /bin/bash
      register: dlrm_stop
      changed_when: dlrm_stop.stdout | length > 0
      failed_when: false
"""


def find_playbook_dir(playbook_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding ``run.yml``: the argument, ``$DLRM_BENCH_PLAYBOOK_DIR``, the source
    tree of this package (an editable install's repository root) or the current directory."""
    candidates = [Path(playbook_dir)] if playbook_dir else []
    if not candidates:
        if os.environ.get("DLRM_BENCH_PLAYBOOK_DIR"):
            candidates.append(Path(os.environ["DLRM_BENCH_PLAYBOOK_DIR"]))
        candidates += [Path(__file__).resolve().parent.parent, Path.cwd()]
    for path in candidates:
        if (path / PLAYBOOK).is_file():
            return path.resolve()
    raise UserError(f"no {PLAYBOOK} in {', '.join(map(str, candidates))} "
                    "(pass playbook_dir, or set DLRM_BENCH_PLAYBOOK_DIR to the repository root)")


def resolve_inventory(inventory: str | os.PathLike[str] | dict[str, Any] | None,
                      playbook_dir: Path) -> str | dict[str, Any]:
    """An inventory path (relative to the current directory, else to the playbook dir) or a
    YAML-style inventory dict (``{"dlrm_hosts": {"hosts": {...}}}``), as ansible-runner takes it."""
    if isinstance(inventory, dict):
        return inventory
    if inventory is None:
        inventory = DEFAULT_INVENTORY
    path = Path(inventory)
    for candidate in (path, playbook_dir / path):
        if candidate.exists():
            return str(candidate.resolve())
    if "," in str(inventory):  # an Ansible host list: "host1,host2,"
        return str(inventory)
    raise UserError(f"inventory {inventory} not found (also looked in {playbook_dir})")


def check_paths(run_id: str | None, results_dir: str | os.PathLike[str] | None,
                params: dict[str, Any]) -> None:
    """Refuse, before anything runs, a run id or a directory that could point a delete or an
    overwrite outside the project's directories (``dlrm_bench.safety``; preflight asserts the
    same for ``-e`` on the command line)."""
    if run_id:
        check_name("run_id", run_id)
    if results_dir:
        check_root("results_dir", results_dir, resolve=True)
    if isinstance(params.get("dlrm_root"), str):
        check_root("dlrm_root", params["dlrm_root"])


def new_run_id() -> str:
    """A UTC timestamp as the playbook makes it, plus a random suffix (parallel runs)."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


@dataclass
class BenchmarkResult:
    """The outcome of one ``run.yml`` run."""

    status: str  # ansible-runner: successful | failed | canceled | timeout
    rc: int | None
    run_id: str
    results_dir: Path  # <results_dir>/<run_id>
    cluster: kpi.ClusterKpi | None  # None when no host produced results
    hosts: dict[str, kpi.HostKpi]
    failed_hosts: list[str]
    unreachable_hosts: list[str]
    errors: dict[str, str] = field(default_factory=dict)  # host -> last failure message
    stats: dict[str, Any] = field(default_factory=dict)  # ansible-runner's per-host counters
    host_states: dict[str, HostState] = field(default_factory=dict)
    private_data_dir: Path | None = None  # kept only with keep=True

    @property
    def ok(self) -> bool:
        return (self.status == "successful" and not self.failed_hosts
                and not self.unreachable_hosts and self.cluster is not None)

    @property
    def throughput(self) -> float | None:
        """Cluster samples/sec (sum over hosts and instances)."""
        return None if self.cluster is None else \
            self.cluster.metrics.get("throughput_samples_per_s")

    def raise_for_status(self) -> BenchmarkResult:
        if not self.ok:
            bad = {h: self.errors.get(h, "failed") for h in
                   self.failed_hosts + self.unreachable_hosts}
            detail = "; ".join(f"{h}: {m}" for h, m in bad.items()) or "no results"
            raise RuntimeError(f"benchmark run {self.run_id} {self.status}: {detail}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "rc": self.rc, "run_id": self.run_id,
                "results_dir": str(self.results_dir), "failed_hosts": self.failed_hosts,
                "unreachable_hosts": self.unreachable_hosts, "errors": self.errors,
                "stats": self.stats,
                "cluster": self.cluster.to_dict() if self.cluster else None}


class BenchmarkHandle:
    """A run in a background thread: ``events``, ``tracker``, ``cancel()``, ``wait()``."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.tracker = ProgressTracker()
        self.run_id = ""
        self.results_dir = Path()
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._result: BenchmarkResult | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def cancel(self) -> None:
        """Ask the playbook to stop (it is killed within about a second)."""
        self._cancel.set()

    @property
    def canceled(self) -> bool:
        return self._cancel.is_set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> BenchmarkResult:
        """The result; raises ``TimeoutError`` if not done within ``timeout`` seconds, or the
        exception the run raised."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"benchmark run {self.run_id} still running")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def _base_settings(inventory: Any, playbook_dir: Path, envvars: dict[str, str] | None,
                   quiet: bool) -> dict[str, Any]:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {"PATH": path, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    if (playbook_dir / "ansible.cfg").is_file() and "ANSIBLE_CONFIG" not in os.environ:
        env["ANSIBLE_CONFIG"] = str(playbook_dir / "ansible.cfg")  # also from a world-writable dir
    env.update(envvars or {})
    return {"project_dir": str(playbook_dir), "inventory": inventory, "envvars": env,
            "quiet": quiet, "settings": {"pexpect_timeout": 0.5}}


def _require_runner() -> None:
    import importlib.util

    if importlib.util.find_spec("ansible_runner") is None:
        raise UserError("ansible-runner is not installed: pip install 'dlrm-bench[orchestrate]'")


def _run_playbook(playbook: str, base: dict[str, Any], extravars: dict[str, Any],
                  keep_dir: Path | None = None, **kwargs: Any) -> tuple[Any, Path]:
    import ansible_runner

    private = keep_dir or Path(tempfile.mkdtemp(prefix="dlrm-bench-runner-"))
    runner = ansible_runner.run(private_data_dir=str(private), playbook=playbook,
                                extravars=extravars, **base, **kwargs)
    return runner, private


def _stop_and_restore(base: dict[str, Any], extravars: dict[str, Any], run_id: str,
                      keep: bool) -> None:
    """After a cancel or timeout: stop this run's processes, then put the host settings back."""
    privates: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="dlrm-bench-stop-") as tmp:
        stop = Path(tmp) / "stop.yml"
        stop.write_text(STOP_PLAYBOOK)
        for playbook in (str(stop), RESTORE_PLAYBOOK):
            _, private = _run_playbook(playbook, base, {**extravars,
                                                        "dlrm_stop_run_id": run_id})
            privates.append(private)
    if not keep:
        for private in privates:
            shutil.rmtree(private, ignore_errors=True)


def _collect(runner: Any, tracker: ProgressTracker, run_id: str, run_dir: Path,
             private: Path | None) -> BenchmarkResult:
    stats = runner.stats or tracker.stats or {}
    failed = sorted((stats.get("failures") or {}).keys())
    dark = sorted((stats.get("dark") or {}).keys())
    if runner.status in ("canceled", "timeout"):
        tracker.cancel()
    states = {h.host: h for h in tracker.snapshot()}
    errors = {h: s.error for h, s in states.items() if s.error and (h in failed or h in dark)}
    cluster = None
    expected = sorted(set(stats.get("processed") or {}) | set(failed) | set(dark))
    if run_dir.is_dir() and kpi.find_host_dirs(run_dir):
        try:
            cluster = kpi.rollup([run_dir], expected_hosts=expected)
        except UserError as exc:
            errors.setdefault("(results)", str(exc))
    hosts = {h.host: h for h in cluster.hosts} if cluster else {}
    return BenchmarkResult(
        status=str(runner.status), rc=runner.rc, run_id=run_id, results_dir=run_dir,
        cluster=cluster, hosts=hosts, failed_hosts=failed, unreachable_hosts=dark,
        errors=errors, stats=dict(stats), host_states=states, private_data_dir=private)


def run_benchmark(inventory: str | os.PathLike[str] | dict[str, Any] | None = None,
                  precision: str | None = None, *,
                  playbook_dir: str | os.PathLike[str] | None = None,
                  results_dir: str | os.PathLike[str] | None = None,
                  run_id: str | None = None, keep: bool = False,
                  event_callback: EventCallback | None = None,
                  cancel_callback: Callable[[], bool] | None = None,
                  tracker: ProgressTracker | None = None,
                  timeout: int | None = None, limit: str | None = None,
                  tags: str | None = None, envvars: dict[str, str] | None = None,
                  restore_on_cancel: bool = True, quiet: bool = True,
                  _handle: BenchmarkHandle | None = None,
                  **params: Any) -> BenchmarkResult:
    """Run ``run.yml`` (provision, deploy, benchmark, collect, report, restore) and return KPIs.

    ``inventory``: a path (default ``inventory/localhost.yml``; relative paths are tried in the
    current directory, then in the playbook dir) or an inventory dict. ``precision`` and
    ``**params``: Ansible variables (``None`` precision = the pipeline's default, avx_fp32).
    ``results_dir``: where results land on the controller (default ``<playbook_dir>/results``).
    ``event_callback(event)``: every ansible-runner event, as it happens. ``cancel_callback()``:
    polled about twice a second; True stops the run (then, with ``restore_on_cancel``, this run's
    processes are stopped and the hosts restored). ``timeout``: seconds for the whole playbook.
    ``keep``: keep ansible-runner's private data dir (artifacts, events) and report it.

    Example::

        result = run_benchmark(inventory="inventory/localhost.yml", precision="avx_fp32",
                               preset="tiny", steps=20)
        result.raise_for_status()
        print(result.cluster.kpi_block())   # the seed's Key KPI block, summed over the hosts
    """
    _require_runner()
    check_paths(run_id, results_dir, params)
    pdir = find_playbook_dir(playbook_dir)
    inv = resolve_inventory(inventory, pdir)
    run_id = run_id or new_run_id()
    results_root = Path(results_dir).resolve() if results_dir else pdir / "results"
    extravars = dict(params)
    if precision is not None:
        extravars["precision"] = precision
    extravars.update(results_dir=str(results_root), run_id=run_id)
    tracker = tracker or (_handle.tracker if _handle else ProgressTracker())
    if tracker.planned_instances is None and params.get("instance_number") is not None:
        tracker.planned_instances = int(params["instance_number"])
    if _handle is not None:
        _handle.run_id, _handle.results_dir = run_id, results_root / run_id

    def on_event(event: dict[str, Any]) -> bool:
        tracker.feed(event)
        if _handle is not None:
            _handle.events.append(event)
        if event_callback is not None:
            event_callback(event)
        return True  # keep the event on disk: runner.stats is read from it

    def should_cancel() -> bool:
        return bool((cancel_callback is not None and cancel_callback())
                    or (_handle is not None and _handle.canceled))

    base = _base_settings(inv, pdir, envvars, quiet)
    extra: dict[str, Any] = {"limit": limit} if limit else {}
    if tags:
        extra["tags"] = tags
    private = Path(tempfile.mkdtemp(prefix="dlrm-bench-runner-"))
    try:
        runner, _ = _run_playbook(PLAYBOOK, base, extravars, keep_dir=private,
                                  event_handler=on_event, cancel_callback=should_cancel,
                                  timeout=timeout, **extra)
        if runner.status in ("canceled", "timeout") and restore_on_cancel:
            _stop_and_restore(base, extravars, run_id, keep)
        return _collect(runner, tracker, run_id, results_root / run_id,
                        private if keep else None)
    finally:
        if not keep:
            shutil.rmtree(private, ignore_errors=True)


def run_benchmark_async(inventory: str | os.PathLike[str] | dict[str, Any] | None = None,
                        precision: str | None = None, **kwargs: Any) -> BenchmarkHandle:
    """``run_benchmark`` in a background thread; returns a ``BenchmarkHandle`` at once.

    ``handle.events`` grows as ansible-runner reports; ``handle.tracker.snapshot()`` gives the
    per-host states; ``handle.cancel()`` stops the playbook; ``handle.wait()`` returns the
    ``BenchmarkResult`` (status "canceled" after a cancel). Arguments: as ``run_benchmark``.
    """
    _require_runner()
    check_paths(kwargs.get("run_id"), kwargs.get("results_dir"), kwargs)
    handle = BenchmarkHandle()
    pdir = find_playbook_dir(kwargs.get("playbook_dir"))  # bad input fails here, not later
    resolve_inventory(inventory, pdir)
    kwargs["run_id"] = kwargs.get("run_id") or new_run_id()
    handle.run_id = kwargs["run_id"]
    if kwargs.get("tracker") is not None:
        handle.tracker = kwargs["tracker"]

    def target() -> None:
        try:
            handle._result = run_benchmark(inventory, precision, _handle=handle, **kwargs)
        except BaseException as exc:  # handed to wait()
            handle._error = exc
        finally:
            handle._done.set()

    handle._thread = threading.Thread(target=target, name="dlrm-bench-run", daemon=True)
    handle._thread.start()
    return handle
