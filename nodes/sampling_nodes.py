"""Wan22MGSampler and Wan22MGDecode: one GenerateRequest per prompt, frames out."""
from __future__ import annotations

from wan_core.config import TASKS, GenerateRequest, Solver, Task
from wan_core.errors import Cancelled, InputError

from .convert import audio_to_comfy, image_to_engine, video_to_frames
from .progress import NodeProgress, previews_enabled
from .registry import REGISTRY
from .types import AUDIO, ENGINE, EXPERTS, LATENT, TEXT, WanLatent

CATEGORY = "Wan2.2 Multi-GPU"
_T2V = TASKS[Task.T2V_A14B]
_W, _H = (int(v) for v in _T2V.default_size.split("*"))
MAX_SIDE = 4096


def build_request(task: Task, text, width, height, length, steps, shift, sampler, seed,
                  experts=None, image=None, audio=None) -> GenerateRequest:
    """Node inputs -> the engine's request (the engine validates the values against the task)."""
    spec = TASKS[task]
    if image is not None and not spec.accepts_image:
        raise InputError(f"{task.value} does not take an image; disconnect the image input or load "
                         "i2v-A14B / ti2v-5B / s2v-14B")
    if spec.needs_image and image is None:
        raise InputError(f"{task.value} needs a start image: connect a LoadImage to the sampler's image input")
    if task == Task.S2V_14B and audio is None:
        raise InputError("s2v-14B needs audio: connect LoadAudio -> Wan22MG Audio Encode to the sampler")
    if audio is not None and task != Task.S2V_14B:
        raise InputError(f"{task.value} does not take audio; only s2v-14B does")
    return GenerateRequest(
        prompt=text.prompt, neg_prompt=text.negative or None, size=(int(width), int(height)),
        frame_num=None if audio is not None else int(length),     # S2V: frames per clip are audio options
        steps=int(steps), shift=float(shift),
        guide_scale=experts.guide if experts is not None else None,
        boundary=experts.boundary if experts is not None else None,
        solver=Solver.parse(sampler), seed=int(seed),
        image=image_to_engine(image) if image is not None else None,
        audio=audio.audio if audio is not None else None,
        s2v=audio.options if audio is not None else None, decode=True)


class Wan22MGSampler:
    DESCRIPTION = ("Generates one video on the worker group: encodes the text (and image/audio), "
                   "denoises and decodes on the GPUs. Progress shows per step; Cancel stops every "
                   "GPU at the next step.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = (LATENT,)
    RETURN_NAMES = ("latent",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "engine": (ENGINE, {}),
                "text": (TEXT, {}),
                "width": ("INT", {"default": _W, "min": 16, "max": MAX_SIDE, "step": 16,
                          "tooltip": "pixels; a multiple of 16 (TI2V-5B: 32). Image tasks keep the "
                          "image's aspect ratio within width x height"}),
                "height": ("INT", {"default": _H, "min": 16, "max": MAX_SIDE, "step": 16}),
                "length": ("INT", {"default": _T2V.frame_num, "min": 1, "max": 1025, "step": 4,
                           "tooltip": "frames, 4n+1 (official: 81 at 16 fps; TI2V-5B 121 at 24 fps). "
                           "S2V: unused, the audio's length and Audio Encode's clips decide"}),
                "steps": ("INT", {"default": _T2V.sample_steps, "min": 1, "max": 1000,
                          "tooltip": "denoising steps (official: 40; TI2V-5B 50)"}),
                "shift": ("FLOAT", {"default": _T2V.sample_shift, "min": 0.01, "max": 100.0,
                          "step": 0.1, "round": 0.01, "tooltip": "flow-matching timestep shift "
                          "(official: T2V 12, I2V 5, TI2V 5, S2V 3)"}),
                "sampler": ([s.value for s in Solver], {"default": Solver.UNIPC.value}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                         "control_after_generate": True,
                         "tooltip": "same seed, same video on 1 or 8 GPUs"}),
            },
            "optional": {
                "experts": (EXPERTS, {"tooltip": "MoE routing; task defaults when absent"}),
                "image": ("IMAGE", {"tooltip": "start image (I2V-A14B: required; TI2V-5B: optional; "
                          "S2V: the reference image)"}),
                "audio": (AUDIO, {"tooltip": "S2V-14B only: from Wan22MG Audio Encode"}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def sample(self, engine, text, width, height, length, steps, shift, sampler, seed,
               experts=None, image=None, audio=None, unique_id=None):
        request = build_request(engine.task, text, width, height, length, steps, shift, sampler,
                                seed, experts, image, audio)
        relay = NodeProgress(unique_id, want_preview=previews_enabled())
        try:
            result = REGISTRY.generate(engine.spec, request, relay.on_progress, relay.should_cancel,
                                       preview=relay.want_preview)
        except Cancelled:
            relay.raise_if_interrupted()   # -> execution_interrupted
            raise
        return (WanLatent(result=result, task=engine.task),)


class Wan22MGDecode:
    DESCRIPTION = ("Frames and fps of a Wan22MG Sampler result, for the native Create Video -> "
                   "Save Video (S2V: the audio too). The workers already decoded the latent.")
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE", "FLOAT", "AUDIO")
    RETURN_NAMES = ("frames", "fps", "audio")
    OUTPUT_TOOLTIPS = ("video frames [F, H, W, 3]", "frames per second (16; TI2V-5B 24)",
                       "S2V only: the driving audio, to mux into the video")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"latent": (LATENT, {})}}

    def decode(self, latent):
        result = latent.result
        if result.video is None:
            raise InputError("this result was not decoded by the engine (decode=False)")
        frames = video_to_frames(result.video)
        return (frames, float(result.fps), _audio_for(latent, frames.shape[0] / float(result.fps)))


def _audio_for(latent: WanLatent, duration_s: float):
    """S2V: the audio the engine aligned with the first frame, cut to the video's duration."""
    track = latent.result.audio
    if track is None:
        return None
    samples, rate = (track.samples, track.sample_rate) if hasattr(track, "samples") else track
    return audio_to_comfy(samples[..., :int(round(duration_s * rate))], rate)
