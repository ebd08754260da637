"""Checks that the tools' output paths can be written, made before a run starts.

``lobbyd replay`` and ``lobbyd sim`` write their JSON report, plots and recording
only after the run; a path that cannot be written would then cost the whole run.
These checks catch the usual mistakes (a missing or read-only directory, a file
where a directory belongs or the reverse) up front. They cannot rule out every
failure: the disk can still fill up or the permissions change during the run.
"""

from __future__ import annotations

import os
from pathlib import Path


def problem(*, json: Path | None, plots: Path | None, record: Path | None = None) -> str | None:
    """Return the first problem with the ``--json``, ``--record`` and ``--plots`` paths given, or None."""
    for option, path in (("--json", json), ("--record", record)):
        found = None if path is None else file_problem(option, path)
        if found:
            return found
    return None if plots is None else directory_problem("--plots", plots)


def file_problem(option: str, path: Path) -> str | None:
    """Return why ``path`` cannot be written as an output file, or None when it can."""
    if path.is_dir():
        return f"{option} {path}: is a directory, expected a file"
    if path.exists():
        return None if os.access(path, os.W_OK) else f"{option} {path}: the file is not writable"
    parent = path.absolute().parent
    if not parent.is_dir():
        return f"{option} {path}: the directory {parent} does not exist"
    return _directory_writable(option, path, parent)


def directory_problem(option: str, path: Path) -> str | None:
    """Return why files cannot be written into the directory ``path``, or None when they can.

    A missing directory is fine when its nearest existing ancestor is a writable
    directory, since the tools create it with its parents.
    """
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{option} {path}: {existing} is a file, expected a directory"
    return _directory_writable(option, path, existing)


def _directory_writable(option: str, path: Path, directory: Path) -> str | None:
    # Creating an entry needs write and search permission on the directory.
    if os.access(directory, os.W_OK | os.X_OK):
        return None
    return f"{option} {path}: the directory {directory} is not writable"
