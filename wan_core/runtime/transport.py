"""Control messages over a connection; large tensors through POSIX shared memory.

`Channel.send(msg)` walks the message (dataclasses, dicts, lists, tuples), moves every CPU tensor of
at least `SHM_MIN_BYTES` into a new `multiprocessing.shared_memory` segment and puts a `ShmTensor`
handle (name, shape, dtype) in its place; the rest is pickled with the *standard* pickler and sent
as bytes. `Channel.recv()` unpickles, copies each segment into a fresh tensor and unlinks it: the
receiver owns a segment from the moment it is sent.

Why not `Connection.send(obj)`: importing torch registers torch's reductions with
multiprocessing's pickler, which turn a tensor into a file-descriptor handle that only a process
started by multiprocessing (sharing its authkey) can open. Our workers are
plain `subprocess` children.

Segment names start with a per-group, per-sender prefix, so whatever a crash leaves behind can be
swept by name (`sweep`). Segments are not registered with multiprocessing's resource tracker
(which would unlink them when the *sender* exits, or warn about "leaked" segments it did not
create); ownership is explicit instead.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import os
import pickle
import shutil
import sys
import threading
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import torch

SHM_DIR = "/dev/shm"
SHM_MIN_BYTES = 1 << 20
"""Tensors smaller than this are pickled inline (a latent at tiny sizes, timings...)."""
_SHM_HEADROOM = 64 << 20
"""Free space to leave in /dev/shm (Docker's default is 64 MB in all); below it tensors go inline."""


@dataclass(frozen=True)
class ShmTensor:
    """Handle of a tensor parked in a shared-memory segment."""

    name: str
    shape: tuple
    dtype: str       # torch dtype name, e.g. "float32"
    nbytes: int


@contextlib.contextmanager
def _untracked():
    """Before Python 3.13, `SharedMemory` registers every segment it opens (created or attached)
    with the resource tracker; switch that off while we open or unlink (vLLM does the same,
    `ShmRingBuffer.__init__`). 3.13+ has `track=False` and does not need it."""
    if sys.version_info >= (3, 13):
        yield
        return
    reg, unreg = resource_tracker.register, resource_tracker.unregister
    resource_tracker.register = resource_tracker.unregister = lambda *a, **k: None
    try:
        yield
    finally:
        resource_tracker.register, resource_tracker.unregister = reg, unreg


def _open(name: str, create: bool = False, size: int = 0) -> SharedMemory:
    kwargs = {"track": False} if sys.version_info >= (3, 13) else {}
    with _untracked():
        return SharedMemory(name=name, create=create, size=size, **kwargs)


def _unlink(shm: SharedMemory) -> None:
    with _untracked():
        shm.unlink()


def shm_has_room(nbytes: int) -> bool:
    try:
        return shutil.disk_usage(SHM_DIR).free >= nbytes + _SHM_HEADROOM
    except OSError:
        return False


def put_tensor(t: torch.Tensor, name: str) -> ShmTensor:
    """Copy `t` (any device) into a new segment called `name`."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    nbytes = t.numel() * t.element_size()
    shm = _open(name, create=True, size=nbytes)
    try:
        dst = torch.frombuffer(shm.buf, dtype=torch.uint8, count=nbytes)
        dst.copy_(t.reshape(-1).view(torch.uint8))
        del dst
    except BaseException:
        shm.close()
        _unlink(shm)
        raise
    shm.close()
    return ShmTensor(name=name, shape=tuple(t.shape), dtype=str(t.dtype).removeprefix("torch."),
                     nbytes=nbytes)


def take_tensor(h: ShmTensor) -> torch.Tensor:
    """Copy a segment into a new tensor, then close and unlink the segment."""
    shm = _open(h.name)
    try:
        src = torch.frombuffer(shm.buf, dtype=torch.uint8, count=h.nbytes)
        out = src.clone()
        del src
    finally:
        shm.close()
        _unlink(shm)
    return out.view(getattr(torch, h.dtype)).reshape(h.shape)


def sweep(prefix: str) -> int:
    """Unlink every segment whose name starts with `prefix` (after a crash); returns how many."""
    n = 0
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    for name in names:
        if name.startswith(prefix):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SHM_DIR, name))
                n += 1
    return n


def _map(obj: Any, fn) -> Any:
    """Apply `fn` to every leaf tensor/handle in obj (dataclasses, dicts, lists, tuples); returns
    obj itself when nothing changed."""
    if isinstance(obj, (torch.Tensor, ShmTensor)):
        return fn(obj)
    if isinstance(obj, dict):
        new = {k: _map(v, fn) for k, v in obj.items()}
        return obj if all(new[k] is obj[k] for k in obj) else type(obj)(new)
    if isinstance(obj, (list, tuple)):
        items = [_map(v, fn) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        if isinstance(obj, list):
            return items
        return obj._make(items) if hasattr(obj, "_make") else type(obj)(items)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            nv = _map(v, fn)
            if nv is not v:
                changes[f.name] = nv
        if not changes:
            return obj
        new = copy.copy(obj)
        for k, v in changes.items():
            object.__setattr__(new, k, v)   # frozen dataclasses too; no __post_init__ re-run
        return new
    return obj


class Channel:
    """One rank's control connection: thread-safe `send`, `recv` for one reader thread."""

    def __init__(self, conn, shm_prefix: str, min_shm_bytes: int = SHM_MIN_BYTES) -> None:
        self.conn = conn
        self.shm_prefix = shm_prefix
        self.min_shm_bytes = min_shm_bytes
        self._counter = itertools.count()
        self._send_lock = threading.Lock()
        self.eof = False
        """Set by the reader once recv() saw the end of the connection."""

    def pack(self, msg: Any) -> tuple[Any, list[str]]:
        created: list[str] = []

        def park(t):
            if not isinstance(t, torch.Tensor):
                return t
            nbytes = t.numel() * t.element_size()
            if nbytes < max(1, self.min_shm_bytes) or not shm_has_room(nbytes):
                return t.detach().cpu() if t.device.type != "cpu" else t
            name = f"{self.shm_prefix}_{next(self._counter)}"
            h = put_tensor(t, name)
            created.append(name)
            return h

        try:
            return _map(msg, park), created
        except BaseException:
            _discard(created)
            raise

    def send(self, msg: Any) -> None:
        packed, created = self.pack(msg)
        try:
            data = pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL)
            with self._send_lock:
                self.conn.send_bytes(data)
        except BaseException:
            _discard(created)
            raise

    def recv(self) -> Any:
        """Blocks; raises EOFError when the peer closed the connection."""
        return unpack(pickle.loads(self.conn.recv_bytes()))

    def poll(self, timeout: float = 0.0) -> bool:
        return self.conn.poll(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


def unpack(obj: Any) -> Any:
    return _map(obj, lambda h: take_tensor(h) if isinstance(h, ShmTensor) else h)


def _discard(names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(SHM_DIR, name))
