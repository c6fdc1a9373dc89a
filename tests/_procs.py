"""Process helpers shared by the distributed and ComfyUI hang tests."""
from __future__ import annotations

import os
import signal
import time


def sigstop(pid: int, timeout_s: float = 5.0) -> None:
    """SIGSTOP `pid` and wait until every thread of it is stopped: the group stop is not
    synchronous, and a reader thread woken by a message in flight could still answer it."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except OSError:
                pass
        if states and all(s in "Tt" for s in states):
            return
        time.sleep(0.005)
    raise AssertionError(f"pid {pid} did not stop")
