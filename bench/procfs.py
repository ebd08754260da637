"""Readers for the /proc figures the suite reports: CPU time, memory, open files.

Linux only. Each reader takes a process id and reads the current value, so a
caller takes two readings around a measured window and subtracts.
"""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of every thread of ``pid``, in seconds.

    The kernel counts in clock ticks (usually 10 ms), so a window should last
    hundreds of ticks for the figure to be precise to about a percent.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name in brackets may contain spaces, so split after its closing bracket.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS_PER_S


def memory_kb(pid: int) -> dict[str, int]:
    """Return the ``Rss`` and ``Pss`` of ``pid`` in KiB, from ``smaps_rollup``."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            found[key.lower()] = int(rest.split()[0])
    return found


def open_files(pid: int) -> int:
    """Return how many file descriptors ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def listen_overflows() -> int:
    """Return the kernel's count of connections dropped because a listen queue was full.

    The counter (``TcpExtListenOverflows``) covers the whole network namespace, so a
    caller takes the difference over a window in which only its own server listens.
    """
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=True):
        if header.startswith("TcpExt:"):
            table = dict(zip(header.split()[1:], values.split()[1:], strict=True))
            return int(table["ListenOverflows"])
    return 0
