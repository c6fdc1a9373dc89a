"""Progress reports and run hooks shared by the engine, the worker group, the CLI and the nodes."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    import torch


class Phase:
    """Names of the phases a run goes through, in order."""

    LOAD = "load"
    ENCODE = "encode"
    DENOISE = "denoise"
    DECODE = "decode"


@dataclass(frozen=True)
class Progress:
    """One progress report: `step` of `total` done in `phase` (denoise: steps; others: 0/1).
    `preview`: with `RunHooks.want_preview`, each denoise step's report on rank 0 carries a small
    RGB image of the current denoised estimate, uint8 CPU [H, W, 3] (`pipeline.preview`)."""

    phase: str
    step: int
    total: int
    elapsed_s: float
    message: str = ""
    preview: Optional[torch.Tensor] = None


@dataclass
class RunHooks:
    """Callbacks of one run. Both are optional and are only consulted on rank 0's side by callers;
    every rank calls `should_stop` at the same points and the answers are agreed collectively.
    `want_preview` (off by default; the CLI leaves it off): rank 0 attaches a latent preview to
    every denoise step's Progress. Other ranks ignore it (no extra work, no collectives)."""

    on_progress: Optional[Callable[[Progress], None]] = None
    should_stop: Optional[Callable[[], bool]] = None
    want_preview: bool = False

    def report(self, phase: str, step: int, total: int, start: float, message: str = "",
               preview: Optional[torch.Tensor] = None) -> None:
        if self.on_progress is not None:
            self.on_progress(Progress(phase, step, total, time.perf_counter() - start, message, preview))

    def stop_requested(self) -> bool:
        return bool(self.should_stop()) if self.should_stop is not None else False


NO_HOOKS = RunHooks()
