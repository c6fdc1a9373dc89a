"""Wan22MGTextEncode, Wan22MGExpertRouter and Wan22MGAudioEncode: typed inputs of the sampler.

Text and audio are encoded by the engine on the workers (T5 and wav2vec2 live there, with
t5_fsdp / t5_cpu applied), inside the sampler's single GenerateRequest. These nodes only shape and
check the values, so nothing heavy crosses the process boundary twice.
"""
from __future__ import annotations

from wan_core.config import TASKS, GuideScale, Task
from wan_core.errors import ConfigError

from .convert import audio_from_comfy
from .types import AUDIO, EXPERTS, TEXT, ExpertRouting, TextPrompt

CATEGORY = "Wan2.2 Multi-GPU"
_T2V = TASKS[Task.T2V_A14B]


class Wan22MGTextEncode:
    DESCRIPTION = ("Prompt and negative prompt for Wan22MG Sampler; the engine's umT5 encodes them "
                   "on the workers. An empty negative prompt uses the task's official one.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (TEXT,)
    RETURN_NAMES = ("text",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                  "tooltip": "what the video shows"}),
            "negative_prompt": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                           "placeholder": "empty = the official negative prompt",
                                           "tooltip": "what to avoid; empty = the task's official "
                                           "(Chinese) negative prompt"}),
        }}

    def encode(self, prompt, negative_prompt):
        return (TextPrompt(prompt=prompt, negative=negative_prompt),)


class Wan22MGExpertRouter:
    DESCRIPTION = ("MoE routing of T2V-A14B / I2V-A14B: steps whose timestep is at or above "
                   "boundary x 1000 run the high-noise expert, the others the low-noise expert, "
                   "each with its own guidance. Official: T2V 0.875, 4.0 / 3.0; I2V 0.900, 3.5 / 3.5. "
                   "Single-model tasks (TI2V-5B, S2V) ignore the boundary and need equal guidance.")
    CATEGORY = CATEGORY
    FUNCTION = "route"
    RETURN_TYPES = (EXPERTS,)
    RETURN_NAMES = ("experts",)

    @classmethod
    def INPUT_TYPES(cls):
        low, high = _T2V.guide_scale
        return {"required": {
            "boundary": ("FLOAT", {"default": _T2V.boundary, "min": 0.0, "max": 1.0, "step": 0.005,
                                   "round": 0.001, "tooltip": "switch point as a fraction of the 1000 "
                                   "train timesteps (0: high-noise expert only, 1: low-noise only)"}),
            "guidance_high_noise": ("FLOAT", {"default": high, "min": 0.0, "max": 50.0, "step": 0.1,
                                              "round": 0.01, "tooltip": "CFG scale of the high-noise "
                                              "expert (early steps: layout and motion); 1 disables CFG"}),
            "guidance_low_noise": ("FLOAT", {"default": low, "min": 0.0, "max": 50.0, "step": 0.1,
                                             "round": 0.01, "tooltip": "CFG scale of the low-noise "
                                             "expert (late steps: detail)"}),
        }}

    def route(self, boundary, guidance_high_noise, guidance_low_noise):
        if not 0.0 <= boundary <= 1.0:
            raise ConfigError(f"boundary={boundary} must be a fraction in [0, 1]")
        guide = GuideScale(low_noise=float(guidance_low_noise), high_noise=float(guidance_high_noise))
        return (ExpertRouting(boundary=float(boundary), guide=guide),)


class Wan22MGAudioEncode:
    DESCRIPTION = ("Audio for S2V-14B (from the native LoadAudio): mixed to mono; the engine's "
                   "wav2vec2 turns it into per-frame features on the workers.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (AUDIO,)
    RETURN_NAMES = ("audio",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"audio": ("AUDIO", {"tooltip": "speech or song that drives the video"})}}

    def encode(self, audio):
        return (audio_from_comfy(audio),)
