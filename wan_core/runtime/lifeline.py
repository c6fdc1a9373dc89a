"""Worker-side defences against outliving the client process (docs/runtime.md §1.6).

1. Lifeline pipe: the parent keeps the (close-on-exec) write end of a pipe and never writes; the
   worker gets the read end through `pass_fds`. A daemon thread blocks in `read()`; end-of-file
   means the parent exited, was killed, or `execv`ed (ComfyUI-Manager's restart), and the worker
   exits at once, whatever its main thread is doing.
2. `PR_SET_PDEATHSIG(SIGKILL)`: the kernel kills the worker when the thread that spawned it ends,
   so the parent spawns from one long-lived thread (`group._Spawner`). Second line only.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from typing import Callable, Optional

EXIT_PARENT_GONE = 70
PR_SET_PDEATHSIG = 1


def watch_lifeline(fd: int, before_exit: Optional[Callable[[], None]] = None) -> threading.Thread:
    """Start a daemon thread that ends the process when the lifeline's writer is gone."""

    def run() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        try:
            if before_exit is not None:
                before_exit()
        finally:
            os._exit(EXIT_PARENT_GONE)

    thread = threading.Thread(target=run, name="wan-lifeline", daemon=True)
    thread.start()
    return thread


def die_with_parent(expected_ppid: int) -> None:
    """Ask the kernel for SIGKILL when the parent (thread) dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    # prctl does nothing if the parent was already gone: we would have been re-parented.
    if os.getppid() != expected_ppid:
        os._exit(EXIT_PARENT_GONE)
