"""Wan22MGSampler and Wan22MGDecode: one GenerateRequest per prompt, frames out."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from wan_core.config import TASKS, Solver, Task
from wan_core.errors import Cancelled, InputError

from . import types
from .convert import video_to_frames
from .links import node_label, require_links
from .progress import NodeProgress, previews_enabled
from .registry import REGISTRY
from .requests import audio_for, build_request
from .sockets import Engine, Experts, Result, Speech, Text, schema, tip
from .types import WanLatent

_T2V = TASKS[Task.T2V_A14B]
_W, _H = (int(v) for v in _T2V.default_size.split("*"))
MAX_SIDE = 4096


class Wan22MGSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            "Wan22MGSampler", "Wan2.2 Multi-GPU Sampler",
            "Generates one video on the worker group: encodes the text (and image/audio), denoises "
            "and decodes on the GPUs. Progress shows per step; Cancel stops every GPU at the next step.",
            ["wan sampler", "ksampler", "video sampler", "t2v", "i2v", "ti2v", "s2v", "text to video",
             "image to video"],
            inputs=[
                Engine.Input("engine", tooltip="the worker group, from the Wan2.2 Multi-GPU Model Loader"),
                Text.Input("text", tooltip="prompts, from the Wan2.2 Multi-GPU Prompt node"),
                io.Int.Input("width", default=_W, min=16, max=MAX_SIDE, step=16, tooltip=tip("GenerateRequest.width")),
                io.Int.Input("height", default=_H, min=16, max=MAX_SIDE, step=16, tooltip=tip("GenerateRequest.height")),
                io.Int.Input("length", default=_T2V.frame_num, min=1, max=1025, step=4,
                             tooltip=tip("GenerateRequest.frame_num")),
                io.Int.Input("steps", default=_T2V.sample_steps, min=1, max=1000, tooltip=tip("GenerateRequest.steps")),
                io.Float.Input("shift", default=_T2V.sample_shift, min=0.01, max=100.0, step=0.1, round=0.01,
                               tooltip=tip("GenerateRequest.shift")),
                io.Combo.Input("sampler", options=Solver, default=Solver.UNIPC, tooltip=tip("GenerateRequest.solver")),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip=tip("GenerateRequest.seed")),
                Experts.Input("experts", optional=True, tooltip="MoE routing from the Expert Router; "
                              "the task's official values when absent"),
                io.Image.Input("image", optional=True, tooltip=tip("GenerateRequest.image")),
                Speech.Input("audio", optional=True, tooltip="S2V-14B only: from the Wan2.2 Multi-GPU Speech node"),
            ],
            outputs=[Result.Output("latent", display_name="latent", tooltip="the result (final latent and "
                                   "the frames the workers decoded): connect to Wan2.2 Multi-GPU Frames")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, engine, text, width, height, length, steps, shift, sampler, seed,
                experts=None, image=None, audio=None) -> io.NodeOutput:
        require_links(lambda: node_label(cls), engine=(types.ENGINE, engine), text=(types.TEXT, text),
                      experts=(types.EXPERTS, experts), image=("IMAGE", image), audio=(types.AUDIO, audio))
        request = build_request(engine.task, text, width, height, length, steps, shift, sampler,
                                seed, experts, image, audio, loras=engine.loras)
        relay = NodeProgress(cls.hidden.unique_id if cls.hidden is not None else None,
                             want_preview=previews_enabled())
        try:
            result = REGISTRY.generate(engine.spec, request, relay.on_progress, relay.should_cancel,
                                       preview=relay.want_preview)
        except Cancelled:
            relay.raise_if_interrupted()   # -> execution_interrupted
            raise
        for text in getattr(result, "warnings", ()):    # e.g. LoRA keys that matched no layer
            logging.getLogger("wan22mg").warning("Wan2.2 Multi-GPU: %s", text)
        return io.NodeOutput(WanLatent(result=result, task=engine.task))


class Wan22MGDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            "Wan22MGDecode", "Wan2.2 Multi-GPU Frames",
            "Frames and fps of a Wan2.2 Multi-GPU Sampler result, for the native Create Video -> "
            "Save Video (S2V: the audio too). No VAE input: the workers already decoded the latent "
            "with the checkpoint's own VAE.",
            ["wan decode", "video frames", "decode"],
            inputs=[Result.Input("latent", tooltip="a Wan2.2 Multi-GPU Sampler result")],
            outputs=[io.Image.Output("frames", display_name="frames", tooltip="video frames [F, H, W, 3]"),
                     io.Float.Output("fps", display_name="fps", tooltip=tip("GenerateRequest.fps")),
                     io.Audio.Output("audio", display_name="audio",
                                     tooltip="S2V only: the driving audio, to mux into the video")],
        )

    @classmethod
    def execute(cls, latent) -> io.NodeOutput:
        require_links(lambda: node_label(cls), latent=(types.LATENT, latent))
        result = latent.result
        if result.video is None:
            raise InputError("this result was not decoded by the engine (decode=False)")
        frames = video_to_frames(result.video)
        return io.NodeOutput(frames, float(result.fps), audio_for(latent, frames.shape[0] / float(result.fps)))


NODES = [Wan22MGSampler, Wan22MGDecode]
