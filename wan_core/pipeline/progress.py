"""Progress reports and run hooks shared by the engine, the worker group, the CLI and the nodes."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional


class Phase:
    """Names of the phases a run goes through, in order."""

    LOAD = "load"
    ENCODE = "encode"
    DENOISE = "denoise"
    DECODE = "decode"


@dataclass(frozen=True)
class Progress:
    """One progress report: `step` of `total` done in `phase` (denoise: steps; others: 0/1)."""

    phase: str
    step: int
    total: int
    elapsed_s: float
    message: str = ""


@dataclass
class RunHooks:
    """Callbacks of one run. Both are optional and are only consulted on rank 0's side by callers;
    every rank calls `should_stop` at the same points and the answers are agreed collectively."""

    on_progress: Optional[Callable[[Progress], None]] = None
    should_stop: Optional[Callable[[], bool]] = None

    def report(self, phase: str, step: int, total: int, start: float, message: str = "") -> None:
        if self.on_progress is not None:
            self.on_progress(Progress(phase, step, total, time.perf_counter() - start, message))

    def stop_requested(self) -> bool:
        return bool(self.should_stop()) if self.should_stop is not None else False


NO_HOOKS = RunHooks()
