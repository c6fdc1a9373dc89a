"""A usable checkpoint folder per task from ../shared/wan22_tiny/ckpt.

The task folders link T5, tokenizer and VAE into `ckpt/shared/` with relative symbolic links. A copy
made without symlink support (git with core.symlinks=false, some archive tools) leaves small text
files holding the link target instead; this helper builds a folder of real links (in a temp dir)
that works in both cases, so the engine sees the official layout.
"""
from __future__ import annotations

import os
from pathlib import Path


def _target(entry: Path) -> Path:
    if entry.is_symlink():
        return entry.resolve()
    if entry.is_file() and entry.stat().st_size < 256:
        try:
            text = entry.read_text(encoding="utf-8").strip()
        except (UnicodeDecodeError, OSError):
            return entry
        candidate = (entry.parent / text)
        if text and "\n" not in text and candidate.exists():
            return candidate.resolve()
    return entry.resolve()


def task_ckpt(tiny_dir: Path, task: str, dest_root: Path) -> Path:
    """`dest_root/<task>`: links to every entry of `tiny_dir/ckpt/<task>`, stub links resolved."""
    src = Path(tiny_dir) / "ckpt" / task
    dest = Path(dest_root) / task
    if dest.is_dir():
        return dest
    dest.mkdir(parents=True)
    for entry in sorted(src.iterdir()):
        os.symlink(_target(entry), dest / entry.name)
    return dest


def cpu_engines(tiny_dir: Path, dest_root: Path):
    """`get(task)` -> a WanEngine (CPU, fp32) on that tiny task folder, built once per `get`."""
    from wan_core.config import EngineSpec, ParamDtype, Task
    from wan_core.pipeline.engine import WanEngine

    cache: dict = {}

    def get(task: str):
        if task not in cache:
            ck = task_ckpt(tiny_dir, task, dest_root)
            cache[task] = WanEngine(EngineSpec(task=Task.parse(task), ckpt_dir=str(ck), device="cpu",
                                               param_dtype=ParamDtype.FP32))
        return cache[task]

    return get
