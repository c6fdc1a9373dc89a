"""Task -> pipeline family. A family is a class with

- `s2v_dit: bool`: which DiT class its checkpoint holds (WanModel or WanModel_S2V);
- `split_decode: bool`: whether the final VAE decode may be split over the ranks;
- `load(task_spec, parts, device)`: the family instance, with whatever it loads besides the T5,
  VAE and DiT(s) the engine loads for every task (S2V: the wav2vec2 audio encoder, from
  `parts.audio_encoder`, a `loading.parts.Parts`); its `load_timings` name what it loaded;
- `plan(request, ulysses_size=1)`: the resolved, validated plan (no model work; the CLI and the
  nodes call it before anything loads, on an instance made with `family(task_spec)`); every plan has
  `seed`, `guide_scale` (a GuideScale) and `warnings`;
- `run(plan, components, dist, hooks, *, batch_cfg, trace)`: the video; rank 0 returns the
  `GenerateResult`, other ranks None.
"""
from __future__ import annotations

from ..config import Task, TaskSpec
from .s2v import S2VPipeline
from .video_tasks import VideoPipeline

FAMILIES = {Task.T2V_A14B: VideoPipeline, Task.I2V_A14B: VideoPipeline, Task.TI2V_5B: VideoPipeline,
            Task.S2V_14B: S2VPipeline}


def pipeline_for(task_spec: TaskSpec):
    """The family class that runs `task_spec`'s task."""
    return FAMILIES[task_spec.task]


__all__ = ["FAMILIES", "pipeline_for", "VideoPipeline", "S2VPipeline"]
