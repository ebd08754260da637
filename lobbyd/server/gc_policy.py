"""Keep full garbage collections from pausing the event loop.

A full collection walks every tracked object; with tens of thousands of sessions it
stalls the loop for tens of milliseconds. The daemon's long-lived objects (sessions,
their streams and tasks) are freed by reference counting alone once a connection
closes: a test keeps that true. So the daemon periodically moves what survives out of
the collector's view with ``gc.freeze()``, and full collections only walk what was
created since.
"""

from __future__ import annotations

import gc


def freeze_survivors() -> int:
    """Collect the young generations, then freeze every surviving object; return how many are frozen."""
    gc.collect(1)
    gc.freeze()
    return gc.get_freeze_count()
