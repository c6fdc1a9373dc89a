"""wan_core: the Wan2.2 engine (models, loading, pipelines, worker group, parallel strategies).

Importing this package does no CUDA work and starts no process. Never imports ComfyUI.
"""
from .config import (AttentionBackend, EngineSpec, GenerateRequest, GenerateResult, GuideScale,
                     OffloadMode, ParallelConfig, ParamDtype, Solver, Task, TASKS)
from .errors import (Cancelled, CheckpointError, ConfigError, InputError, WanEngineError,
                     WorkerFailure)

__all__ = [
    "AttentionBackend", "EngineSpec", "GenerateRequest", "GenerateResult", "GuideScale",
    "OffloadMode", "ParallelConfig", "ParamDtype", "Solver", "Task", "TASKS",
    "Cancelled", "CheckpointError", "ConfigError", "InputError", "WanEngineError", "WorkerFailure",
]
