"""Run parameters: CLI flags, the seed's environment variables and its defaults, test-case names.

Precedence: an explicit flag, then a ``--case`` name, then the seed's environment variable
(``FUNCTION``, ``MODE``, ``PRECISION``, ...), then the seed's default for that function and mode.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dlrm_bench.errors import UserError

FUNCTIONS = ("inference", "training")
MODES = ("throughput", "latency", "accuracy")
PRECISIONS = ("avx_fp32", "avx_int8", "amx_int8", "amx_bfloat16", "amx_bfloat32")
TRAINING_PRECISIONS = ("avx_fp32", "amx_bfloat16", "amx_bfloat32")
DATA_TYPES = ("real", "synthetic")
CASE_TYPES = ("", "gated", "pkm")
BACKENDS = ("native", "ipex")
TABLE_MEMORY = ("auto", "hugepages", "normal")  # where the native backend keeps the tables
SEED_CASE_PREFIX = "test_dlrm_pytorch_xeon_public_"

# Gated: the quick CI validation of the seed (< 5 minutes): small model, few steps.
GATED_PRESET = "tiny"
GATED_STEPS = 20
GATED_WARMUP = 5
# pkm: the seed traces a 60 s window; we sample telemetry over the whole timed region.
TELEMETRY_INTERVAL_S = 1.0


@dataclass
class RunConfig:
    """Every parameter of one benchmark instance, resolved (no ``None`` left but optional paths)."""

    function: str = "inference"
    mode: str = "throughput"
    precision: str = "avx_fp32"
    data_type: str = "synthetic"
    case_type: str = ""
    batch_size: int = 1
    warmup_steps: int = 200
    steps: int = 200
    steps_given: bool = False
    onednn_verbose: int = 0
    preset: str = "tiny"
    checkpoint: str | None = None
    data_dir: str | None = None
    threads: int = 1
    seed: int = 0
    backend: str = "native"
    calibration_file: str | None = None
    calibration_batches: int = 8
    output: str | None = None
    instance_id: int = 0
    barrier_dir: str | None = None
    barrier_timeout: float = 600.0
    weights_cache: str | None = None
    table_memory: str = "auto"
    save_checkpoint: str | None = None
    learning_rate: float = 1.0
    case: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def test_case(self) -> str:
        return case_name(self.function, self.mode, self.precision, self.case_type)


def case_name(function: str, mode: str, precision: str, case_type: str = "") -> str:
    name = f"{function}_{mode}_{precision}"
    return f"{name}_{case_type}" if case_type else name


def all_cases() -> list[str]:
    """Every test case the seed defines, in its order: function, mode, precision, case type."""
    cases: list[str] = []
    for function in FUNCTIONS:
        modes = ("throughput", "latency", "accuracy") if function == "inference" else (
            "throughput", "accuracy")
        precisions = PRECISIONS if function == "inference" else TRAINING_PRECISIONS
        for mode in modes:
            for precision in precisions:
                types = ("", "gated") if mode == "accuracy" else CASE_TYPES
                cases.extend(case_name(function, mode, precision, t) for t in types)
    return cases


def parse_case(name: str) -> dict[str, str]:
    """``[test_dlrm_pytorch_xeon_public_]<function>_<mode>_<precision>[_gated|_pkm]`` -> fields."""
    raw = name.strip()
    short = raw.removeprefix(SEED_CASE_PREFIX)
    parts = short.split("_")
    if len(parts) not in (4, 5):
        raise UserError(
            f"test case {raw!r} is not <function>_<mode>_<precision>[_gated|_pkm] "
            "(see `dlrm-bench cases`)"
        )
    function, mode, precision = parts[0], parts[1], f"{parts[2]}_{parts[3]}"
    case_type = parts[4] if len(parts) == 5 else ""
    if case_name(function, mode, precision, case_type) not in all_cases():
        raise UserError(f"unknown test case {raw!r} (see `dlrm-bench cases`)")
    return {"function": function, "mode": mode, "precision": precision, "case_type": case_type}


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        shown = ", ".join(repr(c) if c == "" else c for c in choices)
        raise UserError(f"{name} {value!r} is not one of: {shown}")
    return value


def _positive_int(name: str, value: Any, allow_zero: bool = False) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise UserError(f"{name} must be an integer, got {value!r}") from None
    if number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"{name} must be {bound}, got {number}")
    return number


def parse_bool(name: str, value: Any) -> bool:
    """The seed's ``True``/``False`` strings (and the usual spellings) as a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise UserError(f"{name} must be True or False, got {value!r}")


def default_batch_size(function: str, mode: str) -> int:
    if function == "training":
        return 1024
    return 100 if mode == "accuracy" else 1


def default_warmup_steps(function: str, mode: str) -> int:
    if mode == "accuracy":
        return 0
    return 20 if function == "training" else 200


def default_steps(function: str, mode: str) -> int:
    return 2000 if (function, mode) == ("inference", "accuracy") else 200


ENV_NAMES = {
    "function": "FUNCTION",
    "mode": "MODE",
    "precision": "PRECISION",
    "data_type": "DATA_TYPE",
    "case_type": "CASE_TYPE",
    "batch_size": "BATCH_SIZE",
    "warmup_steps": "WARMUP_STEPS",
    "steps": "STEPS",
    "onednn_verbose": "ONEDNN_VERBOSE",
}


def resolve(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> RunConfig:
    """Build a validated ``RunConfig`` from parsed flags (``None`` = not given) and the env."""
    env = os.environ if env is None else env
    given: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    case = given.get("case") or env.get("CASE") or None
    from_case = parse_case(case) if case else {}
    for key, env_name in ENV_NAMES.items():
        if key not in given:
            if key in from_case:
                given[key] = from_case[key]
            elif env.get(env_name, "") != "" or (key == "case_type" and env_name in env):
                given[key] = env[env_name]

    cfg = RunConfig()
    known = {f.name for f in fields(RunConfig)}
    for key, value in given.items():
        if key in known:
            setattr(cfg, key, value)
    cfg.case = case
    cfg.function = _choice("function", str(cfg.function).lower(), FUNCTIONS)
    cfg.mode = _choice("mode", str(cfg.mode).lower(), MODES)
    cfg.precision = _choice("precision", str(cfg.precision).lower(), PRECISIONS)
    cfg.case_type = _choice("case type", str(cfg.case_type).lower(), CASE_TYPES)
    cfg.backend = _choice("backend", str(cfg.backend).lower(), BACKENDS)
    cfg.table_memory = _choice("table memory", str(cfg.table_memory).lower(), TABLE_MEMORY)
    if cfg.table_memory == "hugepages" and (cfg.backend != "native" or cfg.function != "inference"):
        raise UserError("table_memory=hugepages is for native inference (IPEX and training keep "
                        "the tables in process memory)")
    if cfg.backend == "ipex":  # one line now, not after the model is built
        from dlrm_bench.backends.ipex_support import check_backend

        check_backend(cfg.function)
    if cfg.function == "training" and cfg.mode == "latency":
        raise UserError("latency mode is only valid for inference (training: throughput, accuracy)")
    if cfg.function == "training" and cfg.precision not in TRAINING_PRECISIONS:
        raise UserError(
            f"training supports {', '.join(TRAINING_PRECISIONS)}; "
            f"{cfg.precision} training is not supported"
        )

    if "data_type" not in given:
        cfg.data_type = "real" if cfg.data_dir else "synthetic"
    cfg.data_type = _choice("data type", str(cfg.data_type).lower(), DATA_TYPES)
    if cfg.data_type == "real" and not cfg.data_dir:
        raise UserError("data type real needs --data-dir with the terabyte_processed_*.bin files")

    gated = cfg.case_type == "gated"
    if gated and "preset" not in given and not cfg.checkpoint:
        cfg.preset = GATED_PRESET
    cfg.batch_size = _positive_int(
        "batch size", given.get("batch_size", default_batch_size(cfg.function, cfg.mode)))
    cfg.steps_given = "steps" in given
    default = GATED_STEPS if gated else default_steps(cfg.function, cfg.mode)
    cfg.steps = _positive_int("steps", given.get("steps", default))
    warm = GATED_WARMUP if gated else default_warmup_steps(cfg.function, cfg.mode)
    cfg.warmup_steps = _positive_int("warmup steps", given.get("warmup_steps", warm), True)
    cfg.onednn_verbose = _positive_int("onednn verbose", cfg.onednn_verbose, allow_zero=True)
    cfg.threads = _positive_int("threads", given.get("threads", len(os.sched_getaffinity(0))))
    cfg.seed = _positive_int("seed", cfg.seed, allow_zero=True)
    cfg.instance_id = _positive_int("instance id", cfg.instance_id, allow_zero=True)
    cfg.calibration_batches = _positive_int("calibration batches", cfg.calibration_batches)
    if float(cfg.barrier_timeout) <= 0:
        raise UserError(f"barrier timeout must be > 0, got {cfg.barrier_timeout}")
    if cfg.learning_rate is not None and float(cfg.learning_rate) <= 0:
        raise UserError(f"learning rate must be > 0, got {cfg.learning_rate}")
    for name in ("checkpoint", "data_dir", "calibration_file", "output", "barrier_dir",
                 "weights_cache", "save_checkpoint"):
        value = getattr(cfg, name)
        if value is not None:
            setattr(cfg, name, str(Path(value).expanduser()))
    if cfg.checkpoint and not Path(cfg.checkpoint).is_file():
        raise UserError(f"checkpoint {cfg.checkpoint} does not exist")
    if cfg.data_dir and not Path(cfg.data_dir).is_dir():
        raise UserError(f"data dir {cfg.data_dir} does not exist")
    return cfg
