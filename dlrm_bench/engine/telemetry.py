"""pkm telemetry: per-core utilisation, frequency and memory sampled during the timed region."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any


def _cpu_times() -> dict[str, tuple[int, int]]:
    """``cpuN -> (busy, total)`` jiffies from /proc/stat."""
    times: dict[str, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *fields = line.split()
            values = [int(v) for v in fields]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            total = sum(values[:8])
            times[name] = (total - idle, total)
    return times


def _frequencies_mhz() -> dict[str, float]:
    freqs: dict[str, float] = {}
    for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"):
        try:
            freqs[path.parent.parent.name] = int(path.read_text()) / 1000.0
        except (OSError, ValueError):
            continue
    if freqs:
        return freqs
    index = 0
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            freqs[f"cpu{index}"] = float(line.split(":", 1)[1])
            index += 1
    return freqs


def _memory() -> dict[str, int]:
    fields: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable", "AnonHugePages", "HugePages_Free"):
            fields[key] = int(rest.split()[0])
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            fields["ProcessRSS_kB"] = int(line.split()[1])
    return fields


class TelemetrySampler:
    """Samples every ``interval_s`` on a daemon thread between ``start()`` and ``stop()``."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="telemetry", daemon=True)
        self._cpus = sorted(os.sched_getaffinity(0))

    def start(self) -> None:
        self._previous = _cpu_times()
        self._sample()
        self._thread.start()

    def _sample(self) -> None:
        current = _cpu_times()
        utilisation = {}
        for name, (busy, total) in current.items():
            pbusy, ptotal = self._previous.get(name, (busy, total))
            span = total - ptotal
            utilisation[name] = round(100.0 * (busy - pbusy) / span, 1) if span > 0 else 0.0
        self._previous = current
        self.samples.append({
            "t_unix": time.time(),
            "cpu_utilisation_pct": utilisation,
            "cpu_mhz": _frequencies_mhz(),
            "memory_kB": _memory(),
        })

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sample()
        return {"interval_s": self.interval_s, "pinned_cpus": self._cpus, "samples": self.samples}
