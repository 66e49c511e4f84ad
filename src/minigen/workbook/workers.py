"""Worker processes that do not outlive the run that started them.

``reproduce`` executes chapters on spawned ``ProcessPoolExecutor`` workers, each driving a
papermill kernel. When the parent is killed (``kill PID``, a job's time limit), nothing tells
the workers: each goes on with its notebook, and after a dead kernel even starts it again, so
the orphans hold the cores for minutes and spoil the timings of the next run. The kernels
already exit when their worker does (jupyter_client sets ``JPY_PARENT_PID`` and ipykernel polls
it); ``exit_with_parent``, the pool's initializer, closes the gap above them.
"""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(poll_s: float = 1.0) -> None:
    """Start a daemon thread that ends this process (``os._exit(1)``, no cleanup: the work is
    abandoned anyway) as soon as its parent is gone, i.e. ``os.getppid()`` changes (the orphan is
    re-parented to init or a subreaper)."""
    if not poll_s > 0:
        raise ValueError(f"poll_s must be > 0, got {poll_s!r}")
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
