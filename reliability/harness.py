"""Helpers shared by the reliability tools: the daemon's memory use and the verdict on its log."""

from __future__ import annotations

from pathlib import Path
from typing import Final

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
    problems = [
        f"{event.get('event')}: {event.get('error') or event.get('message') or event}"
        for event in daemon.log_events()
        if event.get("level") in ERROR_LEVELS
    ]
    stderr = daemon.stderr_path.read_text(errors="replace")
    if "Traceback" in stderr:
        problems.append(f"traceback on stderr: {stderr[-2000:]}")
    return problems
