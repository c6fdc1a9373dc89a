"""`python -m wan_core demo`: T2V end to end on a tiny random-weight checkpoint.

Writes the checkpoint with our own writer (`wan_core.tinyckpt`) to a cache folder (once), then runs
the same path as `python -m wan_core generate --task t2v-A14B` — checkpoint checks, T5, both MoE
experts, the UniPC scheduler, the Wan2.1 VAE, the mp4 writer — and prints where the video is.
The weights are random, so the video is coloured noise; the point is that every stage runs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .config import EngineSpec, GenerateRequest, ParallelConfig, ParamDtype, Task

DEMO_PROMPT = "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage."
DEMO_SIZE = (192, 128)      # (W, H): multiples of 16
DEMO_FRAMES = 17
DEMO_STEPS = 8


def default_cache_dir() -> Path:
    base = os.environ.get("WAN_CORE_CACHE") or os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "wan_core" / "tiny-t2v-A14B"


def demo_job(device: str, ckpt_dir: Optional[str] = None, world: int = 1):
    """The demo's checkpoint (written once to `ckpt_dir` or the cache folder; safe when torchrun's
    ranks all write it at once) and its (folder, EngineSpec, GenerateRequest). The CLI's `demo`
    command runs it like `generate` (cli.cmd_demo); this module imports nothing from the CLI."""
    from .tinyckpt import write_tiny_t2v   # here: torch loads only when a demo runs

    folder = Path(ckpt_dir) if ckpt_dir else default_cache_dir()
    write_tiny_t2v(folder)
    spec = EngineSpec(task=Task.T2V_A14B, ckpt_dir=str(folder), device=device,
                      param_dtype=ParamDtype.BF16 if device.startswith("cuda") else ParamDtype.FP32,
                      parallel=ParallelConfig(num_gpus=world, ulysses_size=world))
    request = GenerateRequest(prompt=DEMO_PROMPT, size=DEMO_SIZE, frame_num=DEMO_FRAMES,
                              steps=DEMO_STEPS, seed=42)
    return folder, spec, request
