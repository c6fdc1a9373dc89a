"""`python -m wan_core doctor`: what this machine offers the engine, for bug reports and setup.

Prints Python/torch versions, CUDA and the GPUs (name, compute capability, memory), which attention
backends import and which one `auto` picks, torch.distributed backends (NCCL, gloo), PyAV and its
H.264/AAC encoders, and the free space of /dev/shm (the worker group returns videos through shared
memory; NCCL uses it between GPUs of one host). No network, no model, no process; GPU memory is
read through NVML when `pynvml` is importable (no CUDA context), else only the total is shown.
Always exits 0: a missing piece is reported, not raised.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from typing import Callable, Optional, TextIO

_GB = 1024 ** 3
# The modules models/attention.py imports for each flash backend (its `_load_flash`).
_FLASH_MODULES = {"flash3": "flash_attn_interface", "flash4": "flash_attn.cute", "flash2": "flash_attn"}
# One 81-frame 1280x720 RGB uint8 video: the largest tensor a worker hands back at official sizes.
_VIDEO_BYTES = 81 * 720 * 1280 * 3


@dataclass(frozen=True)
class Line:
    """One fact: `label: value`, and a `warning` (what to do) when it may hurt a run."""

    label: str
    value: str
    warning: Optional[str] = None


def _python() -> list[Line]:
    return [Line("python", f"{platform.python_version()} ({sys.executable})"),
            Line("platform", platform.platform())]


def _torch() -> list[Line]:
    import torch

    lines = [Line("torch", torch.__version__),
             Line("torch CUDA build", torch.version.cuda or "none (CPU-only build)")]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        lines.append(Line("CUDA_VISIBLE_DEVICES", repr(visible)))
    if not torch.cuda.is_available():
        return lines + [Line("CUDA available", "no", "device 'cuda' cannot run here; use device 'cpu'")]
    count = torch.cuda.device_count()
    lines.append(Line("CUDA available", f"yes, {count} GPU(s)"))
    free = _nvml_free_bytes()
    for i in range(count):
        p = torch.cuda.get_device_properties(i)
        mem = f"{p.total_memory / _GB:.1f} GiB"
        if free is not None and i < len(free):
            mem += f", {free[i] / _GB:.1f} GiB free"
        lines.append(Line(f"  GPU {i}", f"{p.name}, sm_{p.major}{p.minor}, {mem}"))
    return lines


def _nvml_free_bytes() -> Optional[list[int]]:
    """Free memory per visible GPU through NVML (no CUDA context), or None without pynvml.

    NVML numbers GPUs physically; CUDA_VISIBLE_DEVICES given as indices is mapped, any other form
    (UUIDs) is not, and then only totals are shown."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible is None:
                ids = list(range(pynvml.nvmlDeviceGetCount()))
            else:
                ids = [int(v) for v in visible.split(",") if v.strip()]
            return [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).free
                    for i in ids]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML missing or a UUID list: the totals still print
        return None


def _attention() -> list[Line]:
    import torch

    from .models.attention import _load_flash, resolve_backend

    lines = []
    for name, module in _FLASH_MODULES.items():
        if _load_flash(name) is not None:
            lines.append(Line(f"attention {name}", f"imports ({module}{_version_of(name)})"))
        elif importlib.util.find_spec(module.split(".")[0]) is None:
            lines.append(Line(f"attention {name}", f"not installed ({module})"))
        else:
            lines.append(Line(f"attention {name}", f"installed but {module} fails to import",
                              f"run `{sys.executable} -c 'import {module}'` to see why "
                              "(often a wheel built for another torch or CUDA)"))
    lines.append(Line("attention sdpa", "available (PyTorch)"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    picked = resolve_backend("auto", device).name
    lines.append(Line("attention auto", f"picks {picked} on {device}"))
    return lines


def _version_of(backend: str) -> str:
    """Installed version of the backend's wheel (names as on PyPI; metadata normalises - and _)."""
    from importlib import metadata

    dist = {"flash3": "flash-attn-3", "flash4": "flash-attn-4", "flash2": "flash-attn"}[backend]
    try:
        return f", {dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return ""


def _distributed() -> list[Line]:
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return [Line("torch.distributed", "not available",
                     "this torch build has no torch.distributed: only num_gpus=1 can run")]
    lines = [Line("gloo (CPU ranks)", "yes" if dist.is_gloo_available() else "no")]
    if dist.is_nccl_available():
        version = ".".join(map(str, torch.cuda.nccl.version())) if torch.version.cuda else "?"
        lines.append(Line("NCCL (GPU ranks)", f"yes, {version}"))
    else:
        lines.append(Line("NCCL (GPU ranks)", "no",
                          "multi-GPU groups need NCCL (a CUDA build of torch on Linux)"
                          if torch.cuda.is_available() else None))
    return lines


def _video() -> list[Line]:
    try:
        import av
        import av.codec
    except ImportError as exc:
        return [Line("PyAV", "not importable", f"pip install av (mp4 output needs it): {exc}")]
    lines = [Line("PyAV", av.__version__)]
    for codec, what in (("libx264", "H.264 encoder (mp4 video)"), ("aac", "AAC encoder (s2v-14B audio)")):
        try:
            av.codec.Codec(codec, "w")
            lines.append(Line(f"  {what}", "yes"))
        except Exception:  # noqa: BLE001 - av raises UnknownCodecError (version dependent)
            lines.append(Line(f"  {what}", "no", f"this PyAV/FFmpeg build has no {codec} encoder"))
    return lines


def _shm() -> list[Line]:
    from .runtime.transport import SHM_DIR, shm_has_room

    try:
        usage = shutil.disk_usage(SHM_DIR)
    except OSError as exc:
        return [Line(SHM_DIR, f"unreadable ({exc})",
                     "worker results then travel through the pipe (slower); NCCL may fail")]
    value = f"{usage.free / _GB:.2f} GiB free of {usage.total / _GB:.2f} GiB"
    warning = None
    if not shm_has_room(_VIDEO_BYTES):
        warning = ("too small for an 81-frame 1280x720 video: results travel through the pipe "
                   "instead (slower) and NCCL may fail; in Docker pass --shm-size=8g")
    return [Line(SHM_DIR, value, warning)]


SECTIONS: list[tuple[str, Callable[[], list[Line]]]] = [
    ("Python", _python), ("PyTorch and GPUs", _torch), ("Attention", _attention),
    ("Distributed", _distributed), ("Video", _video), ("Shared memory", _shm),
]


def run_doctor(out: TextIO = sys.stdout) -> int:
    """Print every section; a section that raises is reported as such. Returns 0."""
    warnings = 0
    for title, collect in SECTIONS:
        print(f"{title}:", file=out)
        try:
            lines = collect()
        except Exception as exc:  # noqa: BLE001 - a report, not a run: show it and go on
            lines = [Line("error", f"{type(exc).__name__}: {exc}", "please include this in a bug report")]
        for line in lines:
            print(f"  {line.label}: {line.value}", file=out)
            if line.warning:
                warnings += 1
                print(f"    warning: {line.warning}", file=out)
    print(f"{warnings} warning(s)", file=out)
    return 0
