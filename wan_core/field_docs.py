"""One user-facing description per setting of config.py, the single source of node tooltips.

Keys are `Dataclass.field` of config.py (plus a few request-level names). Each entry says what the
setting does, never its value: defaults and official figures are read from `TASKS` and appended by
`describe()`, so a changed default can never leave a stale sentence behind. Inputs that exist only
in the ComfyUI layer (sockets, the checkpoint list) describe themselves in their node schema.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Callable, Optional

from .config import TASKS, EngineSpec, GenerateRequest, Task, TaskSpec


@dataclass(frozen=True)
class FieldDoc:
    text: str
    per_task: Optional[Callable[[TaskSpec], object]] = None   # the task's official figure
    label: str = "official"                                   # how that figure is introduced


def _default(cls, name: str) -> Callable[[TaskSpec], object]:
    """The dataclass default, the same for every task (an enum shows its value)."""
    value = next(f.default for f in fields(cls) if f.name == name and f.default is not MISSING)
    return lambda spec: getattr(value, "value", value)


def _size(spec: TaskSpec) -> str:
    return spec.default_size.replace("*", "x")


FIELDS: dict[str, FieldDoc] = {
    # EngineSpec
    "EngineSpec.task": FieldDoc("which Wan2.2 model the checkpoint holds"),
    "EngineSpec.param_dtype": FieldDoc("dtype of the weights on the GPUs", _default(EngineSpec, "param_dtype")),
    "EngineSpec.attention": FieldDoc("attention kernel; auto tries FlashAttention 3, 4, 2, then PyTorch SDPA"),
    "EngineSpec.weights": FieldDoc(
        "auto: keep what the files hold (fp8 files stay fp8); bf16/fp16/fp32: cast at load; fp8: the big "
        "linears in fp8 with per-tensor scales (half the memory of bf16); fp8_fast: also fp8 matmuls on "
        "GPUs of compute capability 8.9+ (falls back to fp8 elsewhere)"),
    # ModelFiles (single files in ComfyUI's folders; each replaces that part of the checkpoint)
    "ModelFiles.dit_high_noise": FieldDoc("A14B high-noise expert from models/diffusion_models (or unet)"),
    "ModelFiles.dit_low_noise": FieldDoc("A14B low-noise expert from models/diffusion_models (or unet)"),
    "ModelFiles.dit": FieldDoc("TI2V-5B / S2V-14B model from models/diffusion_models (or unet)"),
    "ModelFiles.text_encoder": FieldDoc("umT5-XXL from models/text_encoders (or clip), e.g. "
                                        "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
    "ModelFiles.vae": FieldDoc("Wan VAE from models/vae: wan_2.1_vae (A14B, S2V) or wan2.2_vae (TI2V-5B)"),
    "ModelFiles.audio_encoder": FieldDoc("S2V wav2vec2 from models/audio_encoders "
                                         "(wav2vec2_large_english_fp16.safetensors)"),
    "EngineSpec.device": FieldDoc("cuda: GPUs; cpu: CPU ranks joined by gloo (tests and tiny models)"),
    # ParallelConfig
    "ParallelConfig.num_gpus": FieldDoc("worker processes, one per GPU (gloo ranks when device is cpu)"),
    "ParallelConfig.gpu_ids": FieldDoc("which GPUs, e.g. '2,3'; empty = the first `gpus` GPUs visible to ComfyUI"),
    "ParallelConfig.ulysses_size": FieldDoc(
        "sequence-parallel degree (DeepSpeed-Ulysses); gpus = ulysses_size x (2 with cfg_parallel); "
        "it must divide the model's attention heads", lambda s: s.num_heads, "heads"),
    "ParallelConfig.cfg_parallel": FieldDoc(
        "prompt and negative prompt on different GPUs (halves the Ulysses degree; needs guidance > 1)"),
    "ParallelConfig.dit_fsdp": FieldDoc("shard the DiT weights over the GPUs (FSDP2): each GPU holds 1/N "
                                        "of every expert"),
    "ParallelConfig.t5_fsdp": FieldDoc("shard the umT5 text encoder over the GPUs (FSDP2)"),
    "ParallelConfig.t5_cpu": FieldDoc("run the umT5 text encoder on the CPU (saves ~11 GB per GPU)"),
    "ParallelConfig.offload": FieldDoc(
        "none: all weights on the GPU; experts: the idle MoE expert waits in CPU memory; blocks: "
        "stream the blocks from CPU memory (smallest, slowest). Not with dit_fsdp"),
    # GenerateRequest
    "GenerateRequest.prompt": FieldDoc("what the video shows"),
    "GenerateRequest.neg_prompt": FieldDoc("what to avoid; empty = the task's official (Chinese) negative prompt"),
    "GenerateRequest.width": FieldDoc(
        "width in pixels, a multiple of 16 (TI2V-5B: 32); image tasks keep the image's aspect ratio "
        "within width x height", _size, "official size"),
    "GenerateRequest.height": FieldDoc("height in pixels, a multiple of 16 (TI2V-5B: 32)", _size, "official size"),
    "GenerateRequest.frame_num": FieldDoc(
        "frames, 4n+1; S2V: unused (the audio and the clip settings decide)",
        lambda s: None if s.task == Task.S2V_14B else s.frame_num),
    "GenerateRequest.fps": FieldDoc("frames per second of the video", lambda s: s.fps),
    "GenerateRequest.steps": FieldDoc("denoising steps", lambda s: s.sample_steps),
    "GenerateRequest.shift": FieldDoc("flow-matching timestep shift", lambda s: s.sample_shift),
    "GenerateRequest.solver": FieldDoc("the sampler (ODE solver) of the denoising loop", _default(GenerateRequest, "solver")),
    "GenerateRequest.seed": FieldDoc("noise seed: the same seed gives the same video on 1 or 8 GPUs"),
    "GenerateRequest.boundary": FieldDoc(
        "MoE switch point as a fraction of the 1000 train timesteps: steps at or above boundary x 1000 "
        "run the high-noise expert (0: high-noise expert only, 1: low-noise only)",
        lambda s: s.boundary if s.moe else None),
    "GenerateRequest.switch_step": FieldDoc(
        "MoE switch by step index, as ComfyUI's templates split their two KSamplerAdvanced nodes: "
        "steps before it run the high-noise expert (4-step LoRA templates: 2); 0 = use the boundary"),
    "LoraSpec.path": FieldDoc("a LoRA from ComfyUI's models/loras folder (Wan2.2 LoRAs in any key "
                              "format ComfyUI reads: diffusion_model., lora_unet_, Wan-Fun)"),
    "LoraSpec.strength": FieldDoc("how strongly the LoRA applies (0 = off; negative values invert it)"),
    "LoraSpec.expert": FieldDoc("which MoE expert the LoRA patches: both, or the high-/low-noise one "
                                "(4-step LoRAs come as a high-noise and a low-noise file)"),
    "GuideScale.high_noise": FieldDoc("CFG scale of the high-noise expert (early steps: layout and "
                                      "motion); 1 skips the negative prompt", lambda s: s.guide_scale[1]),
    "GuideScale.low_noise": FieldDoc("CFG scale of the low-noise expert (late steps: detail)",
                                     lambda s: s.guide_scale[0]),
    "GenerateRequest.denoise": FieldDoc(
        "with a latent_image: the fraction of the schedule to run from it (1: all steps, from noise; "
        "0.5: the last half of a schedule twice as long, keeping its layout); without one it must be 1"),
    "GenerateRequest.init_latent": FieldDoc(
        "optional native LATENT to start from (video-to-video, continuation); its shape sets the size "
        "and length, and `denoise` how much is redrawn"),
    "GenerateRequest.context": FieldDoc(
        "optional native CONDITIONING (CLIPTextEncode with the Wan umT5 text encoder) used instead of "
        "the text input's prompt"),
    "GenerateRequest.neg_context": FieldDoc(
        "optional native CONDITIONING used instead of the text input's negative prompt (unused at "
        "guidance 1)"),
    "GenerateRequest.image": FieldDoc("start image (I2V-A14B: required; TI2V-5B: optional; S2V: the "
                                      "reference image)"),
    # S2V (pipeline/s2v_plan.S2VOptions)
    "S2VOptions.infer_frames": FieldDoc("frames per clip, a multiple of 4 (--infer_frames)",
                                        lambda s: s.frame_num if s.task == Task.S2V_14B else None),
    "S2VOptions.num_clip": FieldDoc("0 = as many clips as the audio needs; N = stop after N clips (--num_clip)"),
    "S2VOptions.start_from_ref": FieldDoc("the reference image becomes the first frames (--start_from_ref)"),
}


def _figures(doc: FieldDoc) -> str:
    """'40 (t2v-A14B, i2v-A14B, s2v-14B), 50 (ti2v-5B)', or '40' when every task agrees."""
    by_value: dict[str, list[str]] = {}
    for task, spec in TASKS.items():
        value = doc.per_task(spec)
        if value is not None:
            text = f"{value:g}" if isinstance(value, float) else str(value)
            by_value.setdefault(text, []).append(task.value)
    if len(by_value) == 1:
        return next(iter(by_value))
    return ", ".join(f"{value} ({', '.join(tasks)})" for value, tasks in by_value.items())


def describe(key: str) -> str:
    """The tooltip of a setting: its description, then its official figures per task."""
    doc = FIELDS[key]
    if doc.per_task is None:
        return doc.text
    return f"{doc.text}. {doc.label.capitalize()}: {_figures(doc)}"
