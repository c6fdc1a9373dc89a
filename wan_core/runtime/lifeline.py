"""Worker-side defences against outliving the client process (docs/architecture.md, Runtime: Orphans).

1. Lifeline pipe: the parent keeps the (close-on-exec) write end of a pipe and never writes; the
   worker gets the read end through `pass_fds`. A daemon thread blocks in `read()`; end-of-file
   means the parent exited, was killed, or `execv`ed (ComfyUI-Manager's restart), and the worker
   exits at once, whatever its main thread is doing.
2. `PR_SET_PDEATHSIG(SIGTERM)`: the kernel signals the worker when the thread that spawned it ends,
   so the parent spawns from one long-lived thread (`processes.Spawner`). Second line. SIGTERM, not
   SIGKILL, so that the worker removes the group's private folder and shared memory itself
   (`take_sigterm`): SIGKILL used to beat the lifeline thread and leave them to a later sweep.
3. `take_sigterm`: SIGTERM is blocked in every thread and taken by one thread with `sigwait`
   (which needs no Python signal handler, so it works while the main thread sits in a C call or a
   collective), which cleans up and exits. A process whose GIL is held for good runs neither
   thread: the client's SIGKILL after its grace period and the stale-group sweep remain.
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

    def wait() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass

    return _exit_after(wait, before_exit, EXIT_PARENT_GONE, "wan-lifeline")


def _exit_after(wait: Callable[[], None], before_exit: Optional[Callable[[], None]], code: int,
                name: str) -> threading.Thread:
    """A started daemon thread: `wait()`, then `before_exit()` (if any), then `os._exit(code)` even
    when `before_exit` raised."""

    def run() -> None:
        wait()
        try:
            if before_exit is not None:
                before_exit()
        finally:
            os._exit(code)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


EXIT_TERMINATED = 128 + signal.SIGTERM


def lifeline_closed(fd: int, wait_s: float = 0.0) -> bool:
    """True once the lifeline's writer is gone (the parent died, or closed it to tear the group
    down), waiting up to `wait_s` for it. The parent-death signal comes when the *spawning thread*
    exits, which may be a moment before the dying parent's files (the lifeline) are closed."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    return bool(poller.poll(int(wait_s * 1000)))   # the parent never writes: any event is the end


def take_sigterm(before_exit: Callable[[], None]) -> threading.Thread:
    """Block SIGTERM in the calling (main) thread, and so in every thread started after it, and
    take it in a daemon thread of its own: `before_exit()`, then exit 143. Call it first."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    return _exit_after(lambda: signal.sigwait({signal.SIGTERM}), before_exit, EXIT_TERMINATED, "wan-sigterm")


def die_with_parent(expected_ppid: int, sig: int = signal.SIGKILL,
                    before_exit: Optional[Callable[[], None]] = None) -> None:
    """Ask the kernel for `sig` when the parent (thread) dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    # prctl does nothing if the parent was already gone: we would have been re-parented.
    if os.getppid() != expected_ppid:
        try:
            if before_exit is not None:
                before_exit()
        finally:
            os._exit(EXIT_PARENT_GONE)
