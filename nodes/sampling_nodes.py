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
from .requests import audio_for, build_request, decode_request, native_latent
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
                Text.Input("text", optional=True, tooltip="prompts, from the Wan2.2 Multi-GPU Prompt node "
                           "(or connect native CONDITIONING to positive / negative)"),
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
                # optional: API prompts saved before this widget existed still validate (1.0 = full run)
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip=tip("GenerateRequest.denoise")),
                Experts.Input("experts", optional=True, tooltip="MoE routing from the Expert Router; "
                              "the task's official values when absent"),
                io.Image.Input("image", optional=True, tooltip=tip("GenerateRequest.image")),
                Speech.Input("audio", optional=True, tooltip="S2V-14B only: from the Wan2.2 Multi-GPU Speech node"),
                io.Conditioning.Input("positive", optional=True, tooltip=tip("GenerateRequest.context")),
                io.Conditioning.Input("negative", optional=True, tooltip=tip("GenerateRequest.neg_context")),
                io.Latent.Input("latent_image", optional=True, tooltip=tip("GenerateRequest.init_latent")),
            ],
            outputs=[Result.Output("result", display_name="result", tooltip="the video (the frames the "
                                   "workers decoded, and its latent): connect to Wan2.2 Multi-GPU Frames"),
                     io.Latent.Output("latent", display_name="LATENT", tooltip="the final latent as a native "
                                      "LATENT (Wan latent format) for VAE Decode, Save Latent... S2V: every "
                                      "clip, joined along the frames")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, engine, width, height, length, steps, shift, sampler, seed, text=None,
                denoise=None, experts=None, image=None, audio=None, positive=None, negative=None,
                latent_image=None) -> io.NodeOutput:
        require_links(lambda: node_label(cls), engine=(types.ENGINE, engine), text=(types.TEXT, text),
                      experts=(types.EXPERTS, experts), image=("IMAGE", image), audio=(types.AUDIO, audio),
                      positive=("CONDITIONING", positive), negative=("CONDITIONING", negative),
                      latent_image=("LATENT", latent_image))
        request = build_request(engine.task, text, width, height, length, steps, shift, sampler,
                                seed, experts, image, audio, loras=engine.loras,
                                denoise=1.0 if denoise is None else denoise,
                                positive=positive, negative=negative, latent=latent_image)
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
        video = WanLatent(result=result, task=engine.task)
        return io.NodeOutput(video, native_latent(video))


class Wan22MGDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            "Wan22MGDecode", "Wan2.2 Multi-GPU Frames",
            "Frames and fps of a Wan2.2 Multi-GPU Sampler result, for the native Create Video -> "
            "Save Video (S2V: the audio too). No VAE input: the workers already decoded the latent "
            "with the checkpoint's own VAE. A native LATENT (with an engine) is decoded on the workers.",
            ["wan decode", "video frames", "decode"],
            inputs=[Result.Input("latent", optional=True, tooltip="a Wan2.2 Multi-GPU Sampler result"),
                    io.Latent.Input("samples", optional=True, tooltip="or a native LATENT (Wan latent "
                                    "format), decoded by the engine's VAE on the workers"),
                    Engine.Input("engine", optional=True, tooltip="the worker group that decodes `samples`")],
            hidden=[io.Hidden.unique_id],
            outputs=[io.Image.Output("frames", display_name="frames", tooltip="video frames [F, H, W, 3]"),
                     io.Float.Output("fps", display_name="fps", tooltip=tip("GenerateRequest.fps")),
                     io.Audio.Output("audio", display_name="audio",
                                     tooltip="S2V only: the driving audio, to mux into the video")],
        )

    @classmethod
    def execute(cls, latent=None, samples=None, engine=None) -> io.NodeOutput:
        require_links(lambda: node_label(cls), latent=(types.LATENT, latent), samples=("LATENT", samples),
                      engine=(types.ENGINE, engine))
        if latent is None:
            latent = _decode_on_workers(samples, engine, cls.hidden.unique_id if cls.hidden is not None else None)
        result = latent.result
        if result.video is None:
            raise InputError("this result was not decoded by the engine (decode=False)")
        frames = video_to_frames(result.video)
        return io.NodeOutput(frames, float(result.fps), audio_for(latent, frames.shape[0] / float(result.fps)))


NODES = [Wan22MGSampler, Wan22MGDecode]


def _decode_on_workers(samples, engine, node_id) -> WanLatent:
    """A native LATENT -> the engine's decoded frames (a request with no denoising step)."""
    if samples is None or engine is None:
        raise InputError("connect a Wan2.2 Multi-GPU Sampler result to `latent`, or a LATENT to `samples` "
                         "and the loader's engine to `engine`")
    relay = NodeProgress(node_id)
    try:
        result = REGISTRY.generate(engine.spec, decode_request(engine.task, samples, engine.loras), relay.on_progress,
                                   relay.should_cancel)
    except Cancelled:
        relay.raise_if_interrupted()
        raise
    return WanLatent(result=result, task=engine.task)
