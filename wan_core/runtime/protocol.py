"""Messages between the client (parent process) and the worker ranks.

Every message is a small frozen dataclass, pickled with the standard pickler over the rank's control
connection (`transport.Channel`); tensors above a size threshold travel through shared memory.
One connection per rank; the client talks to every rank, only rank 0 answers with results.

    parent                                   worker rank r
    ------                                   -------------
                     <- Hello(rank, pid)      connects to the control socket
    WorkerConfig ->                           init_process_group, load the engine
                     <- Ready | Failed        (Failed: the worker exits afterwards)
    Generate(id) ->  (to every rank)
    Cancel(id)   ->  (every rank; rank 0's decides the stop)
                     <- CancelAck             (every rank, at once, from its reader thread)
                     <- ProgressEvent         (rank 0, while it runs)
                     <- Finished | Stopped | Failed   (every rank, one per request)
    StatusQuery  ->  <- RankStatus            (answered while busy, from a reader thread)
                     <- Heartbeat             (every rank, every heartbeat_s, from its own thread)
    Shutdown     ->                           the worker exits
"""
from __future__ import annotations

import traceback as _tb
from dataclasses import dataclass, field
from typing import Any, Optional

from ..config import EngineSpec, GenerateRequest
from ..errors import WanEngineError, WorkerFailure

PROTOCOL_VERSION = 3     # 2: Generate.preview, ProgressEvent.preview; 3: FileStore, Heartbeat, CancelAck
AUTHKEY_ENV = "WAN_CORE_WORKER_AUTHKEY"
"""Environment variable that hands a worker the listener's authkey (popped at once)."""


@dataclass(frozen=True)
class Hello:
    rank: int
    pid: int
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class WorkerConfig:
    """What a rank needs to join its group and load the engine (sent in answer to Hello)."""

    spec: EngineSpec
    world_size: int
    store_path: str          # the rendezvous: a FileStore in the group's private (0700) folder
    store_prefix: str
    pg_timeout_s: float
    shm_prefix: str          # names of the shared-memory segments this rank creates start with it
    heartbeat_s: float = 1.0


@dataclass(frozen=True)
class Ready:
    rank: int
    pid: int
    device: str              # "cuda:0 (NVIDIA H100 80GB HBM3, GPU-...)" or "cpu"
    versions: dict           # python, torch, cuda, nccl
    memory: dict             # see RankStatus.memory
    load_s: float
    weights: str = ""        # WanEngine.weights_summary: format/dtype per part, weight bytes on the device


@dataclass(frozen=True)
class Generate:
    request_id: int
    request: GenerateRequest
    preview: bool = False    # rank 0 attaches a latent preview to each denoise step's ProgressEvent


@dataclass(frozen=True)
class Cancel:
    request_id: int


@dataclass(frozen=True)
class CancelAck:
    """A rank received Cancel (sent by its reader thread at once: the process is alive). It stops
    at the next step boundary, where every rank agrees on rank 0's flag."""

    request_id: int
    rank: int
    phase: str


@dataclass(frozen=True)
class Heartbeat:
    """Sent every `WorkerConfig.heartbeat_s` by a thread of the rank's own: the process is alive.
    `phase` is what its main thread is doing ('generating: denoise 3/40'), for `phase_s` seconds."""

    rank: int
    phase: str
    phase_s: float


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class StatusQuery:
    query_id: int


@dataclass(frozen=True)
class ProgressEvent:
    """The engine's `Progress`, as plain fields (the client never imports the pipeline).
    `preview`: uint8 CPU tensor [H, W, 3] (at most 256 px a side, so it travels inline in the
    pickle, not through shared memory) when the request asked for previews."""

    request_id: int
    phase: str
    step: Optional[int] = None
    total: Optional[int] = None
    elapsed_s: float = 0.0
    message: str = ""
    preview: Any = None

    @classmethod
    def from_progress(cls, request_id: int, progress: Any) -> "ProgressEvent":
        return cls(request_id=request_id, phase=str(getattr(progress, "phase", "")),
                   step=getattr(progress, "step", None), total=getattr(progress, "total", None),
                   elapsed_s=float(getattr(progress, "elapsed_s", 0.0) or 0.0),
                   message=str(getattr(progress, "message", "") or ""),
                   preview=getattr(progress, "preview", None))


@dataclass(frozen=True)
class Finished:
    request_id: int
    rank: int
    result: Any = None       # GenerateResult on rank 0, None elsewhere


@dataclass(frozen=True)
class Stopped:
    """The request was cancelled; every rank stops at the same step."""

    request_id: int
    rank: int
    step: Optional[int]


@dataclass(frozen=True)
class Failed:
    """A rank raised: during start-up (request_id None; the rank then exits) or in a request."""

    rank: int
    request_id: Optional[int]
    exc_type: str
    message: str
    traceback: str
    user_error: bool

    @classmethod
    def from_exception(cls, rank: int, request_id: Optional[int], exc: BaseException) -> "Failed":
        return cls(rank=rank, request_id=request_id, exc_type=type(exc).__name__, message=str(exc),
                   traceback="".join(_tb.format_exception(type(exc), exc, exc.__traceback__)),
                   user_error=isinstance(exc, WanEngineError))

    def to_exception(self) -> WorkerFailure:
        return WorkerFailure(self.rank, self.exc_type, self.message, self.traceback,
                             user_error=self.user_error)


@dataclass(frozen=True)
class RankStatus:
    rank: int
    pid: int
    phase: str               # starting | loading | idle | generating: <engine phase> | ...
    device: str
    memory: dict = field(default_factory=dict)
    """rss_bytes always; on CUDA also allocated_bytes, peak_allocated_bytes, reserved_bytes,
    free_bytes, total_bytes."""
    query_id: int = 0
