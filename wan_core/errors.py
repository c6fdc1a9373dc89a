"""Typed errors of the engine.

Every error a user can cause (bad checkpoint, bad size, bad flag) is a subclass of
`WanEngineError` with a message that names the offending value and says what to do. The CLI and
the ComfyUI nodes print the message without a traceback; anything else is a bug and propagates.
"""
from __future__ import annotations


class WanEngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(WanEngineError):
    """An option or a combination of options cannot work (names the values and the fix)."""


class CheckpointError(WanEngineError):
    """A checkpoint folder or file is missing, incomplete or corrupt (names the file)."""


class InputError(WanEngineError):
    """A user input (image, audio, video, prompt) cannot be used (names the input)."""


class Cancelled(WanEngineError):
    """The request was cancelled; every rank stopped at the same step boundary."""

    def __init__(self, step: int | None = None) -> None:
        self.step = step
        super().__init__(f"cancelled at step {step}" if step is not None else "cancelled")


class WorkerFailure(WanEngineError):
    """A worker rank raised or died. Carries the rank, the exception type, message and traceback."""

    def __init__(self, rank: int, exc_type: str, message: str, traceback: str = "",
                 user_error: bool = False) -> None:
        self.rank = rank
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback
        # True when the worker raised a WanEngineError (a user mistake, not a crash): the UI then
        # shows only the message.
        self.user_error = user_error
        super().__init__(f"rank {rank}: {exc_type}: {message}")
