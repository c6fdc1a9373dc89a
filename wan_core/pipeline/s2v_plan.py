"""S2V-14B request resolution (no model work; the CLI and the nodes call it before loading).

`resolve_s2v_request` fills in the official defaults (40 steps, shift 3, guide 4.5, 16 fps, the
S2V negative prompt, infer_frames 80) and checks every input with a message that names it: the
reference image (size from max_area, a multiple of 64 on both sides: `get_size_less_than_area`),
the audio (decoded now, so a missing, corrupt, empty, silent or too short file fails before
anything loads), infer_frames (a multiple of 4), the pose video (enough frames for every clip).
The result is an `S2VPlan`, which `s2v.run_s2v` runs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from ..config import (GenerateRequest, GuideScale, S2VOptions, Solver, Task, TaskSpec, TASKS, check_sampling,
                      parse_size)
from ..errors import ConfigError, InputError
from ..io.audio import AudioInput, AudioTrack, check_speech
from .s2v_audio import num_clips_for
from .s2v_media import SIZE_DIVISOR, PoseInfo, get_size_less_than_area, prepare_ref_image, probe_pose_video
from .video_tasks import _check_seed

Tensor = torch.Tensor

DROP_FIRST_MOTION = True    # official s2v config drop_first_motion


# ---------------------------------------------------------------------------------------------
# Request resolution


def as_audio_input(audio) -> AudioInput:
    """GenerateRequest.audio -> AudioInput: an AudioInput, a file path, or any object with
    `waveform` ([n] or [channels, n]) and `sample_rate` (e.g. the ComfyUI nodes' AudioClip)."""
    if isinstance(audio, AudioInput):
        return audio
    if isinstance(audio, (str, os.PathLike)):
        return AudioInput(path=os.fspath(audio))
    if hasattr(audio, "waveform") and hasattr(audio, "sample_rate"):
        return AudioInput(waveform=audio.waveform, sample_rate=int(audio.sample_rate))
    raise InputError(f"s2v-14B needs audio (a file path or a waveform with its sample_rate), got "
                     f"{type(audio).__name__}")


@dataclass(frozen=True)
class S2VPlan:
    """A resolved and validated S2V request."""

    task: TaskSpec
    prompt: str
    neg_prompt: str
    width: int
    height: int
    ref_pixels: Tensor               # [3, H, W] in [-1, 1]
    audio: AudioTrack
    options: S2VOptions
    clips: int                       # clips to make (audio allowance, lowered by num_clip)
    steps: int
    shift: float
    guide: float
    solver: Solver
    seed: int
    pose: Optional[PoseInfo] = None
    decode: bool = True
    warnings: tuple[str, ...] = field(default_factory=tuple)
    context: Optional[Tensor] = None          # precomputed prompt embeddings (ComfyUI CONDITIONING)
    neg_context: Optional[Tensor] = None

    @property
    def infer_frames(self) -> int:
        return self.options.infer_frames

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (16, self.infer_frames // 4, self.height // 8, self.width // 8)

    @property
    def guide_scale(self) -> GuideScale:
        return GuideScale(self.guide, self.guide)

    @property
    def drop_first_motion(self) -> bool:
        return DROP_FIRST_MOTION and not self.options.start_from_ref

    @property
    def tokens(self) -> int:
        """Self-attention sequence length of one DiT call (video + reference + frame-pack motion)."""
        _, f, h, w = self.latent_shape
        video, ref = f * (h // 2) * (w // 2), (h // 2) * (w // 2)
        motion = (h // 2) * (w // 2) + (h // 4) * (w // 4) + 4 * (h // 8) * (w // 8)
        return video + ref + motion


def _audio_clips(track: AudioTrack, infer_frames: int, fps: int) -> int:
    """Clips the audio allows, computed from its length like the official bucketing (XLSR conv
    stack: 320 samples per 50-fps frame; T30 = int(T50 / 50 * 30))."""
    n = int(round(track.duration_s * 16000))
    t50 = n
    for k, s in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)):
        t50 = (t50 - k) // s + 1
    t30 = int(max(t50, 0) / 50 * 30)
    return num_clips_for(t30, infer_frames, fps)


def resolve_s2v_request(request: GenerateRequest, spec: Optional[TaskSpec] = None) -> S2VPlan:
    """Fill in the S2V defaults and validate every input; raise ConfigError / InputError."""
    if request.init_latent is not None or request.denoise != 1.0:
        raise InputError("s2v-14B does not start from an input latent (it makes its clips from the audio); "
                         "disconnect the latent input and set denoise to 1")
    spec = spec or TASKS[Task.S2V_14B]
    warnings: list[str] = []
    if not isinstance(request.prompt, str):
        raise InputError(f"prompt must be a string, got {type(request.prompt).__name__}")
    neg = request.neg_prompt if request.neg_prompt else spec.neg_prompt

    opts = request.s2v
    if opts is None:
        opts = S2VOptions(infer_frames=int(request.frame_num)) if request.frame_num is not None else S2VOptions()
    elif not isinstance(opts, S2VOptions):
        raise ConfigError(f"GenerateRequest.s2v must be an S2VOptions, got {type(opts).__name__}")
    elif request.frame_num is not None and int(request.frame_num) != opts.infer_frames:
        warnings.append(f"frame_num={request.frame_num} ignored: S2V makes clips of infer_frames="
                        f"{opts.infer_frames} frames")
    f = opts.infer_frames
    if isinstance(f, bool) or not isinstance(f, int) or f < 4 or f % 4:
        lower = max(4, int(f) // 4 * 4) if isinstance(f, (int, float)) else 80
        raise ConfigError(f"infer_frames={f!r} must be a positive multiple of 4 (frames per clip; "
                          f"official 80); use {lower} or {lower + 4}")
    if opts.num_clip is not None and (isinstance(opts.num_clip, bool) or not isinstance(opts.num_clip, int)
                                      or opts.num_clip < 1):
        raise ConfigError(f"num_clip={opts.num_clip!r} must be a positive integer (or unset: as many "
                          "clips as the audio allows)")

    size = request.size if request.size is not None else parse_size(spec.default_size)
    if isinstance(size, str):
        size = parse_size(size)
    max_area = int(size[0]) * int(size[1])
    if max_area < SIZE_DIVISOR * SIZE_DIVISOR:
        raise ConfigError(f"size {size[0]}*{size[1]} is too small for s2v-14B: the area must hold at "
                          f"least one {SIZE_DIVISOR}x{SIZE_DIVISOR} block (official: 1024*704)")

    steps = spec.sample_steps if request.steps is None else int(request.steps)
    shift = spec.sample_shift if request.shift is None else float(request.shift)
    g = request.guide_scale if request.guide_scale is not None else GuideScale(*spec.guide_scale)
    if g.low_noise != g.high_noise:
        raise ConfigError(f"s2v-14B has a single model; give one guide scale, not {g.low_noise},{g.high_noise}")
    check_sampling(steps, shift, g)
    if request.boundary is not None:
        warnings.append(f"boundary={request.boundary} ignored: s2v-14B has a single model")
    solver = request.solver
    seed = _check_seed(request.seed)

    image = request.image
    if image is None:
        raise InputError("s2v-14B needs a reference image (--image FILE)")
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise InputError(f"the reference image must be a tensor [3, H, W] in [0, 1], got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    h0, w0 = int(image.shape[1]), int(image.shape[2])
    height, width = get_size_less_than_area(h0, w0, max_area, SIZE_DIVISOR)
    if height < SIZE_DIVISOR or width < SIZE_DIVISOR:
        raise InputError(f"the reference image ({w0}x{h0}) gives an output of {width}x{height}; S2V needs "
                         f"at least {SIZE_DIVISOR} pixels per side: use a less elongated image or a larger size")
    ref = prepare_ref_image(image, height, width)

    if request.audio is None:
        raise InputError("s2v-14B needs an audio file (--audio FILE): speech or singing that drives the face")
    audio_in = as_audio_input(request.audio)
    track = audio_in.load()
    fps = spec.fps
    check_speech(track)
    if track.duration_s + 1e-9 < (f - 1) / fps:   # one frame of slack: the last frame's audio
        fit = max(4, int(track.duration_s * fps + 1) // 4 * 4)
        raise InputError(
            f"audio {audio_in.name} lasts {track.duration_s:.2f} s, shorter than one clip of "
            f"infer_frames={f} frames at {fps} fps ({f / fps:.2f} s); give a longer audio or lower "
            f"--infer_frames (a multiple of 4, at most {fit} for this audio)")
    allowed = _audio_clips(track, f, fps)
    clips = allowed
    if opts.num_clip is not None:
        if opts.num_clip > allowed:
            warnings.append(f"num_clip={opts.num_clip} lowered to {allowed}: the {track.duration_s:.2f} s "
                            f"audio is enough for {allowed} clip(s) of {f} frames")
        clips = min(opts.num_clip, allowed)

    pose = None
    if opts.pose_video is not None:
        pose = probe_pose_video(str(opts.pose_video), fps)
        need = f * clips
        if pose.usable_frames < need:
            raise InputError(
                f"pose video {str(opts.pose_video)!r} has {pose.total_frames} frames at {pose.fps:g} fps, "
                f"which gives {pose.usable_frames} frames at {fps} fps (every {pose.interval}), but "
                f"{clips} clip(s) of {f} frames need {need}; give a longer pose video or set --num_clip "
                f"{max(1, pose.usable_frames // f)}" + ("" if pose.usable_frames >= f else
                                                        " (it is shorter than one clip: lower --infer_frames)"))

    return S2VPlan(task=spec, prompt=request.prompt, neg_prompt=neg, width=width, height=height,
                   ref_pixels=ref, audio=track, options=replace(opts, pose_video=opts.pose_video),
                   clips=clips, steps=steps, shift=shift, guide=g.low_noise, solver=solver, seed=seed,
                   pose=pose, decode=bool(request.decode), warnings=tuple(warnings),
                   context=request.context, neg_context=request.neg_context)
