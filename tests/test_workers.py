"""``reproduce``'s pool workers end when the run that started them is killed (they used to go
on with their notebooks, holding the cores)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minigen.workbook.workers import exit_with_parent

SRC = Path(__file__).resolve().parents[1] / "src"

PARENT = '''
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from minigen.workbook.workers import exit_with_parent

if __name__ == "__main__":
    init = exit_with_parent if {watch} else None
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init, initargs=(0.2,) if {watch} else ())
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 60)
    time.sleep(60)
'''


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("watch", [True, False])
def test_a_worker_ends_when_its_parent_is_killed(tmp_path, watch):
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(watch=watch))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=env)
    worker = int(parent.stdout.readline())
    try:
        assert alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        # with the watcher the orphan is gone within a poll or two; without it (the control)
        # it is still sleeping in its task
        assert alive(worker) is (not watch)
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_exit_with_parent_refuses_a_bad_poll_period():
    with pytest.raises(ValueError, match="poll_s"):
        exit_with_parent(0)
