"""Exec a command with a listening socket passed the way systemd passes it.

Usage: ``python socket_activate.py FD COMMAND...``. The socket at descriptor FD
becomes descriptor 3, and LISTEN_FDS=1 and LISTEN_PID (this process's id, which
exec keeps) are set, as sd_listen_fds(3) expects. systemd-socket-activate does the
same, but it is not installed everywhere the tests run.
"""

from __future__ import annotations

import os
import sys

# The first descriptor systemd passes, SD_LISTEN_FDS_START in sd-daemon.h.
LISTEN_FDS_START = 3


def main() -> None:
    fd = int(sys.argv[1])
    if fd != LISTEN_FDS_START:
        os.dup2(fd, LISTEN_FDS_START)
        os.close(fd)
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDNAMES"] = "lobbyd.socket"
    os.execv(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
