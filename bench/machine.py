"""Describe the machine and software a run measured, and the load that other processes put on it."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.processes import ROOT


def describe() -> dict[str, Any]:
    """Return CPU, memory, kernel, library versions and the git commit."""
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("lobbyd", "uvloop", "msgspec", "structlog")},
        "open_files_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


@dataclass
class CpuUsage:
    """A reading of machine-wide busy CPU time and of the CPU time of this run's processes."""

    at: float
    machine_busy_s: float
    machine_steal_s: float
    ours_s: float

    @classmethod
    def read(cls) -> CpuUsage:
        # /proc/stat "cpu" line: user nice system idle iowait irq softirq steal ..., in clock ticks.
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        ticks = os.sysconf("SC_CLK_TCK")
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        ours = children.ru_utime + children.ru_stime + me.ru_utime + me.ru_stime
        busy = (user + nice + system + irq + softirq) / ticks
        return cls(time.monotonic(), busy, steal / ticks, ours)

    def since(self, start: CpuUsage) -> dict[str, float]:
        """Return the CPUs' worth of work that other processes did, and steal, since ``start``.

        Our processes count only once they have exited and been waited for, so take
        the second reading after the phase's processes are stopped.
        """
        elapsed = self.at - start.at
        others = (self.machine_busy_s - start.machine_busy_s) - (self.ours_s - start.ours_s)
        return {
            "seconds": elapsed,
            "other_processes_cpus": max(others, 0.0) / elapsed,
            "steal_cpus": (self.machine_steal_s - start.machine_steal_s) / elapsed,
        }
