"""Wan22MGTextEncode, Wan22MGExpertRouter and Wan22MGAudioEncode: typed inputs of the sampler.

Text and audio are encoded by the engine on the workers (umT5 and wav2vec2 live there, with
t5_fsdp / t5_cpu applied), inside the sampler's single GenerateRequest. These nodes only shape and
check the values, so nothing heavy crosses the process boundary twice.
"""
from __future__ import annotations

from comfy_api.latest import io

from wan_core.config import TASKS, GuideScale, Task
from wan_core.errors import ConfigError

from .convert import audio_from_comfy
from .links import node_label, require_links
from .sockets import Experts, Speech, Text, schema, tip
from .types import ExpertRouting, SpeechInput, TextPrompt

_T2V = TASKS[Task.T2V_A14B]
_S2V = TASKS[Task.S2V_14B]


class Wan22MGTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            "Wan22MGTextEncode", "Wan2.2 Multi-GPU Prompt",
            "Prompt and negative prompt for the Wan2.2 Multi-GPU Sampler. No CLIP input: the "
            "engine's own umT5 encodes them on the workers, inside the sampler's request.",
            ["wan prompt", "wan text", "text encode", "umt5", "t5"],
            inputs=[
                io.String.Input("prompt", multiline=True, dynamic_prompts=True, default="",
                                tooltip=tip("GenerateRequest.prompt")),
                io.String.Input("negative_prompt", multiline=True, dynamic_prompts=True, default="",
                                placeholder="empty = the official negative prompt",
                                tooltip=tip("GenerateRequest.neg_prompt")),
            ],
            outputs=[Text.Output("text", display_name="text")],
        )

    @classmethod
    def execute(cls, prompt, negative_prompt) -> io.NodeOutput:
        return io.NodeOutput(TextPrompt(prompt=prompt, negative=negative_prompt))


class Wan22MGExpertRouter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        low, high = _T2V.guide_scale
        return schema(
            "Wan22MGExpertRouter", "Wan2.2 Multi-GPU Expert Router",
            "MoE routing of T2V-A14B / I2V-A14B: the switch point between the high-noise and the "
            "low-noise expert, and the guidance of each. Without it the task's official values "
            "apply. Single-model tasks (TI2V-5B, S2V) ignore the boundary and need equal guidance.",
            ["moe", "boundary", "high noise", "low noise", "cfg", "guidance"],
            inputs=[
                io.Float.Input("boundary", default=_T2V.boundary, min=0.0, max=1.0, step=0.005, round=0.001,
                               tooltip=tip("GenerateRequest.boundary")),
                io.Float.Input("guidance_high_noise", default=high, min=0.0, max=50.0, step=0.1, round=0.01,
                               tooltip=tip("GuideScale.high_noise")),
                io.Float.Input("guidance_low_noise", default=low, min=0.0, max=50.0, step=0.1, round=0.01,
                               tooltip=tip("GuideScale.low_noise")),
                io.Int.Input("switch_step", default=0, min=0, max=1000, optional=True,
                             tooltip=tip("GenerateRequest.switch_step")),
            ],
            outputs=[Experts.Output("experts", display_name="experts")],
        )

    @classmethod
    def execute(cls, boundary, guidance_high_noise, guidance_low_noise, switch_step=None) -> io.NodeOutput:
        if not 0.0 <= boundary <= 1.0:
            raise ConfigError(f"boundary={boundary} must be a fraction in [0, 1]")
        guide = GuideScale(low_noise=float(guidance_low_noise), high_noise=float(guidance_high_noise))
        return io.NodeOutput(ExpertRouting(boundary=float(boundary), guide=guide,
                                           switch_step=int(switch_step or 0)))


class Wan22MGAudioEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            "Wan22MGAudioEncode", "Wan2.2 Multi-GPU Speech (S2V)",
            "Audio and clip settings for S2V-14B (audio from the native LoadAudio). The video is "
            "made clip by clip until the audio ends; the engine's wav2vec2 encodes the speech on "
            "the workers (mixed to mono, 16 kHz, as the official pipeline).",
            ["s2v", "speech to video", "audio", "wav2vec2", "lip sync"],
            inputs=[
                io.Audio.Input("audio", tooltip="speech or song that drives the lips and the motion"),
                io.Int.Input("frames_per_clip", default=_S2V.frame_num, min=4, max=400, step=4,
                             tooltip=tip("S2VOptions.infer_frames")),
                io.Int.Input("max_clips", default=0, min=0, max=1000, tooltip=tip("S2VOptions.num_clip")),
                io.Boolean.Input("start_from_ref", default=False, tooltip=tip("S2VOptions.start_from_ref")),
            ],
            outputs=[Speech.Output("audio", display_name="audio")],
        )

    @classmethod
    def execute(cls, audio, frames_per_clip, max_clips, start_from_ref) -> io.NodeOutput:
        require_links(lambda: node_label(cls), audio=("AUDIO", audio))
        from wan_core.pipeline.s2v import S2VOptions

        options = S2VOptions(infer_frames=int(frames_per_clip), num_clip=int(max_clips) or None,
                             start_from_ref=bool(start_from_ref))
        return io.NodeOutput(SpeechInput(audio=audio_from_comfy(audio), options=options))


NODES = [Wan22MGTextEncode, Wan22MGExpertRouter, Wan22MGAudioEncode]
