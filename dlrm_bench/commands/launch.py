"""``dlrm-bench launch``: run N pinned ``dlrm-bench run`` instances on this host together.

Launcher flags are parsed here; every other argument is forwarded verbatim to each instance's
``dlrm-bench run`` (so ``launch`` takes all of ``run``'s flags and the seed's env vars).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlrm_bench import config, launcher, topology
from dlrm_bench.cli import OneLineParser
from dlrm_bench.config import parse_bool
from dlrm_bench.errors import UserError
from dlrm_bench.safety import check_name, check_root
from dlrm_bench.supervisor import InstanceStatus, Lease, Progress

RESERVED = ("--instance-id", "--barrier-dir")  # the launcher sets these for each instance


class _ForwardingParser(OneLineParser):
    """Keeps the arguments it does not know (``run``'s flags) in ``run_args``, in order."""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        ns, rest = super().parse_known_args(args, namespace)
        ns.run_args = [*getattr(ns, "run_args", []), *rest]
        return ns, []


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "launch", allow_abbrev=False,
        help="run N pinned instances of `run` on this host, started together",
        description="Run pinned `dlrm-bench run` instances in parallel (one per NUMA node by "
                    "default). Arguments not listed here are passed to every `run` instance.")
    p.__class__ = _ForwardingParser
    p.add_argument("--cores-per-instance", type=int, metavar="N",
                   help="physical cores per instance (CORES_PER_INSTANCE; default: a NUMA "
                        "node's cores, 4 in latency mode)")
    p.add_argument("--instances", type=int, metavar="N",
                   help="number of instances (INSTANCE_NUMBER; default: one per NUMA node for "
                        "inference throughput, cores / cores-per-instance for latency, else 1)")
    p.add_argument("--weight-sharing", action=argparse.BooleanOptionalAction, default=None,
                   help="instances on one node share one memory-mapped copy of the weights "
                        "(WEIGHT_SHARING True/False; default: on for inference, off for training)")
    p.add_argument("--output", metavar="RUN_DIR",
                   help="host run directory (default: runs/<UTC time>-<host>)")
    p.add_argument("--weights-cache", metavar="DIR",
                   help="where the shared weights live (DIR/weights-node<N>; default: RUN_DIR)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads per instance (default: its cores)")
    p.add_argument("--pinning", choices=("auto", "numactl", "affinity", "none"), default="auto",
                   help="numactl when it can bind here, else sched_setaffinity (default: auto)")
    p.add_argument("--allocator", choices=("auto", "jemalloc", "tcmalloc", "none"),
                   default="auto", help="malloc to LD_PRELOAD when installed (default: auto)")
    p.add_argument("--barrier-timeout", type=float, default=600.0, metavar="S",
                   help="seconds an instance waits at the start barrier (default: 600)")
    p.add_argument("--host-label", metavar="NAME", help="host name in results (default: hostname)")
    p.add_argument("--lease", metavar="FILE",
                   help="a file the controller touches while it waits (Ansible does): when it is "
                        "not renewed for --lease-timeout s the instances are stopped (exit 3)")
    p.add_argument("--lease-timeout", type=float, default=120.0, metavar="S",
                   help="seconds without a lease renewal before stopping (default: 120)")
    p.add_argument("--lease-restore", metavar="STATE_FILE",
                   help="when the lease lapses, also put back the host settings saved in this "
                        "tune state file (dlrm_root/state/tune.json)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.set_defaults(func=main, run_args=[])


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name} must be an integer, got {value!r}") from None


def run_config(run_args: Sequence[str]) -> config.RunConfig:
    """The forwarded arguments resolved exactly as each ``run`` will (flag, case, seed env var),
    so a bad value fails here in one line instead of in every instance."""
    from dlrm_bench.commands.run import add_run_arguments, flags_of

    parser = argparse.ArgumentParser(prog="dlrm-bench run", add_help=False, allow_abbrev=False,
                                     exit_on_error=False)
    add_run_arguments(parser)
    try:
        ns, unknown = parser.parse_known_args(list(run_args))
    except argparse.ArgumentError as exc:
        raise UserError(f"run {exc}") from None
    if unknown:
        raise UserError(f"unrecognized arguments: {' '.join(unknown)} (neither a launch nor a "
                        "run flag; see `dlrm-bench launch --help` and `dlrm-bench run --help`)")
    return config.resolve(flags_of(ns))


def make_plan(args: argparse.Namespace) -> launcher.LaunchPlan:
    run_args = list(args.run_args)
    for flag in RESERVED:
        if any(a == flag or a.startswith(flag + "=") for a in run_args):
            raise UserError(f"{flag} is set by the launcher for each instance; do not pass it")
    cfg = run_config(run_args)
    function, mode = cfg.function, cfg.mode
    if cfg.backend == "native":  # the host's CPU flags: one line here, not one per instance
        from dlrm_bench.cpu import check_supported

        check_supported(cfg.precision, function)
    if args.threads is not None and args.threads < 1:
        raise UserError(f"threads must be > 0, got {args.threads}")
    if args.barrier_timeout <= 0:
        raise UserError(f"barrier timeout must be > 0, got {args.barrier_timeout:g}")
    if args.lease_timeout <= 0:
        raise UserError(f"lease timeout must be > 0, got {args.lease_timeout:g}")
    if args.lease_restore and not args.lease:
        raise UserError("--lease-restore needs --lease")
    cpi = args.cores_per_instance if args.cores_per_instance is not None \
        else _env_int("CORES_PER_INSTANCE")
    count = args.instances if args.instances is not None else _env_int("INSTANCE_NUMBER")
    sharing = args.weight_sharing
    if sharing is None and os.environ.get("WEIGHT_SHARING", "").strip():
        sharing = parse_bool("WEIGHT_SHARING", os.environ["WEIGHT_SHARING"])
    if sharing is None:
        sharing = function == "inference"
    if sharing and function == "training":
        raise UserError("training updates its weights and cannot share them; pass "
                        "--no-weight-sharing (WEIGHT_SHARING=False)")
    topo = topology.detect()
    slots = launcher.plan_layout(topo, function, mode, cpi, count)
    host = check_name("--host-label", args.host_label) if args.host_label \
        else socket.gethostname()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(args.output or Path("runs") / f"{stamp}-{host}").absolute()
    check_root("--output", run_dir, resolve=True)
    if not args.dry_run and ((run_dir / "host_result.json").exists()
                             or any(run_dir.glob("instance-*"))):
        raise UserError(f"{run_dir} already holds a run; pass a new --output")
    plan = launcher.build_plan(
        run_args, run_dir, topo, slots, function=function, mode=mode, weight_sharing=sharing,
        pinning=launcher.choose_pinning(args.pinning, slots[0]),
        allocator=launcher.find_allocator(args.allocator),
        weights_root=Path(args.weights_cache).absolute() if args.weights_cache else None,
        threads=args.threads, barrier_timeout=args.barrier_timeout, host=host)
    if args.lease:
        plan.lease = Lease(Path(args.lease).absolute(), args.lease_timeout)
        plan.lease_restore = Path(args.lease_restore).absolute() if args.lease_restore else None
    return plan


def print_plan(plan: launcher.LaunchPlan) -> None:
    print(f"run dir: {plan.run_dir}")
    print(f"{plan.function} {plan.mode}: {len(plan.instances)} instance(s), weight sharing "
          f"{'on' if plan.weight_sharing else 'off'}")
    print(f"pinning: {plan.pinning.method}" + (f" ({plan.pinning.note})" if plan.pinning.note
                                              else ""))
    print(f"allocator: {plan.allocator.name}" + (f" {plan.allocator.path}"
                                                 if plan.allocator.path else ""))
    for ip in plan.instances:
        d = ip.to_dict()
        print(f"instance {ip.id}: cpus {d['cpulist']} node {d['nodelist']} threads {ip.threads}")
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in ip.env.items())
        print(f"  {env} {shlex.join(ip.command)}")


class LiveProgress(Progress):
    """A rich live table on a terminal: each instance's state, pid, cores and elapsed time."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self._last = 0.0

    def __enter__(self) -> LiveProgress:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def event(self, message: str) -> None:
        self.console.log(message)

    def update(self, states: Sequence[InstanceStatus], phase: str, elapsed: float) -> None:
        if elapsed - self._last < 0.25 and phase != "done":
            return
        from rich.table import Table

        self._last = elapsed
        table = Table(title=f"dlrm-bench launch: {phase}, {elapsed:.0f} s")
        for col in ("instance", "pid", "cpus", "node", "state", "elapsed s"):
            table.add_column(col)
        for st in states:
            d = st.plan.to_dict()
            spent = ((st.ended or time.monotonic()) - st.started) if st.started else 0.0
            table.add_row(str(st.plan.id), str(st.pid or ""), d["cpulist"], d["nodelist"],
                          st.state, f"{spent:.0f}")
        self.live.update(table, refresh=True)


def launch(argv: Sequence[str], progress: Progress | None = None) -> tuple[int, dict[str, Any]]:
    """Python entry: ``launch(["--instances", "2", "--preset", "tiny", ...])`` -> (exit code,
    host result); the same arguments as the CLI (launcher flags plus forwarded run flags)."""
    parser = OneLineParser(prog="dlrm-bench", allow_abbrev=False)
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["launch", *argv])
    plan = make_plan(args)
    if args.dry_run:
        return 0, {"status": "planned", "run_dir": str(plan.run_dir),
                   "instances": [ip.to_dict() for ip in plan.instances]}
    return launcher.execute(plan, progress)


def main(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    if args.dry_run:
        print_plan(plan)
        return 0
    if sys.stderr.isatty():
        with LiveProgress() as live:
            code, result = launcher.execute(plan, live)
    else:
        code, result = launcher.execute(plan)
    try:
        for failure in result["failures"]:
            print(f"dlrm-bench launch: {failure}", file=sys.stderr)
        print(f"host result: {plan.run_dir / 'host_result.json'} (status {result['status']})",
              file=sys.stderr)
        if any(i.get("metrics") for i in result["instances"]):
            from dlrm_bench import kpi

            print(kpi.rollup([plan.run_dir]).kpi_block(), end="")
    except BrokenPipeError:  # the reader went (a stopped Ansible job): the results are on disk
        _silence_output()
    return code


def _silence_output() -> None:
    """Point stdout and stderr at /dev/null, so that the exit code stays the launcher's rather
    than a failed flush of a closed pipe at interpreter exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        os.dup2(devnull, stream.fileno())
    os.close(devnull)
