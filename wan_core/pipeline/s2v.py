"""S2V-14B: the clip-by-clip run (official `WanS2V.generate`, `wan/speech2video.py`) and
its family object `S2VPipeline`. The request is resolved and checked first by `s2v_plan.resolve_s2v_request`
(defaults, reference image, audio, infer_frames, pose video: no model work); the image and pose
preprocessing lives in `s2v_media.py`, the wav2vec2 features in `s2v_audio.py`. The names other
code imports from here (`S2VOptions`, `resolve_s2v_request`, ...) are re-exported.

`run_s2v`, like the official code:
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
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..config import GenerateRequest, GenerateResult, GuideScale, TaskSpec
from ..errors import Cancelled
from ..io.audio import AudioInput, AudioTrack, speech_samples
from ..io.video import video_to_uint8
from ..loading.load_part import load_audio_encoder_part
from .denoise import DenoiseInputs, denoise, scalar_timestep
from .experts import Expert, ExpertSchedule
from .progress import Phase, RunHooks
from .s2v_audio import AudioFeatures, bucket_features, extract_features
from .s2v_media import get_size_less_than_area, pose_clips, prepare_ref_image  # first two: re-exported
from .s2v_plan import S2VOptions, S2VPlan, as_audio_input, resolve_s2v_request
from .text import prompt_contexts
from .video_tasks import Components, initial_noise

log = logging.getLogger("wan_core.s2v")

Tensor = torch.Tensor
Trace = Optional[Callable[[str, Tensor], None]]

MOTION_FRAMES = 73          # official s2v config transformer.motion_frames (19 latent frames)
DROPPED_FIRST_FRAMES = 3    # frames the first clip loses when drop_first_motion is on
REF_FRAMES_START = 6        # start_from_ref: last frames of the motion buffer set to the reference


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
    # No CFG (guidance 1): the negative prompt is never used, so it is not encoded.
    context, context_null = prompt_contexts(comp.encode_text, plan.prompt, plan.neg_prompt,
                                            plan.context, plan.neg_context, need_negative=plan.guide > 1)
    if context_null is not None:
        context_null = context_null.to(device, torch.float32)
    context = context.to(device, torch.float32)
    if trace is not None:
        trace("context", context.detach().cpu())
        if context_null is not None:
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
# The family object the engine dispatches to


class S2VPipeline:
    """The S2V-14B family (see `pipeline.families` for the contract): holds the wav2vec2 encoder."""

    s2v_dit = True
    split_decode = False  # every rank decodes each clip (the next clip's motion latents need it)

    def __init__(self, task_spec: TaskSpec, audio_encoder=None) -> None:
        self.task_spec = task_spec
        self.audio_encoder = audio_encoder
        self.load_timings: dict[str, float] = {}

    @classmethod
    def load(cls, task_spec: TaskSpec, parts, device) -> "S2VPipeline":
        """wav2vec2 (folder or single file) in float32 (the official precision) on the engine's device."""
        t0 = time.perf_counter()
        pipeline = cls(task_spec, load_audio_encoder_part(parts, device))
        pipeline.load_timings["audio_encoder"] = time.perf_counter() - t0
        return pipeline

    def plan(self, request: GenerateRequest, ulysses_size: int = 1) -> S2VPlan:
        """(The S2V DiT pads its own token sequence to ulysses_size: nothing to size here.)"""
        return resolve_s2v_request(request, self.task_spec)

    def run(self, plan: S2VPlan, comp: Components, dist, hooks: RunHooks, *, batch_cfg: bool = True,
            trace: Trace = None) -> Optional[GenerateResult]:
        """latent = the last clip's, extra_latents = every clip (`clip0`, `clip1`, ...), audio = the
        track to mux (aligned with the first frame)."""
        out = run_s2v(plan, comp, self.audio_encoder, dist, hooks, batch_cfg=batch_cfg, trace=trace)
        if dist.rank != 0:
            return None
        video = video_to_uint8(out.video) if out.video is not None else None
        extra = {f"clip{i}": lat.detach().float().cpu() for i, lat in enumerate(out.clip_latents)}
        return GenerateResult(latent=out.latent.detach().float().cpu(), video=video, fps=plan.task.fps,
                              seed=plan.seed, extra_latents=extra, audio=out.audio, timings=dict(out.timings))


__all__ = ["S2VOptions", "S2VPlan", "S2VOutput", "AudioInput", "resolve_s2v_request", "run_s2v",
           "get_size_less_than_area", "prepare_ref_image", "as_audio_input", "MOTION_FRAMES",
           "S2VPipeline"]
