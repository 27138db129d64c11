"""Test-case suites: pick the seed's cases, plan them per host, judge them, summarise like ctest.

Pure Python (no torch). A suite is a named list of test cases (``SUITES``) or an explicit list
(``<function>_<mode>_<precision>[_gated|_pkm]`` or the seed's full names). Each host plans the suite
with its own CPU flags and cores (``plan``): a case its ISA or its cores cannot run is marked
"not supported" with the reason (``cpu.check_supported``, the launcher's layout rules) and is not
run there. After the run the verdicts come from the collected results (``evaluate``): a case passes
when every host that supports it completed it and produced its KPI and, for an accuracy case whose
model was trained (training, or inference from a checkpoint), when its AUC is at least the
threshold. ``SuiteVerdict.summary_lines()`` prints them the way ``ctest`` does.

Results layout (controller): ``<run_dir>/<case>/<host>/`` holds one host's run of one case (a
normal ``dlrm-bench launch`` directory); ``<run_dir>/<host>/suite-plan.json`` is the host's plan.
``<run_dir>/<host>/<case>/`` (as collected, before ``suite_report.arrange``) is read too.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dlrm_bench import cpu, kpi
from dlrm_bench.config import PRECISIONS, all_cases, case_name, parse_case
from dlrm_bench.errors import UserError

PLAN_FILE = "suite-plan.json"
MLPERF_AUC_TARGET = 0.8025   # the real dataset with the tb00_40M.pt checkpoint
SYNTHETIC_AUC_THRESHOLD = 0.60   # synthetic data: a model trained a few steps clears it
FAILED_EXIT = 8   # what ctest returns when tests failed

SUITES: dict[str, tuple[str, Callable[[], list[str]]]] = {
    "gated": ("every gated case: the quick validation of every function, mode and precision",
              lambda: [c for c in all_cases() if c.endswith("_gated")]),
    "all": ("every test case the seed defines", all_cases),
    "precisions": ("inference throughput at each precision (a precision sweep)",
                   lambda: [case_name("inference", "throughput", p) for p in PRECISIONS]),
    "pkm": ("every pkm case (performance analysis, with telemetry)",
            lambda: [c for c in all_cases() if c.endswith("_pkm")]),
    "training": ("every training case", lambda: [c for c in all_cases()
                                                 if c.startswith("training_")]),
}

# Parameters a case override may set (group_vars names), with their accepted types.
OVERRIDE_KEYS: dict[str, tuple[type, ...]] = {
    "batch_size": (int,), "warmup_steps": (int,), "steps": (int,),
    "cores_per_instance": (int,), "instance_number": (int,), "weight_sharing": (bool, str),
    "onednn_verbose": (int,), "preset": (str,), "checkpoint": (str,),
    "data_type": (str,), "data_dir": (str,), "extra_args": (list,),
}


def split_cases(value: str | Sequence[str] | None) -> list[str]:
    """``"a,b c"`` or ``["a", "b"]`` -> ``["a", "b", "c"]``."""
    if value is None:
        return []
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


def select_cases(suite: str | None = None, cases: str | Sequence[str] | None = None) -> list[str]:
    """The suite's cases, then the listed ones (short names, seed order kept, no duplicates)."""
    names: list[str] = []
    if suite:
        if suite not in SUITES:
            raise UserError(f"unknown suite {suite!r}: choose one of {', '.join(SUITES)} "
                            "(see `dlrm-bench suite list`)")
        names.extend(SUITES[suite][1]())
    for raw in split_cases(cases):
        fields = parse_case(raw)
        names.append(case_name(**fields))
    if not names:
        raise UserError("no test cases: give a suite or a list of cases")
    return list(dict.fromkeys(names))


def check_overrides(overrides: Mapping[str, Any] | None) -> dict[str, dict]:
    """Validate ``case_overrides``: keys are case names or globs matching at least one of the
    seed's cases (a typo fails; a pattern for cases outside this suite is fine), values are
    dicts of ``OVERRIDE_KEYS``."""
    checked: dict[str, dict] = {}
    for pattern, values in (overrides or {}).items():
        if not isinstance(values, Mapping):
            raise UserError(f"case override {pattern!r} must map parameters to values")
        key = str(pattern).removeprefix("test_dlrm_pytorch_xeon_public_")
        if not fnmatch.filter(all_cases(), key):
            raise UserError(f"case override {pattern!r} matches no test case "
                            "(see `dlrm-bench cases`)")
        for name, value in values.items():
            if name not in OVERRIDE_KEYS:
                raise UserError(f"case override {pattern!r}: {name!r} cannot be overridden "
                                f"(one of {', '.join(OVERRIDE_KEYS)})")
            if value is not None and not isinstance(value, OVERRIDE_KEYS[name]):
                raise UserError(f"case override {pattern!r}: {name} has the wrong type "
                                f"({type(value).__name__})")
        checked[key] = dict(values)
    return checked


def case_overrides(name: str, overrides: Mapping[str, dict]) -> dict[str, Any]:
    """The overrides for one case: glob patterns in their order, then its exact name."""
    merged: dict[str, Any] = {}
    for pattern, values in overrides.items():
        if pattern != name and fnmatch.fnmatchcase(name, pattern):
            merged.update(values)
    merged.update(overrides.get(name, {}))
    return merged


def default_auc_threshold(data_type: str = "synthetic", data_source: str = "synthetic",
                          checkpoint: str = "") -> float:
    """MLPerf's 0.8025 for the real dataset with a checkpoint, else the synthetic-data bar."""
    real = data_type == "real" and data_source in ("copy", "path", "raw")
    return MLPERF_AUC_TARGET if real and checkpoint else SYNTHETIC_AUC_THRESHOLD


def auc_checked(function: str, mode: str, params: Mapping[str, Any]) -> bool:
    """Whether an AUC says something: the model was trained here, or loaded from a checkpoint
    (an inference accuracy case on a randomly initialised model scores ~0.5 by construction)."""
    return mode == "accuracy" and (function == "training" or bool(params.get("checkpoint")))


LayoutCheck = Callable[[str, str, int | None, int | None], None]


def support_reason(function: str, mode: str, precision: str, params: Mapping[str, Any],
                   flags: frozenset[str] | None, layout: LayoutCheck | None = None) -> str | None:
    """Why this host cannot run the case (``None`` when it can)."""
    try:
        cpu.check_supported(precision, function, flags)
        if layout is not None:
            layout(function, mode, params.get("cores_per_instance"),
                   params.get("instance_number"))
    except UserError as exc:
        return str(exc)
    return None


@dataclass
class PlannedCase:
    number: int
    name: str
    function: str
    mode: str
    precision: str
    case_type: str
    params: dict[str, Any]   # parameters this case sets (the case's fields + overrides)
    supported: bool = True
    reason: str | None = None
    auc_required: bool = False   # an accuracy case whose AUC is held to the threshold


def plan(names: Sequence[str], overrides: Mapping[str, dict] | None = None,
         base: Mapping[str, Any] | None = None, flags: frozenset[str] | None = None,
         layout: LayoutCheck | None = None) -> list[PlannedCase]:
    """Number the cases like ``ctest -N`` and decide, for one host, which it can run.

    ``base``: the run's parameters (group_vars), under the case's own and its overrides;
    ``flags``: the host's CPU flags (``None``: this machine's, ``DLRM_BENCH_CPU_FLAGS`` honoured);
    ``layout``: checks the instance layout on the host (the launcher's ``plan_layout``)."""
    checked = check_overrides(overrides)
    planned = []
    for number, name in enumerate(names, start=1):
        fields = parse_case(name)
        params = {**fields, **case_overrides(name, checked)}
        effective = {**(base or {}), **params}
        reason = support_reason(fields["function"], fields["mode"], fields["precision"],
                                effective, flags, layout)
        planned.append(PlannedCase(
            number, name, fields["function"], fields["mode"], fields["precision"],
            fields["case_type"], params, reason is None, reason,
            auc_checked(fields["function"], fields["mode"], effective)))
    return planned


# ------------------------------------------------------------------------------- verdicts
@dataclass
class HostVerdict:
    host: str
    status: str   # "passed" | "failed" | "not supported"
    reason: str = ""
    key_kpi: dict[str, Any] | None = None
    auc: float | None = None
    seconds: float | None = None
    path: str | None = None


@dataclass
class CaseVerdict:
    number: int
    name: str
    function: str
    mode: str
    precision: str
    case_type: str
    status: str   # "Passed" | "Failed" | "Not Run"
    hosts: list[HostVerdict]
    key_kpi: dict[str, Any] | None = None
    seconds: float = 0.0
    auc_required: bool = False

    @property
    def notes(self) -> list[str]:
        out = []
        for h in self.hosts:
            if h.status == "failed":
                out.append(f"{h.host}: {h.reason}")
            elif h.status == "not supported":
                out.append(f"not supported on {h.host}: {h.reason}")
        return out


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_plans(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every host's plan (``<run_dir>/<host>/suite-plan.json``), by host directory name."""
    return {p.parent.name: _load_json(p) for p in sorted(run_dir.glob(f"*/{PLAN_FILE}"))}


def case_dir(run_dir: Path, case: str, host: str) -> Path | None:
    for path in (run_dir / case / host, run_dir / host / case):
        if path.is_dir():
            return path
    return None


def _seconds(path: Path) -> float | None:
    result = _load_json(path / kpi.HOST_RESULT)
    try:
        start = dt.datetime.fromisoformat(result["started"])
        end = dt.datetime.fromisoformat(result["finished"])
    except (KeyError, TypeError, ValueError):
        return None
    return max(0.0, (end - start).total_seconds())


def launch_error(path: Path) -> str:
    """The most telling line of a failed launch: its last error line, else its last line."""
    try:
        lines = [ln.strip() for ln in (path / "launch.log").read_text(errors="replace")
                 .splitlines() if ln.strip()]
    except OSError:
        lines = []
    errors = [ln for ln in lines if "error:" in ln]
    failures = _load_json(path / kpi.HOST_RESULT).get("failures") or []
    return (errors or [str(f) for f in failures] or lines or ["failed"])[-1]


def judge_host(case: Mapping[str, Any], host: str, path: Path | None,
               threshold: float) -> HostVerdict:
    """One host's run of one case: passed, or failed with the reason."""
    if path is None:
        return HostVerdict(host, "failed", "no results (the case did not run on this host)")
    seconds = _seconds(path)
    try:
        result = kpi.load_host(path)
    except UserError:
        return HostVerdict(host, "failed", launch_error(path), seconds=seconds, path=str(path))
    label, value, unit = kpi.key_kpi(case["mode"], result.metrics)
    verdict = HostVerdict(host, "passed", key_kpi={"metric": label, "value": value, "unit": unit},
                          auc=result.metrics.get("auc"), seconds=seconds, path=str(path))
    if result.status != "ok":
        verdict.status, verdict.reason = "failed", launch_error(path)
    elif value is None:
        verdict.status, verdict.reason = "failed", f"no {label} KPI in the results"
    elif case.get("auc_required") and (verdict.auc is None or verdict.auc < threshold):
        shown = "none" if verdict.auc is None else f"{verdict.auc:.4f}"
        verdict.status, verdict.reason = "failed", f"AUC {shown} < {threshold:.4f}"
    return verdict


@dataclass
class SuiteVerdict:
    run_dir: str
    suite: str
    hosts: list[str]
    auc_threshold: float
    cases: list[CaseVerdict] = field(default_factory=list)

    def with_status(self, status: str) -> list[CaseVerdict]:
        return [c for c in self.cases if c.status == status]

    @property
    def exit_code(self) -> int:
        return FAILED_EXIT if self.with_status("Failed") else 0

    def summary_lines(self) -> list[str]:
        """ctest's test lines, its percentage line and its lists of failed / not-run tests."""
        total = len(self.cases)
        width = max((len(c.name) for c in self.cases), default=10) + 4
        digits = len(str(total))
        label = f"suite {self.suite}" if self.suite else "listed cases"
        lines = [f"Test project {self.run_dir} ({label}, {len(self.hosts)} host(s): "
                 f"{', '.join(self.hosts)})"]
        for c in self.cases:
            status = {"Passed": "   Passed", "Failed": "***Failed", "Not Run": "***Not Run"}[
                c.status]
            dots = " " + "." * max(3, width - len(c.name)) + status
            line = (f"{c.number:>{digits}}/{total} Test {'#' + str(c.number):>{digits + 1}}: "
                    f"{c.name}{dots}"
                    f" {c.seconds:8.2f} sec")
            if c.key_kpi and c.key_kpi.get("value") is not None and c.status == "Passed":
                k = c.key_kpi
                line += f"  *{k['metric']} ({k['unit']}): {k['value']:.3f}"
            lines.append(line)
            lines.extend(f"{' ' * (digits * 2 + 2)}{note}" for note in c.notes)
        failed, not_run = self.with_status("Failed"), self.with_status("Not Run")
        percent = round(100 * (total - len(failed)) / total) if total else 100
        if failed and percent > 99:
            percent = 99
        lines += ["", f"{percent}% tests passed, {len(failed)} tests failed out of {total}", "",
                  f"Total Test time (real) = {sum(c.seconds for c in self.cases):8.2f} sec"]
        if not_run:
            lines += ["", "The following tests did not run:"]
            lines += [f"\t{c.number:>3} - {c.name} (Not Supported)" for c in not_run]
        if failed:
            lines += ["", "The following tests FAILED:"]
            lines += [f"\t{c.number:>3} - {c.name} (Failed)" for c in failed]
        return lines

    def summary(self) -> str:
        return "\n".join(self.summary_lines()) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": 1, "kind": "suite_verdict", "run_dir": self.run_dir,
                "suite": self.suite, "hosts": self.hosts, "auc_threshold": self.auc_threshold,
                "total": len(self.cases), "passed": len(self.with_status("Passed")),
                "failed": [c.name for c in self.with_status("Failed")],
                "not_run": [c.name for c in self.with_status("Not Run")],
                "cases": [asdict(c) for c in self.cases]}


def _case_kpi(case: Mapping[str, Any], verdicts: Sequence[HostVerdict]) -> dict[str, Any] | None:
    paths = [Path(v.path) for v in verdicts if v.status == "passed" and v.path]
    if not paths:
        return None
    try:
        label, value, unit = kpi.rollup(paths).key
    except UserError:
        return None
    return {"metric": label, "value": value, "unit": unit}


def evaluate(run_dir: str | Path, hosts: Sequence[str] = (),
             auc_threshold: float | None = None) -> SuiteVerdict:
    """Judge every case of the suite run in ``run_dir`` on every host.

    ``hosts``: the hosts the suite was meant to run on; one without a plan (it failed before the
    benchmark stage) fails every case. The AUC threshold: the argument, else the plans'."""
    root = Path(run_dir)
    plans = load_plans(root)
    if not plans:
        raise UserError(f"no suite plans in {root} (expected <host>/{PLAN_FILE})")
    everyone = list(dict.fromkeys([*hosts, *plans]))
    cases: dict[str, dict[str, Any]] = {}
    for doc in plans.values():
        for case in doc.get("cases") or []:
            cases.setdefault(case["name"], case)
    threshold = auc_threshold if auc_threshold is not None else next(
        (float(d["auc_threshold"]) for d in plans.values() if d.get("auc_threshold") is not None),
        SYNTHETIC_AUC_THRESHOLD)
    suite = next((str(d.get("suite")) for d in plans.values() if d.get("suite")), "")
    verdict = SuiteVerdict(str(root), suite, everyone, threshold)
    for number, (name, case) in enumerate(cases.items(), start=1):
        per_host: list[HostVerdict] = []
        for host in everyone:
            mine = next((c for c in (plans.get(host) or {}).get("cases") or []
                         if c["name"] == name), None)
            if host not in plans:
                per_host.append(HostVerdict(host, "failed", "no suite plan from this host (it "
                                            "failed or was lost before the benchmark stage)"))
            elif mine is None:
                per_host.append(HostVerdict(host, "failed", "the case is not in its plan"))
            elif not mine.get("supported", True):
                per_host.append(HostVerdict(host, "not supported", str(mine.get("reason"))))
            else:
                per_host.append(judge_host(mine, host, case_dir(root, name, host), threshold))
        ran = [h for h in per_host if h.status != "not supported"]
        status = ("Not Run" if not ran else
                  "Passed" if all(h.status == "passed" for h in ran) else "Failed")
        verdict.cases.append(CaseVerdict(
            number, name, case["function"], case["mode"], case["precision"],
            case.get("case_type", ""), status, per_host, _case_kpi(case, per_host),
            max((h.seconds or 0.0 for h in per_host), default=0.0),
            bool(case.get("auc_required"))))
    return verdict
