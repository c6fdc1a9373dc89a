"""S2V-14B: request resolution and the clip-by-clip run (official `WanS2V.generate`,
docs/wan22_reference.md §3.6).

`resolve_s2v_request` (no model work; the CLI and the nodes call it before loading) fills in the
official defaults (40 steps, shift 3, guide 4.5, 16 fps, the S2V negative prompt, infer_frames 80)
and checks every input with a message that names it: the reference image (size from max_area, a
multiple of 64 on both sides: `get_size_less_than_area`), the audio (decoded now, so a missing,
corrupt, empty, silent or too short file fails before anything loads), infer_frames (a multiple
of 4), the pose video (enough frames for every clip).

`run_s2v` then, like the official code:
1. encodes the prompt and the negative prompt; the audio through wav2vec2 (all 25 hidden states,
   50 -> 30 fps, bucketed to one feature frame per 16-fps video frame): the audio allows
   `int(T30 / (infer_frames * 30/16)) + 1` clips; `num_clip` can only lower that;
2. encodes the reference image (`ref_latents`) and a 73-frame motion buffer of zeros (mid-grey;
   with `start_from_ref` its last 6 frames are the reference image) into 19 `motion_latents`;
3. per clip r: noise from seed + r, a fresh scheduler, the DiT with the clip's audio window
   (unconditional branch: negative prompt and the audio times 0), `drop_motion_frames` on the first
   clip unless `start_from_ref`;
4. decodes the clip (first clip: reference latent + clip, last infer_frames frames, minus the first
   3; later clips: motion latents + clip, last infer_frames frames), pushes its frames into the
   motion buffer and re-encodes the buffer for the next clip.
Output: the clips concatenated (80 * clips - 3 frames at the defaults).

Initial noise: the official pipeline draws it in bf16 (param_dtype) on a CUDA generator. Here,
as for every task, it is float32 `randn` from a CPU generator seeded with seed + r, moved to the
device; latents stay float32 through the solver. That reproduces the goldens (made with float32
param_dtype) bit for bit and gives one video per seed on any device and GPU count.

Audio and video sync: the first clip drops its first 3 frames, so output frame j shows the mouth
for audio time (j + 3) / 16 s. The official code muxes the audio from 0 anyway (187 ms early);
here `GenerateResult.audio` starts 3 frames in, so the written mp4 plays in sync. The video is
trimmed to the audio's length (frames past the audio were driven by zero padding), and the mp4
writer trims the audio to the video (`io.audio.write_mp4_with_audio`).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..config import GenerateRequest, GuideScale, Solver, Task, TaskSpec, TASKS, check_sampling, parse_size
from ..errors import Cancelled, ConfigError, InputError
from ..io.audio import AudioInput, AudioTrack, check_speech, speech_samples
from .denoise import DenoiseInputs, denoise, scalar_timestep
from .experts import Expert, ExpertSchedule
from .progress import Phase, RunHooks
from .s2v_audio import AudioFeatures, bucket_features, extract_features, num_clips_for
from .video_tasks import Components, _check_seed, initial_noise

log = logging.getLogger("wan_core.s2v")

Tensor = torch.Tensor
Trace = Optional[Callable[[str, Tensor], None]]

MOTION_FRAMES = 73          # official s2v config transformer.motion_frames (19 latent frames)
DROP_FIRST_MOTION = True    # official s2v config drop_first_motion
SIZE_DIVISOR = 64
DROPPED_FIRST_FRAMES = 3    # frames the first clip loses when drop_first_motion is on
REF_FRAMES_START = 6        # start_from_ref: last frames of the motion buffer set to the reference


@dataclass(frozen=True)
class S2VOptions:
    """S2V-only settings of a request (`GenerateRequest.s2v`); official `generate.py` flags."""

    infer_frames: int = 80
    """Frames per clip, a multiple of 4 (--infer_frames)."""
    num_clip: Optional[int] = None
    """Clips to make; None = as many as the audio allows (--num_clip; can only lower that)."""
    pose_video: Optional[str] = None
    """Pose (DW-pose) video that drives the body; needs infer_frames * clips frames at 16 fps."""
    start_from_ref: bool = False
    """The reference image becomes the first frames (official init_first_frame)."""
    trim_to_audio: bool = True
    """Cut the video where the audio ends (frames past it were driven by zero audio padding)."""


# ---------------------------------------------------------------------------------------------
# Image preprocessing (official get_size_less_than_area + torchvision Resize/CenterCrop/ToTensor)


def get_size_less_than_area(height: int, width: int, target_area: int = 1024 * 704,
                            divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """Official `WanS2V.get_size_less_than_area`: the largest (H, W), multiples of 64, with
    H*W <= target_area and the image's aspect ratio (as far as the rounding allows)."""
    if height * width <= target_area:
        max_upper_area = target_area
        min_scale, max_scale = 0.1, 1.0
    else:
        max_upper_area = target_area
        d = divisor - 1
        b = d * (height + width)
        a = height * width
        c = d ** 2 - max_upper_area
        min_scale = (-b + math.sqrt(b ** 2 - 2 * a * c)) / (2 * a)
        max_scale = math.sqrt(max_upper_area / (height * width))
    for i in range(100):
        scale = max_scale - (max_scale - min_scale) * i / 100
        new_h, new_w = int(height * scale), int(width * scale)
        pad_h = (64 - new_h % 64) % 64
        pad_w = (64 - new_w % 64) % 64
        ph, pw = new_h + pad_h, new_w + pad_w
        if ph * pw <= max_upper_area:
            return ph, pw
    ar = width / height
    tw = int((target_area * ar) ** 0.5 // divisor * divisor)
    th = int((target_area / ar) ** 0.5 // divisor * divisor)
    if tw >= width or th >= height:
        tw = int(width // divisor * divisor)
        th = int(height // divisor * divisor)
    return th, tw


def _resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision `Resize(int)`: the shorter side becomes `size`, the other int(size * long / short)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def center_crop(x: Tensor, out_h: int, out_w: int, fill: float = 0.0) -> Tensor:
    """torchvision `CenterCrop((h, w))` on [..., H, W] (padded with `fill` when the crop is larger)."""
    h, w = x.shape[-2:]
    if out_h > h or out_w > w:
        pl, pt = (out_w - w) // 2 if out_w > w else 0, (out_h - h) // 2 if out_h > h else 0
        pr, pb = (out_w - w + 1) // 2 if out_w > w else 0, (out_h - h + 1) // 2 if out_h > h else 0
        x = F.pad(x, (pl, pr, pt, pb), value=fill)
        h, w = x.shape[-2:]
        if out_h == h and out_w == w:
            return x
    top = int(round((h - out_h) / 2.0))
    left = int(round((w - out_w) / 2.0))
    return x[..., top:top + out_h, left:left + out_w]


def prepare_ref_image(image: Tensor, height: int, width: int) -> Tensor:
    """[3, H0, W0] in [0, 1] -> [3, height, width] in [-1, 1]: PIL bilinear Resize(min(h, w)),
    CenterCrop, ToTensor * 2 - 1 (the official order)."""
    from PIL import Image

    from ..io.images import pil_to_tensor, tensor_to_pil

    pil = tensor_to_pil(image)
    w0, h0 = pil.size
    nh, nw = _resized_size(h0, w0, min(height, width))
    if (nh, nw) != (h0, w0):
        pil = pil.resize((nw, nh), Image.BILINEAR)
    t = center_crop(pil_to_tensor(pil), height, width, fill=0.0)
    return t * 2 - 1.0


# ---------------------------------------------------------------------------------------------
# Pose video (PyAV instead of decord)


@dataclass
class PoseInfo:
    fps: float
    total_frames: int
    interval: int

    @property
    def usable_frames(self) -> int:
        """Frames the official sampling (every `interval`-th from the start) yields."""
        return (self.total_frames - 1) // self.interval + 1 if self.total_frames else 0


def _open_video(path: str):
    import av

    p = Path(path)
    if not p.is_file():
        raise InputError(f"pose video {path!r} does not exist")
    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, ValueError) as exc:
        raise InputError(f"cannot read pose video {path!r} ({exc}); give an mp4/webm/mov video") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"pose video {path!r} has no video stream")
    return container


def probe_pose_video(path: str, target_fps: int = 16) -> PoseInfo:
    """Frame count and rate of a pose video, and the official sampling interval round(fps / 16)."""
    import av

    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else float(target_fps)
        try:
            total = sum(1 for _ in container.decode(stream))
        except av.error.FFmpegError as exc:
            raise InputError(f"pose video {path!r} is corrupt ({exc})") from None
    finally:
        container.close()
    return PoseInfo(fps=fps, total_frames=total, interval=max(1, round(fps / target_fps)))


def iter_pose_frames(path: str, n_frames: int, target_fps: int = 16):
    """Official `read_last_n_frames(..., reverse=True)` as a stream: frames 0, k, 2k, ...
    (k = round(fps / 16)), at most n_frames, each uint8 [H, W, 3] (decord -> PyAV)."""
    import av

    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else float(target_fps)
        interval = max(1, round(fps / target_fps))
        taken = 0
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i % interval == 0:
                    yield frame.to_ndarray(format="rgb24")
                    taken += 1
                    if taken >= n_frames:
                        break
        except av.error.FFmpegError as exc:
            raise InputError(f"pose video {path!r} is corrupt ({exc})") from None
    finally:
        container.close()


def read_pose_frames(path: str, n_frames: int, target_fps: int = 16) -> np.ndarray:
    """`iter_pose_frames` collected: uint8 [N, H, W, 3]."""
    out = list(iter_pose_frames(path, n_frames, target_fps))
    if not out:
        raise InputError(f"pose video {path!r} has no frames")
    return np.stack(out)


def pose_clips(path: str, clips: int, infer_frames: int, height: int, width: int, target_fps: int = 16):
    """Yield each clip's pose frames [1, 3, infer_frames, H, W] in [-1, 1], decoding the video as it
    goes (at most one clip of frames in memory)."""
    frames = iter_pose_frames(path, clips * infer_frames, target_fps)
    for r in range(clips):
        chunk = [f for _, f in zip(range(infer_frames), frames)]
        if len(chunk) < infer_frames:   # the plan counted enough frames; a damaged file decodes fewer
            raise InputError(f"pose video {path!r} decoded to {r * infer_frames + len(chunk)} frames at "
                             f"{target_fps} fps; {clips * infer_frames} are needed")
        yield prepare_pose(np.stack(chunk), height, width)


def prepare_pose(frames: np.ndarray, height: int, width: int) -> Tensor:
    """uint8 [N, H0, W0, 3] -> [1, 3, N, height, width] in [-1, 1] (torchvision tensor Resize with
    antialias, CenterCrop), as the official `load_pose_cond`."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0 * 2 - 1.0
    h0, w0 = x.shape[-2:]
    nh, nw = _resized_size(h0, w0, min(height, width))
    if (nh, nw) != (h0, w0):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    x = center_crop(x, height, width, fill=0.0)
    return x.permute(1, 0, 2, 3)[None]


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

    @property
    def infer_frames(self) -> int:
        return self.options.infer_frames

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (16, self.infer_frames // 4, self.height // 8, self.width // 8)

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
    g = GuideScale.parse(request.guide_scale) if request.guide_scale is not None else GuideScale(*spec.guide_scale)
    if g.low_noise != g.high_noise:
        raise ConfigError(f"s2v-14B has a single model; give one guide scale, not {g.low_noise},{g.high_noise}")
    check_sampling(steps, shift, g)
    if request.boundary is not None:
        warnings.append(f"boundary={request.boundary} ignored: s2v-14B has a single model")
    solver = Solver.parse(request.solver)
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
                   pose=pose, decode=bool(request.decode), warnings=tuple(warnings))


# ---------------------------------------------------------------------------------------------
# The run


class _ClipModel:
    """The S2V DiT with one clip's conditioning, called by the shared denoise loop as a DiT.

    A batch (cond, uncond) gets the clip's audio and the audio times 0; with CFG parallelism each
    rank gets one context: the negative prompt's (by identity) gets the zero audio."""

    def __init__(self, model, context_null: Tensor, ref: Tensor, motion: Tensor, cond: Optional[Tensor],
                 audio: Tensor, drop_motion: bool) -> None:
        self.model, self.context_null = model, context_null
        self.ref, self.motion, self.cond, self.drop = ref, motion, cond, drop_motion
        self.audio = audio

    def __call__(self, x: Tensor, t: Tensor, contexts, seq_len=None, y=None) -> Tensor:
        audio = torch.cat([self.audio * 0 if c is self.context_null else self.audio for c in contexts])
        return self.model(x, t.reshape(-1), contexts, self.ref, self.motion, self.cond, audio,
                          motion_frames=(MOTION_FRAMES, (MOTION_FRAMES + 3) // 4),
                          drop_motion_frames=self.drop)


class _ClipProvider:
    def __init__(self, models, clip_model_args) -> None:
        self.models, self.args = models, clip_model_args

    def get(self, expert: Expert):
        return _ClipModel(self.models.get(expert), *self.args)


def _trace_for_clip(trace: Trace, offset: int, clip: int) -> Trace:
    """Rename the denoise loop's names to the golden's: calls numbered across clips, module
    'noise_model' (the official attribute), the first noise only as call00_x_in."""
    if trace is None:
        return None

    def inner(name: str, value: Tensor) -> None:
        if name == "call00_x_in":
            trace(name if clip == 0 else f"clip{clip}_x_in", value)
        elif name.startswith("call"):
            num, _, rest = name[4:].partition("_")
            rest = rest.replace("model_", "noise_model_", 1) if rest.startswith("model_") else rest
            trace(f"call{int(num) + offset:02d}_{rest}", value)
        else:
            trace(name, value)

    return inner


@dataclass
class S2VOutput:
    latent: Tensor                   # last clip [16, f, h, w] float32
    clip_latents: list               # every clip's latent
    video: Optional[Tensor]          # [3, F, H, W] in [-1, 1] (trimmed to the audio), or None
    audio: AudioTrack                # the audio to mux, aligned with the video's first frame
    timings: dict


def _audio_features(encoder, plan: S2VPlan, device) -> AudioFeatures:
    samples = speech_samples(plan.audio)
    use_cuda = torch.device(device).type == "cuda"
    ctx = torch.backends.cudnn.flags(enabled=True, allow_tf32=False) if use_cuda else contextlib.nullcontext()
    prev = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False      # the official encoder runs in true fp32
        with ctx:
            feat = extract_features(encoder, samples)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return bucket_features(feat, plan.infer_frames, plan.task.fps, plan.audio.duration_s)


def run_s2v(plan: S2VPlan, comp: Components, audio_encoder, dist, hooks: RunHooks, *,
            batch_cfg: bool = True, trace: Trace = None) -> S2VOutput:
    """Encode, then make the clips one after the other (every rank decodes: the next clip's
    motion latents come from the decoded frames)."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    device = comp.device
    fps = plan.task.fps
    nf = plan.infer_frames
    if dist.agree_stop(hooks.stop_requested()):
        raise Cancelled(0)

    hooks.report(Phase.ENCODE, 0, 3, start, "encoding the prompt")
    context, context_null = comp.encode_text([plan.prompt, plan.neg_prompt])
    context = context.to(device, torch.float32)
    context_null = context_null.to(device, torch.float32)
    if trace is not None:
        trace("context", context.detach().cpu())
        trace("context_null", context_null.detach().cpu())

    hooks.report(Phase.ENCODE, 1, 3, start, "encoding the audio")
    t0 = time.perf_counter()
    feats = _audio_features(audio_encoder, plan, device)
    timings["audio"] = time.perf_counter() - t0
    clips = min(plan.clips, feats.clips)
    if trace is not None:
        trace("audio_embed", feats.embed.detach().cpu())
    audio_emb = feats.embed.to(device)

    hooks.report(Phase.ENCODE, 2, 3, start, "encoding the reference image")
    h, w = plan.height, plan.width
    with torch.no_grad():
        ref_px = plan.ref_pixels[None, :, None].to(device)                          # [1, 3, 1, H, W]
        ref_latents = comp.vae_encode(ref_px).float()
        buffer = torch.zeros(1, 3, MOTION_FRAMES, h, w, device=device)
        if plan.options.start_from_ref:
            buffer[:, :, -REF_FRAMES_START:] = ref_px
        # With drop_first_motion the first clip uses neither the motion tokens nor the motion
        # latents (it decodes after the reference latent): the official encode of the initial
        # buffer is skipped, the result is the same.
        motion_latents = None if plan.drop_first_motion else comp.vae_encode(buffer).float()
        if trace is not None and motion_latents is not None:
            trace("motion_latents0", motion_latents[0].detach().cpu())
        conds: list[Optional[Tensor]] = [None] * clips
        if plan.options.pose_video is not None:
            # Official load_pose_cond: each clip's first frame is duplicated before encoding and
            # the first latent dropped.
            for r, part in enumerate(pose_clips(str(plan.options.pose_video), clips, nf, h, w, fps)):
                part = torch.cat([part[:, :, :1], part], dim=2).to(device)
                conds[r] = comp.vae_encode(part)[:, :, 1:].float()
                if trace is not None:
                    trace(f"pose_latent{r}", conds[r][0].detach().cpu())
    timings[Phase.ENCODE] = time.perf_counter() - start
    hooks.report(Phase.ENCODE, 3, 3, start, "inputs encoded")

    guide = plan.guide if plan.guide > 1 else 1.0     # official: CFG only when guide_scale > 1
    schedule = ExpertSchedule(guide=GuideScale(guide, guide), boundary=None)
    drop_first = plan.drop_first_motion
    out_frames: list[Tensor] = []
    clip_latents: list[Tensor] = []
    lat_shape = plan.latent_shape
    decode_calls = 0
    t_denoise = 0.0
    t_decode = 0.0
    for r in range(clips):
        t0 = time.perf_counter()
        noise = initial_noise(lat_shape, plan.seed + r, device)
        scheduler = comp.make_scheduler(plan.solver, plan.steps, plan.shift)
        drop = drop_first and r == 0
        motion_in = motion_latents if motion_latents is not None else ref_latents[:, :, :0]   # dropped anyway
        provider = _ClipProvider(comp.models, (context_null, ref_latents, motion_in, conds[r],
                                               audio_emb[..., r * nf:(r + 1) * nf], drop))
        inputs = DenoiseInputs(latent=noise, context=context, context_null=context_null,
                               seq_len=0, schedule=schedule, timestep_input=scalar_timestep(device))
        clip_hooks = _ClipHooks(hooks, r, clips)
        latent = denoise(provider, scheduler, inputs, dist, clip_hooks, batch_cfg=batch_cfg,
                         trace=_trace_for_clip(trace, 2 * plan.steps * r if guide > 1 else plan.steps * r, r))
        clip_latents.append(latent.detach().float())
        t_denoise += time.perf_counter() - t0

        last = r == clips - 1
        if last and not plan.decode:
            break
        if dist.agree_stop(hooks.stop_requested()):
            raise Cancelled(plan.steps * (r + 1))
        t0 = time.perf_counter()
        hooks.report(Phase.DECODE, r, clips, t0, f"decoding clip {r + 1}/{clips}")
        with torch.no_grad():
            head = ref_latents if drop else motion_latents
            dec_in = torch.cat([head, latent[None].float()], dim=2)
            if trace is not None:
                trace(f"vae_decode_in{decode_calls}", dec_in[0].detach().cpu())
            decode_calls += 1
            image = comp.vae_decode(dec_in).float()[:, :, -nf:]
            if drop:
                image = image[:, :, DROPPED_FIRST_FRAMES:]
            out_frames.append(image[0].cpu())
            if not last:
                n = min(MOTION_FRAMES, image.shape[2])
                buffer = torch.cat([buffer[:, :, n:], image[:, :, -n:]], dim=2)
                motion_latents = comp.vae_encode(buffer).float()
        t_decode += time.perf_counter() - t0
    timings[Phase.DENOISE] = t_denoise
    timings[Phase.DECODE] = t_decode

    offset_s = DROPPED_FIRST_FRAMES / fps if drop_first else 0.0
    audio = plan.audio.slice_s(offset_s)
    video = None
    if plan.decode:
        video = torch.cat(out_frames, dim=1)
        if plan.options.trim_to_audio:
            keep = max(1, math.ceil(audio.duration_s * fps - 1e-6))
            video = video[:, :keep]
        if trace is not None:
            trace("video", video.detach().cpu())
    return S2VOutput(latent=clip_latents[-1], clip_latents=clip_latents, video=video, audio=audio,
                     timings=timings)


class _ClipHooks(RunHooks):
    """Progress of one clip's denoise reported as steps of the whole video."""

    def __init__(self, hooks: RunHooks, clip: int, clips: int) -> None:
        self._hooks, self._clip, self._clips = hooks, clip, clips
        self.want_preview = hooks.want_preview

    def report(self, phase: str, step: int, total: int, start: float, message: str = "",
               preview=None) -> None:
        if phase == Phase.DENOISE:
            self._hooks.report(phase, self._clip * total + step, self._clips * total, start,
                               f"clip {self._clip + 1}/{self._clips}, {message}", preview)
        else:
            self._hooks.report(phase, step, total, start, message, preview)

    def stop_requested(self) -> bool:
        return self._hooks.stop_requested()


# ---------------------------------------------------------------------------------------------
# Engine glue (pipeline/engine.py calls these for s2v-14B)


def check_s2v_checkpoint(ckpt_dir) -> None:
    """The S2V folder's extra part: `wav2vec2-large-xlsr-53-english/` with config.json and weights."""
    from ..errors import CheckpointError
    from ..models.wav2vec2 import FOLDER_NAME, LAYOUT

    folder = Path(ckpt_dir) / FOLDER_NAME
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder / 'config.json'} is missing; {LAYOUT}")
    if not any((folder / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        raise CheckpointError(f"{folder} has neither model.safetensors nor pytorch_model.bin; {LAYOUT}")


def plan_for_engine(engine, request: GenerateRequest) -> S2VPlan:
    """`WanEngine.plan` for s2v-14B (random seeds agreed across ranks)."""
    plan = resolve_s2v_request(request, engine.task_spec)
    if engine.spec.parallel.cfg_parallel:
        from ..distributed.cfg_parallel import validate_guidance

        validate_guidance(True, GuideScale(plan.guide, plan.guide))
    if request.seed is not None and request.seed < 0 and engine.dist.world_size > 1:
        plan = replace(plan, seed=engine.dist.broadcast_object(plan.seed))
    return plan


def generate_for_engine(engine, request: GenerateRequest, hooks: RunHooks, trace: Trace = None):
    """`WanEngine.generate` for s2v-14B: latent = the last clip's, extra_latents = every clip
    (`clip0`, `clip1`, ...), audio = the track to mux (aligned with the first frame)."""
    from ..config import GenerateResult
    from ..io.video import video_to_uint8

    plan = plan_for_engine(engine, request)
    for text in plan.warnings:
        log.warning(text)
    out = run_s2v(plan, engine.components(), engine.audio_encoder, engine.dist, hooks,
                  batch_cfg=engine.batch_cfg, trace=trace)
    if engine.dist.rank != 0:
        return None
    video = video_to_uint8(out.video) if out.video is not None else None
    extra = {f"clip{i}": lat.detach().float().cpu() for i, lat in enumerate(out.clip_latents)}
    return GenerateResult(latent=out.latent.detach().float().cpu(), video=video, fps=plan.task.fps,
                          seed=plan.seed, extra_latents=extra, audio=out.audio, timings=dict(out.timings))


__all__ = ["S2VOptions", "S2VPlan", "S2VOutput", "AudioInput", "resolve_s2v_request", "run_s2v",
           "get_size_less_than_area", "prepare_ref_image", "as_audio_input", "MOTION_FRAMES",
           "check_s2v_checkpoint", "plan_for_engine", "generate_for_engine"]
