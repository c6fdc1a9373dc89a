"""The values that travel on this pack's sockets, and their socket type names.

Each is a small frozen dataclass, passed by reference between nodes and never serialised. The
socket names are part of saved workflows: keep them stable.
"""
from __future__ import annotations

from dataclasses import dataclass

from wan_core.config import EngineSpec, GenerateResult, GuideScale, Task

ENGINE = "WAN22MG_ENGINE"
TEXT = "WAN22MG_TEXT"
EXPERTS = "WAN22MG_EXPERTS"
AUDIO = "WAN22MG_AUDIO"
LATENT = "WAN22MG_LATENT"


@dataclass(frozen=True)
class EngineHandle:
    """What the loader outputs: the spec of a worker group, not the group itself.

    The live group belongs to the process-wide registry (nodes/registry.py), which starts it on
    first use, restarts it when it died and ends it on /free or Wan22MGRelease. A handle therefore
    stays valid whatever happened to the group since the loader ran (ComfyUI caches the loader's
    output across prompts)."""

    spec: EngineSpec
    checkpoint: str          # the name the user picked (a folder under models/wan22/)
    loras: tuple = ()        # LoraSpec entries added by Wan2.2 Multi-GPU LoRA nodes, in order;
                             # not part of the spec: changing them never restarts the group

    @property
    def task(self) -> Task:
        return self.spec.task


@dataclass(frozen=True)
class TextPrompt:
    """Prompt and negative prompt. The engine's T5 encodes them inside the sampler's request, on the
    workers (t5_fsdp / t5_cpu apply there), so the text never crosses the process boundary twice.
    An empty negative prompt means the task's official one."""

    prompt: str
    negative: str = ""


@dataclass(frozen=True)
class ExpertRouting:
    """MoE routing of the A14B tasks: the switch point and the guidance of each expert."""

    boundary: float
    guide: GuideScale
    switch_step: int = 0     # > 0: switch by step index instead of the boundary


@dataclass(frozen=True)
class SpeechInput:
    """S2V's audio and clip settings (the WAN22MG_AUDIO value): `audio` is a
    `wan_core.io.audio.AudioInput` (waveform + rate, mixed to mono and resampled to 16 kHz by the
    engine), `options` a `wan_core.pipeline.s2v.S2VOptions` (frames per clip, clip count...)."""

    audio: object
    options: object


@dataclass(frozen=True)
class WanLatent:
    """A sampler result: the final latent, the decoded frames (the workers decode on the GPUs
    that hold the VAE, in the same request) and the fps. For S2V the result also carries the
    audio to mux, aligned with the first frame."""

    result: GenerateResult
    task: Task
