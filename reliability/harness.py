"""Helpers shared by the reliability tools: the daemon's memory use and the verdict on its log."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import msgspec

from reliability.probe import ProbeReport
from tests.daemon import DaemonProcess

# Log levels that mean the daemon caught a bug of its own.
ERROR_LEVELS: Final = ("error", "critical", "exception")


def rss_kib(pid: int) -> int:
    """Return the resident set size of process ``pid`` in KiB, from /proc (Linux only)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    msg = f"/proc/{pid}/status has no VmRSS line"
    raise RuntimeError(msg)


def log_problems(daemon: DaemonProcess) -> list[str]:
    """Return the daemon's error-level events and any traceback it wrote to stderr."""
    markers = [f'"level": "{level}"' for level in ERROR_LEVELS]
    problems = []
    with daemon.log_path.open(errors="replace") as log:
        for line in log:
            if any(marker in line for marker in markers):
                problems.append(line.strip()[:2000])
    stderr = daemon.stderr_path.read_text(errors="replace")
    if "Traceback" in stderr:
        problems.append(f"traceback on stderr: {stderr[-2000:]}")
    return problems


def probe_failures(probe: ProbeReport, max_p99_ms: float) -> list[str]:
    """Return why the probe's figures fail the run: a lost ping or a p99 over ``max_p99_ms``."""
    failures = []
    if probe.lost:
        failures.append(f"the probe lost {probe.lost} of {probe.pings} pings")
    p99 = probe.latency_ms.p99
    if p99 is None or p99 > max_p99_ms:
        failures.append(f"probe p99 latency {p99} ms exceeds {max_p99_ms:g} ms")
    return failures


def print_report(report: msgspec.Struct, ok: bool, json_path: Path | None) -> int:
    """Print ``report`` as indented JSON, also write it to ``json_path``; return the exit status."""
    text = msgspec.json.format(msgspec.json.encode(report))
    print(text.decode())
    if json_path is not None:
        json_path.write_bytes(text + b"\n")
    return 0 if ok else 1
