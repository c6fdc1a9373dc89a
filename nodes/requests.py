"""Node inputs -> the engine's typed values (EngineSpec, GenerateRequest) and back.

Pure functions, no ComfyUI import: the node families (engine_nodes, conditioning_nodes,
sampling_nodes) call them, and tests/comfy/test_nodes.py checks them without a server.
"""
from __future__ import annotations

from wan_core.config import (TASKS, EngineSpec, GenerateRequest, ModelFacts, ModelFiles, ParallelConfig,
                             Solver, Task)
from wan_core.errors import ConfigError, InputError

from .convert import (audio_to_comfy, context_from_conditioning, image_to_engine, latent_from_comfy,
                      latent_to_comfy)
from .types import WanLatent


def parse_gpu_ids(text: str, count: int):
    """'' -> None (the first `count` visible GPUs); '2,3' -> (2, 3)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        ids = tuple(int(part) for part in text.replace(" ", "").split(",") if part != "")
    except ValueError:
        raise ConfigError(f"gpu_ids {text!r} must be comma-separated GPU numbers such as '0,1'") from None
    if len(ids) != count:
        raise ConfigError(f"gpu_ids {text!r} names {len(ids)} GPUs but gpus={count}; give one id per GPU")
    return ids


def build_spec(task: str, ckpt_dir: str, gpus: int, ulysses_size: int, cfg_parallel: bool,
               dit_fsdp: bool, t5_fsdp: bool, t5_cpu: bool, offload: str, dtype: str, attention: str,
               device: str, gpu_ids: str = "", files=None, weights: str = "auto") -> EngineSpec:
    """Widget values -> a validated EngineSpec (ConfigError names the value and the fix).

    The layout is checked as every entry point checks it (`loading.facts.validate_spec`):
    against the head count in the checkpoint's config.json (the official figure when it cannot be
    read) and the offload rules. Here, before any worker starts, and before the registry ends an
    idle group on the same GPUs to make room for a layout that would then fail."""
    from wan_core.loading.facts import read_model_facts, validate_spec

    task_ = Task.parse(task)
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"device {device!r}: choose 'cuda' or 'cpu'")
    parallel = ParallelConfig(num_gpus=int(gpus), gpu_ids=parse_gpu_ids(gpu_ids, int(gpus)),
                              ulysses_size=int(ulysses_size), cfg_parallel=bool(cfg_parallel),
                              dit_fsdp=bool(dit_fsdp), t5_fsdp=bool(t5_fsdp), t5_cpu=bool(t5_cpu),
                              offload=offload)
    spec = EngineSpec(task=task_, ckpt_dir=ckpt_dir, device=device, param_dtype=dtype,
                      parallel=parallel, attention=attention, files=files or ModelFiles(), weights=weights)
    try:
        validate_spec(spec)
    except ConfigError as exc:
        official = ModelFacts.official(task_)
        try:
            spec.validate(official)
        except ConfigError:
            raise exc from None       # wrong whatever the head count
        # Only this checkpoint's head count refuses the layout, and the widget's tooltip quotes the
        # official figures: say where the other one comes from.
        raise ConfigError(f"{exc} (this checkpoint's config.json has num_heads="
                          f"{read_model_facts(task_, ckpt_dir, spec.files).num_heads}; the official {task_.value} has "
                          f"{official.num_heads})") from None
    return spec


def build_request(task: Task, text, width, height, length, steps, shift, sampler, seed,
                  experts=None, image=None, audio=None, loras: tuple = (), *, denoise: float = 1.0,
                  positive=None, negative=None, latent=None) -> GenerateRequest:
    """Node inputs -> the engine's request (the engine validates the values against the task).

    Text: `positive` / `negative` (native CONDITIONING) replace the prompt / negative prompt of
    `text` (our Prompt node); what neither gives is the task's official negative prompt.
    `latent` (a native LATENT) is the start of a video-to-video run: its shape sets the size and
    the length, and `denoise` how much of the schedule runs."""
    spec = TASKS[task]
    if image is not None and not spec.accepts_image:
        raise InputError(f"{task.value} does not take an image; disconnect the image input or load "
                         "i2v-A14B / ti2v-5B / s2v-14B")
    if spec.needs_image and image is None:
        raise InputError(f"{task.value} needs a start image: connect a LoadImage to the sampler's image input")
    if task == Task.S2V_14B and audio is None:
        raise InputError("s2v-14B needs audio: connect LoadAudio -> Wan2.2 Multi-GPU Speech (S2V) to the sampler's audio input")
    if audio is not None and task != Task.S2V_14B:
        raise InputError(f"{task.value} does not take audio; only s2v-14B does")
    if text is None and positive is None:
        raise InputError("the sampler has no prompt: connect a Wan2.2 Multi-GPU Prompt to `text`, or a "
                         "CONDITIONING (CLIPTextEncode with the Wan umT5 text encoder) to `positive`")
    size, frames = (int(width), int(height)), None if audio is not None else int(length)
    init = None
    if latent is not None:
        if task == Task.S2V_14B:
            raise InputError("s2v-14B does not start from a latent (it makes its clips from the audio); "
                             "disconnect latent_image")
        init = latent_from_comfy(latent, spec.vae)
        _, f, h, w = init.shape
        size, frames = (w * spec.vae_stride[2], h * spec.vae_stride[1]), (f - 1) * spec.vae_stride[0] + 1
    elif float(denoise) != 1.0:
        raise InputError(f"denoise={float(denoise):g} needs a latent to start from: connect a LATENT to "
                         "latent_image (video-to-video), or set denoise to 1")
    return GenerateRequest(
        prompt=text.prompt if text is not None else "",
        neg_prompt=(text.negative or None) if text is not None else None, size=size,
        frame_num=frames,     # S2V: frames per clip are audio options
        steps=int(steps), shift=float(shift),
        guide_scale=experts.guide if experts is not None else None,
        boundary=experts.boundary if experts is not None else None,
        switch_step=getattr(experts, "switch_step", 0) or None, loras=tuple(loras),
        solver=Solver.parse(sampler), seed=int(seed),
        image=image_to_engine(image) if image is not None else None,
        audio=audio.audio if audio is not None else None,
        s2v=audio.options if audio is not None else None, decode=True,
        init_latent=init, denoise=float(denoise),
        context=context_from_conditioning(positive, "positive") if positive is not None else None,
        neg_context=context_from_conditioning(negative, "negative") if negative is not None else None)


def decode_request(task: Task, latent, loras: tuple = ()) -> GenerateRequest:
    """A native LATENT to decode on the workers: no denoising step (denoise 0), no prompt."""
    spec = TASKS[task]
    if task == Task.S2V_14B:
        raise InputError("decoding a LATENT with an s2v-14B engine is not supported: load the i2v-A14B "
                         "or t2v-A14B checkpoint (same Wan2.1 VAE), or use the native VAE Decode")
    init = latent_from_comfy(latent, spec.vae)
    _, f, h, w = init.shape
    return GenerateRequest(prompt="", size=(w * spec.vae_stride[2], h * spec.vae_stride[1]),
                           frame_num=(f - 1) * spec.vae_stride[0] + 1, init_latent=init, denoise=0.0,
                           loras=tuple(loras))    # the group's LoRAs stay as they are


def native_latent(latent: WanLatent) -> dict:
    """The sampler's result as a native LATENT (S2V: every clip, joined along the frames)."""
    result = latent.result
    clips = [result.extra_latents[k] for k in sorted(result.extra_latents, key=lambda k: int(k[4:]))] \
        if result.extra_latents else [result.latent]
    return latent_to_comfy(clips, TASKS[latent.task].vae)


def audio_for(latent: WanLatent, duration_s: float):
    """S2V: the audio the engine aligned with the first frame, cut to the video's duration."""
    track = latent.result.audio
    if track is None:
        return None
    samples, rate = (track.samples, track.sample_rate) if hasattr(track, "samples") else track
    return audio_to_comfy(samples[..., :int(round(duration_s * rate))], rate)
