"""wan_core: the Wan2.2 engine (models, loading, pipelines, worker group, parallel strategies).

Importing this package does no CUDA work, starts no process and does not import torch: only the
configuration types and errors load here. `WanEngine` (the in-process engine) is exported lazily:
`wan_core.WanEngine` imports torch and the pipeline the first time it is asked for.
Never imports ComfyUI.
"""
from typing import TYPE_CHECKING

from .config import (AttentionBackend, EngineSpec, GenerateRequest, GenerateResult, GuideScale,
                     OffloadMode, ParallelConfig, ParamDtype, Solver, Task, TASKS)
from .errors import (Cancelled, CheckpointError, ConfigError, InputError, WanEngineError,
                     WorkerFailure)

if TYPE_CHECKING:   # for type checkers and IDEs only; at run time __getattr__ below loads it
    from .pipeline.engine import WanEngine

__all__ = [
    "AttentionBackend", "EngineSpec", "GenerateRequest", "GenerateResult", "GuideScale",
    "OffloadMode", "ParallelConfig", "ParamDtype", "Solver", "Task", "TASKS",
    "Cancelled", "CheckpointError", "ConfigError", "InputError", "WanEngineError", "WorkerFailure",
    "WanEngine",
]

_LAZY = {"WanEngine": ".pipeline.engine"}
"""Public names whose modules are heavy (torch, models): imported on first attribute access."""


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wan_core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value   # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
