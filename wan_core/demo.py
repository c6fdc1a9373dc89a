"""`python -m wan_core demo`: T2V end to end on a tiny random-weight checkpoint.

Writes the checkpoint with our own writer (`wan_core.tinyckpt`) to a cache folder (once), then runs
the same path as `python -m wan_core generate --task t2v-A14B` — checkpoint checks, T5, both MoE
experts, the UniPC scheduler, the Wan2.1 VAE, the mp4 writer — and prints where the video is.
The weights are random, so the video is coloured noise; the point is that every stage runs.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

DEMO_PROMPT = "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage."
DEMO_SIZE = (192, 128)      # (W, H): multiples of 16
DEMO_FRAMES = 17
DEMO_STEPS = 8


def default_cache_dir() -> Path:
    base = os.environ.get("WAN_CORE_CACHE") or os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "wan_core" / "tiny-t2v-A14B"


def run_demo(out: str = "wan_demo.mp4", device: Optional[str] = None, ckpt_dir: Optional[str] = None) -> int:
    import torch

    from .cli import (ProgressBars, _rank, _run_in_process, _run_torchrun, _save_outputs, _under_torchrun,
                      log, precheck)
    from .config import EngineSpec, GenerateRequest, ParallelConfig, ParamDtype, Task
    from .tinyckpt import write_tiny_t2v

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    folder = Path(ckpt_dir) if ckpt_dir else default_cache_dir()
    write_tiny_t2v(folder)   # safe when torchrun's ranks all write it at once
    say = _rank() == 0       # under torchrun: one demo over all ranks, reported by rank 0
    if say:
        print(f"tiny T2V-A14B checkpoint (random weights, so the video is coloured noise): {folder}",
              file=sys.stderr)
    world = int(os.environ.get("WORLD_SIZE", "1")) if _under_torchrun() else 1
    spec = EngineSpec(task=Task.T2V_A14B, ckpt_dir=str(folder), device=device,
                      param_dtype=ParamDtype.BF16 if device.startswith("cuda") else ParamDtype.FP32,
                      parallel=ParallelConfig(num_gpus=world, ulysses_size=world))
    request = GenerateRequest(prompt=DEMO_PROMPT, size=DEMO_SIZE, frame_num=DEMO_FRAMES,
                              steps=DEMO_STEPS, seed=42)
    plan = precheck(spec, request)
    for text in plan.warnings:   # before the progress bars (the tiny size is not an official one)
        log.warning(text)
    bars = ProgressBars(enabled=say)
    result = _run_torchrun(spec, request, bars) if world > 1 else _run_in_process(spec, request, bars)
    if result is None:           # ranks other than 0
        return 0
    _save_outputs(result, out, None)
    print(f"demo finished in {time.perf_counter() - start:.1f} s on {device}"
          f"{f' ({world} ranks)' if world > 1 else ''}: {out}", file=sys.stderr)
    return 0
