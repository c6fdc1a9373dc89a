"""Wan22MGTextEncode, Wan22MGExpertRouter and Wan22MGAudioEncode: typed inputs of the sampler.

Text and audio are encoded by the engine on the workers (T5 and wav2vec2 live there, with
t5_fsdp / t5_cpu applied), inside the sampler's single GenerateRequest. These nodes only shape and
check the values, so nothing heavy crosses the process boundary twice.
"""
from __future__ import annotations

from wan_core.config import TASKS, GuideScale, Task
from wan_core.errors import ConfigError

from .convert import audio_from_comfy
from .types import AUDIO, EXPERTS, TEXT, ExpertRouting, SpeechInput, TextPrompt

CATEGORY = "Wan2.2 Multi-GPU"
_T2V = TASKS[Task.T2V_A14B]
_S2V = TASKS[Task.S2V_14B]


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
    DESCRIPTION = ("Audio and clip settings for S2V-14B (audio from the native LoadAudio). The video is "
                   "made clip by clip until the audio ends; the engine's wav2vec2 encodes the speech "
                   "on the workers (mixed to mono, 16 kHz, as the official pipeline).")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (AUDIO,)
    RETURN_NAMES = ("audio",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "audio": ("AUDIO", {"tooltip": "speech or song that drives the lips and the motion"}),
            "frames_per_clip": ("INT", {"default": _S2V.frame_num, "min": 4, "max": 400, "step": 4,
                                        "tooltip": "frames per clip, a multiple of 4 (official "
                                        "--infer_frames 80; 16 fps)"}),
            "max_clips": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "0 = as many clips as "
                                  "the audio needs; N = stop after N clips (--num_clip)"}),
            "start_from_ref": ("BOOLEAN", {"default": False, "tooltip": "the reference image becomes "
                                           "the first frames (--start_from_ref)"}),
        }}

    def encode(self, audio, frames_per_clip, max_clips, start_from_ref):
        from wan_core.pipeline.s2v import S2VOptions

        options = S2VOptions(infer_frames=int(frames_per_clip), num_clip=int(max_clips) or None,
                             start_from_ref=bool(start_from_ref))
        return (SpeechInput(audio=audio_from_comfy(audio), options=options),)
