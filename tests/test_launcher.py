"""Launcher: layout defaults and errors, CLI forwarding, process supervision, real instances."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from dlrm_bench import config, launcher, topology
from dlrm_bench.cli import build_parser
from dlrm_bench.commands import launch as launch_cmd
from dlrm_bench.errors import UserError
from dlrm_bench.launcher import Allocator, Pinning, build_plan, plan_layout
from dlrm_bench.supervisor import Progress, _child_setup
from dlrm_bench.topology import LogicalCpu, Topology, build_topology


def fake_topology(sockets: int = 2, nodes_per_socket: int = 2, cores_per_node: int = 4,
                  smt: int = 2) -> Topology:
    total = sockets * nodes_per_socket * cores_per_node
    cpus = []
    for core in range(total):
        node = core // cores_per_node
        threads = tuple(core + t * total for t in range(smt))
        cpus += [LogicalCpu(c, node // nodes_per_socket, node, threads) for c in threads]
    return build_topology(cpus, None, "test")


def assert_disjoint(slots: list[launcher.Slot]) -> None:
    used = [c for s in slots for c in s.cpus]
    assert len(used) == len(set(used)), f"instances share a core: {slots}"


# -- layout ---------------------------------------------------------------------------------------

def test_throughput_default_is_one_instance_per_node_with_its_physical_cores() -> None:
    slots = plan_layout(fake_topology(), "inference", "throughput")
    assert [s.cpus for s in slots] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11),
                                       (12, 13, 14, 15)]  # no SMT sibling (16-31)
    assert [s.nodes for s in slots] == [(0,), (1,), (2,), (3,)]


def test_latency_default_four_cores_and_small_host_error() -> None:
    slots = plan_layout(fake_topology(), "inference", "latency")
    assert len(slots) == 4 and all(len(s.cpus) == 4 and len(s.nodes) == 1 for s in slots)
    small = fake_topology(sockets=1, nodes_per_socket=1, cores_per_node=2)
    with pytest.raises(UserError) as err:
        plan_layout(small, "inference", "latency")
    assert str(err.value) == ("latency mode needs 4 cores per instance but this host allows 2; "
                              "pass --cores-per-instance 1 (CORES_PER_INSTANCE)")
    assert [s.cpus for s in plan_layout(small, "inference", "latency", 1)] == [(0,), (1,)]


def test_explicit_layouts_stay_node_local_and_never_share_cores() -> None:
    topo = fake_topology()
    slots = plan_layout(topo, "inference", "throughput", cores_per_instance=2, instances=3)
    assert [s.cpus for s in slots] == [(0, 1), (4, 5), (8, 9)]  # spread over nodes first
    slots = plan_layout(topo, "inference", "throughput", cores_per_instance=3, instances=5)
    assert_disjoint(slots)
    assert len(slots) == 5 and any(len(s.nodes) > 1 for s in slots)  # must straddle
    assert len(plan_layout(topo, "inference", "throughput", cores_per_instance=8)) == 2
    assert [len(s.cpus) for s in plan_layout(topo, "inference", "throughput", instances=2)] \
        == [8, 8]
    for function, mode in (("inference", "accuracy"), ("training", "throughput")):
        (only,) = plan_layout(topo, function, mode)
        assert len(only.cpus) == 16 and only.nodes == (0, 1, 2, 3)
    assert len(plan_layout(topo, "training", "throughput", instances=2)) == 2


def test_oversubscription_is_refused() -> None:
    topo = fake_topology()
    with pytest.raises(UserError, match=r"17 instance\(s\) x 1 core\(s\) need 17 physical cores "
                                        r"but this host allows 16"):
        plan_layout(topo, "inference", "throughput", cores_per_instance=1, instances=17)
    with pytest.raises(UserError, match="need 20 physical cores"):
        plan_layout(topo, "inference", "latency", instances=5)


# -- CLI ------------------------------------------------------------------------------------------

@pytest.fixture
def two_core_host(monkeypatch: pytest.MonkeyPatch) -> Topology:
    topo = fake_topology(sockets=1, nodes_per_socket=1, cores_per_node=2, smt=1)
    monkeypatch.setattr(topology, "detect", lambda *a, **k: topo)
    for name in ("CORES_PER_INSTANCE", "INSTANCE_NUMBER", "WEIGHT_SHARING", "CASE",
                 *config.ENV_NAMES.values()):
        monkeypatch.delenv(name, raising=False)
    return topo


def parse(*argv: str) -> Any:
    return build_parser().parse_args(["launch", *argv])


def test_unknown_flags_are_forwarded_to_run_in_order(two_core_host: Topology,
                                                     tmp_path: Path) -> None:
    args = parse("--preset", "tiny", "--instances", "2", "--steps=5", "--seed", "7",
                 "--output", str(tmp_path), "--cores-per-instance", "1")
    assert args.run_args == ["--preset", "tiny", "--steps=5", "--seed", "7"]
    plan = launch_cmd.make_plan(args)
    cmd = plan.instances[1].command
    i = cmd.index("run")
    assert cmd[i + 1:i + 6] == ["--preset", "tiny", "--steps=5", "--seed", "7"]
    assert cmd[cmd.index("--threads") + 1] == "1" and cmd[cmd.index("--instance-id") + 1] == "1"
    assert cmd[cmd.index("--output") + 1] == str(tmp_path / "instance-1")
    assert cmd[cmd.index("--barrier-dir") + 1] == str(tmp_path / ".barrier")
    assert plan.instances[1].env["OMP_NUM_THREADS"] == "1"
    assert plan.instances[1].env["KMP_AFFINITY"] == "granularity=fine,compact,1,0"
    with pytest.raises(UserError, match="--instance-id is set by the launcher"):
        launch_cmd.make_plan(parse("--instance-id", "3"))
    # Forwarded flags are checked as `run` would, once, before any instance starts.
    with pytest.raises(UserError, match="precision 'bogus' is not one of"):
        launch_cmd.make_plan(parse("--precision", "bogus"))
    with pytest.raises(UserError, match="unrecognized arguments: --bogus 3"):
        launch_cmd.make_plan(parse("--bogus", "3"))


def test_seed_env_vars_and_weight_sharing(two_core_host: Topology, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODE", "latency")
    with pytest.raises(UserError, match="pass --cores-per-instance 1"):
        launch_cmd.make_plan(parse("--output", str(tmp_path)))
    monkeypatch.setenv("CORES_PER_INSTANCE", "1")
    plan = launch_cmd.make_plan(parse("--output", str(tmp_path)))
    assert (plan.mode, len(plan.instances), plan.weight_sharing) == ("latency", 2, True)
    caches = {str(p.weights_cache) for p in plan.instances}
    assert caches == {str(tmp_path / "weights-node0")}  # one copy per node
    assert "--weights-cache" in plan.instances[0].command
    monkeypatch.setenv("WEIGHT_SHARING", "False")
    monkeypatch.setenv("INSTANCE_NUMBER", "1")
    plan = launch_cmd.make_plan(parse("--output", str(tmp_path)))
    assert len(plan.instances) == 1 and not plan.weight_sharing
    assert "--weights-cache" not in plan.instances[0].command
    monkeypatch.delenv("WEIGHT_SHARING")
    monkeypatch.delenv("MODE")
    plan = launch_cmd.make_plan(parse("--case", "training_throughput_avx_fp32"))
    assert plan.function == "training" and not plan.weight_sharing
    with pytest.raises(UserError, match="cannot share them"):
        launch_cmd.make_plan(parse("--function", "training", "--weight-sharing"))


def test_dry_run_prints_the_plan(two_core_host: Topology, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from dlrm_bench.cli import main

    assert main(["launch", "--dry-run", "--instances", "2", "--pinning", "affinity",
                 "--allocator", "none", "--output", str(tmp_path), "--steps", "7"]) == 0
    out = capsys.readouterr().out
    assert "instance 0: cpus 0 node 0 threads 1" in out
    assert "instance 1: cpus 1 node 0 threads 1" in out and "--steps 7" in out
    assert "pinning: affinity" in out and not (tmp_path / "host_result.json").exists()
    code, planned = launch_cmd.launch(["--dry-run", "--cores-per-instance", "1", "--mode",
                                       "latency", "--output", str(tmp_path)])
    assert code == 0 and [i["cpulist"] for i in planned["instances"]] == ["0", "1"]


def test_allocator_and_pinning_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    alloc = launcher.find_allocator("auto", {"LD_PRELOAD": "/x.so"})
    if alloc.name == "jemalloc":
        assert alloc.env["MALLOC_CONF"] == launcher.SEED_MALLOC_CONF
        assert alloc.env["LD_PRELOAD"].endswith(":/x.so") and Path(alloc.path or "").is_file()
    assert launcher.find_allocator("none").env == {}
    monkeypatch.setattr(launcher.shutil, "which", lambda name: None)
    assert launcher.choose_pinning("auto", launcher.Slot((0,), (0,))).method == "affinity"
    with pytest.raises(UserError, match="numactl is not installed"):
        launcher.choose_pinning("numactl", launcher.Slot((0,), (0,)))


def test_launcher_forks_without_threads_or_numpy_loaded() -> None:
    # preexec_fn runs between fork and exec: the launcher must not hold threads (OpenBLAS...).
    code = ("import sys, threading; from dlrm_bench.cli import build_parser; build_parser(); "
            "import dlrm_bench.launcher; print('numpy' in sys.modules, threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "1"]


# -- supervision with a stand-in for `dlrm-bench run` (no torch: fast) ----------------------------

FAKE_RUN = textwrap.dedent("""
    import json, os, subprocess, sys, time
    from pathlib import Path
    a = sys.argv
    out, k, barrier = Path(a[a.index("--output") + 1]), a[a.index("--instance-id") + 1], \\
        Path(a[a.index("--barrier-dir") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.log").write_text("STEPS: 1\\n")
    if os.environ.get("FAKE_GRANDCHILD"):
        child = subprocess.Popen(["sleep", "1000"])
        (out / "grandchild.pid").write_text(str(child.pid))
    if os.environ.get("FAKE_IGNORE_TERM"):
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("preparing", flush=True)
    if os.environ.get("FAKE_EXIT"):
        print("fake failure before ready", flush=True)
        sys.exit(int(os.environ["FAKE_EXIT"]))
    (barrier / f"ready.{k}").write_text(str(os.getpid()))
    while not (barrier / "go").exists():
        time.sleep(0.01)
    start = time.time()
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0.2")))
    (out / "run.log").write_text("STEPS: 1\\nThroughput: 10.000 fps\\n")
    (out / "result.json").write_text(json.dumps({"status": "ok", "config": {
        "function": "inference", "mode": "throughput", "precision": "avx_fp32"},
        "metrics": {"throughput_samples_per_s": 10.0, "latencies_ms": [1.0]},
        "timing": {"timed_start_unix": start, "timed_end_unix": time.time()}}))
""")


class Quiet(Progress):
    def __init__(self) -> None:
        self.events: list[str] = []

    def event(self, message: str) -> None:
        self.events.append(message)


def fake_plan(tmp_path: Path, n: int = 2, env: list[dict[str, str]] | None = None
              ) -> launcher.LaunchPlan:
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    allowed = sorted(os.sched_getaffinity(0))
    topo = build_topology([LogicalCpu(c, 0, 0, (c,)) for c in allowed], allowed, "test")
    slots = [launcher.Slot((allowed[k % len(allowed)],), (0,)) for k in range(n)]
    plan = build_plan([], tmp_path / "run", topo, slots, function="inference",
                      mode="throughput", weight_sharing=False, pinning=Pinning("affinity"),
                      allocator=Allocator("none"))
    for k, ip in enumerate(plan.instances):
        i = ip.command.index("-m")
        ip.command[i:i + 3] = [str(script)]
        ip.env.update((env or [{}] * n)[k])
    return plan


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_barrier_success_and_grandchildren_are_reaped(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path, env=[{"FAKE_GRANDCHILD": "1"}, {"FAKE_SLEEP": "0.5"}])
    code, result = launcher.execute(plan, Quiet())
    assert code == 0 and result["status"] == "ok"
    assert [i["exit_code"] for i in result["instances"]] == [0, 0]
    assert result["metrics"]["throughput_samples_per_s"] == pytest.approx(20.0)
    grandchild = int((plan.run_dir / "instance-0" / "grandchild.pid").read_text())
    assert not alive(grandchild)
    saved = json.loads((plan.run_dir / "host_result.json").read_text())
    assert saved["status"] == "ok" and saved["pinning"]["method"] == "affinity"
    assert (plan.run_dir / "combined.log").read_text().count("Throughput: 10.000 fps") == 2
    assert not plan.barrier_dir.exists()


@pytest.mark.parametrize("ignore_term", [False, True], ids=["SIGTERM", "SIGKILL-after-grace"])
def test_death_before_the_barrier_stops_the_others(tmp_path: Path, ignore_term: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from dlrm_bench import supervisor

    monkeypatch.setattr(supervisor, "STOP_GRACE_S", 0.5)
    waiting = {"FAKE_IGNORE_TERM": "1"} if ignore_term else {}
    plan = fake_plan(tmp_path, env=[waiting, {"FAKE_EXIT": "3"}])
    progress = Quiet()
    code, result = launcher.execute(plan, progress)
    assert code == 1 and result["status"] == "failed"
    first, second = result["instances"]
    assert second["exit_code"] == 3 and second["state"] == "failed"
    assert "fake failure before ready" in "\n".join(second["log_tail"])
    stopped_by = signal.SIGKILL if ignore_term else signal.SIGTERM
    assert first["state"] == "stopped" and first["exit_code"] == -stopped_by
    assert not alive(first["pid"]) and not alive(second["pid"])
    assert any("exit status 3" in e and "fake failure before ready" in e
               for e in progress.events)
    assert not (plan.run_dir / ".barrier").exists()


def test_parent_death_signal_kills_orphans(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from dlrm_bench.supervisor import _child_setup
        p = subprocess.Popen(["sleep", "1000"], preexec_fn=_child_setup(os.getpid(), None),
                             start_new_session=True)
        print(p.pid, flush=True)
        time.sleep(1000)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
    assert callable(_child_setup(os.getpid(), None))


# -- real `dlrm-bench run` instances --------------------------------------------------------------

TWO_CPUS = topology.detect().physical_cpus[:2]
needs_two = pytest.mark.skipif(len(TWO_CPUS) < 2, reason="needs two allowed physical cores")
TINY = ["--preset", "tiny", "--data-type", "synthetic", "--warmup-steps", "5"]


def start_launch(run_dir: Path, *args: str) -> subprocess.Popen[str]:
    """The launcher confined to two physical cores, as on a 2-core host."""
    return subprocess.Popen(
        [sys.executable, "-m", "dlrm_bench", "launch", "--output", str(run_dir), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, TWO_CPUS))


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.02)


def pids(run_dir: Path, n: int = 2) -> list[int]:
    return [int((run_dir / f"instance-{k}" / "pid").read_text()) for k in range(n)]


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(name)


def kpi_sh_throughput(log: str) -> float:
    """The seed's kpi.sh: fields split on ', ', ': ', '; '; /^Throughput/{total += $2}."""
    total = 0.0
    for line in log.splitlines():
        if line.startswith("Throughput"):
            field = re.split(r", |: |; ", line)[1]
            total += float(re.match(r"[-+0-9.eE]+", field).group(0))  # type: ignore[union-attr]
    return total


@pytest.mark.slow
@needs_two
def test_two_pinned_instances_run_together_and_kpi_sums_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start_launch(run, "--instances", "2", "--cores-per-instance", "1", *TINY,
                        "--steps", "2000")
    wait_for(run / ".barrier" / "ready.1", proc)
    wait_for(run / ".barrier" / "ready.0", proc)
    allowed = [status_field(pid, "Cpus_allowed_list") for pid in pids(run)]
    maps = Path(f"/proc/{pids(run)[0]}/maps").read_text()
    numa_maps = Path(f"/proc/{pids(run)[1]}/numa_maps").read_text()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert sorted(allowed) == sorted(str(c) for c in TWO_CPUS)  # one distinct core each
    host = json.loads((run / "host_result.json").read_text())
    assert [i["cpulist"] for i in host["instances"]] == allowed
    assert host["status"] == "ok" and host["layout"]["instances"] == 2
    if host["allocator"]["name"] == "jemalloc":
        assert "libjemalloc" in maps
    if host["pinning"]["method"] == "numactl":  # memory bound to the instance's node
        assert f"bind:{host['instances'][1]['nodelist']}" in numa_maps
    windows = [(i["timing"]["timed_start_unix"], i["timing"]["timed_end_unix"])
               for i in host["instances"]]
    assert max(s for s, _ in windows) < min(e for _, e in windows), windows  # overlap
    results = [json.loads((run / f"instance-{k}" / "result.json").read_text()) for k in (0, 1)]
    total = sum(r["metrics"]["throughput_samples_per_s"] for r in results)
    kpi_line = re.search(r"\*Throughput \(samples/sec\): ([0-9.]+)", out)
    assert kpi_line and float(kpi_line.group(1)) == pytest.approx(total, abs=1e-3)
    awk_total = kpi_sh_throughput((run / "combined.log").read_text())
    assert abs(awk_total - float(kpi_line.group(1))) <= 2e-3
    kpi = subprocess.run([sys.executable, "-m", "dlrm_bench", "kpi", str(run)],
                         capture_output=True, text=True, check=True)
    assert kpi_line.group(0) in kpi.stdout


@pytest.mark.slow
@needs_two
def test_latency_mode_one_core_per_instance(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start_launch(run, "--mode", "latency", "--cores-per-instance", "1", *TINY,
                        "--steps", "300")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    host = json.loads((run / "host_result.json").read_text())
    assert host["layout"]["instances"] == 2 and host["layout"]["mode"] == "latency"
    assert host["metrics"]["latency_count"] == 600 and host["metrics"]["latency_source"] == "merged"
    assert "*Latency (ms): " in out and "Latency p99 (ms): " in out


@pytest.mark.slow
@needs_two
def test_sigkill_of_one_instance_keeps_the_other(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start_launch(run, "--instances", "2", "--cores-per-instance", "1", *TINY,
                        "--steps", "3000")
    wait_for(run / ".barrier" / "go", proc)
    victim, survivor = pids(run)[1], pids(run)[0]
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "instance 1" in err and "killed by SIGKILL" in err
    host = json.loads((run / "host_result.json").read_text())
    assert host["status"] == "failed"
    assert [i["exit_code"] for i in host["instances"]] == [0, -signal.SIGKILL]
    assert host["instances"][0]["metrics"]["throughput_samples_per_s"] > 0
    assert not alive(victim) and not alive(survivor)
    from dlrm_bench import kpi

    cluster = kpi.rollup([run])
    assert cluster.metrics["throughput_samples_per_s"] == pytest.approx(
        host["instances"][0]["metrics"]["throughput_samples_per_s"])


@pytest.mark.slow
@needs_two
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_launcher_signal_leaves_no_instance(tmp_path: Path, sig: signal.Signals) -> None:
    run = tmp_path / "run"
    proc = start_launch(run, "--instances", "2", "--cores-per-instance", "1", *TINY,
                        "--steps", "1000000")
    wait_for(run / ".barrier" / "go", proc)
    instances = pids(run)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in instances) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in instances)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        host = json.loads((run / "host_result.json").read_text())
        assert host["status"] == "failed" and "SIGINT" in host["failures"][0]


def weights_pss_kb(pid: int) -> tuple[int, int, int]:
    """(whole-process Pss, Rss and Pss of the shared weights mapping) in kB."""
    total = int(re.search(r"^Pss:\s+(\d+)", Path(f"/proc/{pid}/smaps_rollup").read_text(),
                          re.M).group(1))  # type: ignore[union-attr]
    rss = pss = 0
    current = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+$", parts[0]):
            current = parts[5] if len(parts) > 5 else ""
        elif "prepared-" in current and parts[0] == "Rss:":
            rss += int(parts[1])
        elif "prepared-" in current and parts[0] == "Pss:":
            pss += int(parts[1])
    return total, rss, pss


def measured_run(run: Path, *flags: str) -> list[tuple[int, int, int]]:
    # normal memory: what is measured is the mapped prepared file (on a host with a hugetlbfs
    # mounted, table_memory=auto would copy the tables out of it)
    proc = start_launch(run, "--instances", "2", "--cores-per-instance", "1", *flags, *TINY,
                        "--batch-size", "512", "--warmup-steps", "20", "--steps", "60",
                        "--table-memory", "normal")
    wait_for(run / ".barrier" / "go", proc)
    time.sleep(0.3)
    sizes = [weights_pss_kb(pid) for pid in pids(run)]
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return sizes


@pytest.mark.slow
@needs_two
def test_weight_sharing_holds_one_copy_of_the_tables(tmp_path: Path) -> None:
    shared = measured_run(tmp_path / "shared")
    (weights,) = (tmp_path / "shared" / "weights-node0").glob("prepared-*.pt")
    size_kb = weights.stat().st_size / 1024
    # Both instances map the whole prepared file, and pay for it once between them.
    assert all(rss > 0.8 * size_kb for _, rss, _ in shared), (shared, size_kb)
    assert 0.8 * size_kb < sum(pss for *_, pss in shared) < 1.2 * size_kb
    private = measured_run(tmp_path / "private", "--no-weight-sharing")
    assert all(rss == 0 for _, rss, _ in private)
    saved_kb = sum(t for t, *_ in private) - sum(t for t, *_ in shared)
    assert saved_kb > 0.6 * size_kb, (saved_kb, size_kb)  # a whole table copy saved


@pytest.mark.slow
@needs_two
def test_lapsed_lease_stops_the_instances(tmp_path: Path) -> None:
    """--lease: the controller renews the file while it waits; once it stops (Ctrl-C of
    ansible-playbook), the launch stops its instances and says why (exit 3)."""
    import threading

    run, lease = tmp_path / "run", tmp_path / "lease"
    renewing = threading.Event()
    renewing.set()

    def renew() -> None:
        while renewing.is_set():
            lease.touch()
            time.sleep(0.5)

    threading.Thread(target=renew, daemon=True).start()
    proc = start_launch(run, "--instances", "2", "--cores-per-instance", "1", *TINY,
                        "--steps", "1000000", "--lease", str(lease), "--lease-timeout", "4")
    wait_for(run / ".barrier" / "go", proc)
    instances = pids(run)
    time.sleep(6)  # renewed: the run goes on past the timeout
    assert proc.poll() is None and all(alive(p) for p in instances)
    renewing.clear()
    _, err = proc.communicate(timeout=60)   # renewals stop: stopped within ~4 s + grace
    assert proc.returncode == launcher.LEASE_LAPSED_EXIT, err[-2000:]
    assert not any(alive(p) for p in instances)
    host = json.loads((run / "host_result.json").read_text())
    assert host["status"] == "failed"
    assert host["failures"][0].startswith(f"controller lost: lease {lease} not renewed for")


def test_lease_restore_puts_back_only_sysfs_settings(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from dlrm_bench import tuning

    sysfs = tmp_path / "sys"
    knob = sysfs / "kernel" / "mm" / "transparent_hugepage" / "enabled"
    knob.parent.mkdir(parents=True)
    knob.write_text("always [madvise] never\n")
    monkeypatch.setattr(tuning, "SYSFS", sysfs)
    # the host's own hugetlbfs mounts (a tuned host has one) are not this test's to clean
    monkeypatch.setattr(tuning, "remove_stale_tables", lambda: [])
    state = tmp_path / "tune.json"
    state.write_text(json.dumps({"settings": {str(knob): {"setting": "thp", "value": "never"}}}))
    assert tuning.restore_saved_settings(state) == [f"thp: {knob} = never"]
    assert knob.read_text() == "never" and not state.exists()
    assert tuning.restore_saved_settings(state) == [f"nothing to restore: no {state}"]
    state.write_text(json.dumps({"settings": {"/etc/passwd": {"setting": "x", "value": "y"}}}))
    assert tuning.restore_saved_settings(state) == ["skipped /etc/passwd: not a sysfs setting"]
    assert state.exists(), "a state file that was not fully restored is kept"


@pytest.mark.slow
@needs_two
def test_launcher_stopped_with_its_output_gone_still_records_the_stop(tmp_path: Path) -> None:
    """Under Ansible the launcher's output goes through ``| tee launch.log`` into the async
    job's pipe; a stop kills the job's shell and its reader goes: the launcher's next line then
    hits a closed pipe. It must still stop its instances and write its final host result."""
    run = tmp_path / "run"
    proc = start_launch(run, "--instances", "2", "--cores-per-instance", "1", *TINY,
                        "--steps", "1000000")
    wait_for(run / ".barrier" / "go", proc)
    instances = pids(run)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while any(alive(p) for p in instances) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in instances)
    host = json.loads((run / "host_result.json").read_text())
    assert host["status"] == "failed" and "SIGTERM" in host["failures"][0], host
    assert (run / "combined.log").is_file()
