"""The memory plan: estimated peak memory per GPU (and host RAM, /dev/shm) for one request.

One estimator, used by `doctor` (printed, or JSON with `--json`), by the memory guard that refuses
a request before any work (`check_fits`, called from `EngineClient.generate`, the CLI's precheck and the
loader node), and by anyone who wants to compare a layout (`suggest`).

How the figures are built (docs/memory.md has the table and the measured comparison):
- **Weights** from the model's shapes: parameter counts follow the DiT's structure (`DiTFacts`,
  from the checkpoint's config.json or the official figures; checked against the real checkpoints'
  key shapes in tests), T5 and VAE sizes from their files (or the official counts); bytes per
  parameter from the weight dtype (fp8: the blocks' linear weights take 1 byte, the rest bf16).
- **Where they sit** follows the engine's loading rules (pipeline/engine.py, pipeline/parallelize.py):
  both experts resident, one expert at a time (offload='experts'), streamed blocks
  (offload='blocks'), 1/N shards plus gathered blocks (dit_fsdp); T5 resident, on the CPU, moved in
  for the encode (offload), or sharded (t5_fsdp); the VAE always resident in float32.
- **Activations** of one denoiser call: per token, the tensors alive at the block's peak
  (8*dim fp32 residual + normed stream, the FFN's two ffn_dim-wide tensors and a dim-wide one in the
  compute dtype) times `ACT_KAPPA`, a factor fitted on the measured H200 peaks of a full-size A14B
  expert (bench/results_h200x2_2026-11-22_final.jsonl: 1 GPU 720P/480P, CFG-parallel, Ulysses; all
  four within 1%). Ulysses adds the full-sequence q/k/v of its heads, FSDP the gathered root and
  `FSDP_GATHERED_BLOCKS` blocks, TI2V with an image the per-token modulation.
- **VAE** encode/decode peaks per output pixel (frames are processed in causal chunks, so the peak
  grows with the frame area, plus the whole output video), from the measured real-size VAE runs in
  docs/gpu_checks.md.
Phases: text encode, image encode, denoise, decode (rank 0); the peak is the largest.

This module imports no torch at import time and reads no file itself (facts come from
`loading.detect` through `facts_for`).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Sequence

from .config import TASKS, EngineSpec, GenerateRequest, OffloadMode, ParallelConfig, Task
from .errors import ConfigError

GiB = 1024 ** 3

# Fitted on the measured peaks (see the module docstring); the tests recompute every row.
ACT_KAPPA = 1.457
# FSDP2 keeps the gathered root parameters between steps and has up to this many blocks unsharded
# at once (the running block, its all-gather output and the prefetched next one). Fitted: the
# measured FSDP+Ulysses 720P peak leaves 2.4 GiB beside the shard and the activations.
FSDP_GATHERED_BLOCKS = 3
# Wan VAE peaks above the weights, bytes per output pixel of one frame (measured on an H200:
# Wan2.1 81x720x1280 encode 14.8 GiB, decode 18.9 GiB; Wan2.2 121x704x1280 encode 6.7, decode
# 18.5 GiB; the whole video in float32 is subtracted, it is counted separately).
VAE_PX = {"2.1": {"encode": 16276.0, "decode": 21060.0},
          "2.2": {"encode": 6550.0, "decode": 20590.0}}
# Per GPU: the CUDA context, cuBLAS/flash workspaces and the allocator's slack that
# max_memory_allocated does not show; NCCL's buffers when there is more than one rank.
RESERVE_BYTES = int(1.5 * GiB)
NCCL_BYTES = int(0.5 * GiB)
# Host side: what a rank process holds besides weights (torch, CUDA libraries, buffers).
PROCESS_BYTES = {"cuda": int(2.5 * GiB), "cpu": int(0.8 * GiB)}
SHM_MARGIN = 64 * 1024 ** 2      # runtime/transport.py keeps this much free beside a segment

# The real models (docs/real_key_shapes.json): T5 umT5-XXL encoder, the VAEs, wav2vec2 (S2V).
T5_PARAMS = 5_680_910_336
VAE_PARAMS = {"2.1": 126_892_531, "2.2": 704_688_668}
WAV2VEC2_PARAMS = 315_438_720
# S2V's parameters beyond the WanModel structure (audio encoder/injector, cond encoder,
# framepack motion encoder...) at dim 5120, scaled by (dim/5120)^2 for other widths.
S2V_EXTRA_PARAMS = 16_295_755_609 - 14_288_491_584
# S2V clips carry the reference frame and the packed motion frames beside the generated ones
# (frame-pack: 73 motion frames -> about this many latent frames of tokens).
S2V_EXTRA_LATENT_FRAMES = 1 + 5

# Effective dense bf16 throughput per GPU (TFLOP/s) for the speed comparison of layouts; only the
# ratio between layouts on the same GPU matters for a suggestion, so a rough figure is enough.
DEFAULT_TFLOPS = 150.0
TFLOPS_BY_NAME = (("H200", 550.0), ("H100", 550.0), ("H800", 550.0), ("B200", 900.0), ("A100", 250.0),
                  ("A800", 250.0), ("L40", 150.0), ("4090", 150.0), ("5090", 200.0), ("6000 Ada", 150.0),
                  ("A6000", 75.0), ("A40", 75.0), ("3090", 70.0), ("A10", 60.0))


def tflops_for(gpu_name: Optional[str]) -> float:
    """Effective bf16 TFLOP/s of a GPU by name (measured 555 on H200; the rest scaled from specs)."""
    for key, value in TFLOPS_BY_NAME:
        if gpu_name and key.lower() in gpu_name.lower():
            return value
    return DEFAULT_TFLOPS
LINK_GBPS = {"nvlink": 150.0, "pcie": 12.0, "unknown": 12.0}   # all-to-all / all-gather, per GPU
HOST_TO_GPU_GBPS = 20.0


@dataclass(frozen=True)
class DiTFacts:
    """The DiT's structure (config.json fields): enough to count parameters and activations."""

    dim: int
    ffn_dim: int
    num_layers: int
    num_heads: int
    in_dim: int
    out_dim: int
    text_dim: int = 4096
    freq_dim: int = 256
    patch: tuple[int, int, int] = (1, 2, 2)
    s2v: bool = False

    @classmethod
    def from_config(cls, cfg: dict, s2v: bool = False) -> "DiTFacts":
        try:
            return cls(dim=int(cfg["dim"]), ffn_dim=int(cfg["ffn_dim"]), num_layers=int(cfg["num_layers"]),
                       num_heads=int(cfg["num_heads"]), in_dim=int(cfg["in_dim"]),
                       out_dim=int(cfg["out_dim"]), freq_dim=int(cfg.get("freq_dim", 256)), s2v=s2v)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"config.json lacks a DiT field the memory plan needs: {exc}") from None

    @property
    def block_params(self) -> int:
        d, f = self.dim, self.ffn_dim
        attn = 4 * (d * d + d) + 2 * d          # q, k, v, o with bias + norm_q, norm_k
        return 2 * attn + 2 * d + (d * f + f) + (f * d + d) + 6 * d   # self, cross, norm3, ffn, modulation

    @property
    def block_linear_params(self) -> int:
        """The blocks' 2-D linear weights (what an fp8 checkpoint stores in 8 bits)."""
        d, f = self.dim, self.ffn_dim
        return 8 * d * d + 2 * d * f

    @property
    def root_params(self) -> int:
        d = self.dim
        p = math.prod(self.patch)
        n = (d * self.in_dim * p + d) + (self.text_dim * d + d + d * d + d) \
            + (self.freq_dim * d + d + d * d + d) + (d * 6 * d + 6 * d) \
            + (d * self.out_dim * p + self.out_dim * p + 2 * d)
        if self.s2v:
            n += int(S2V_EXTRA_PARAMS * (d / 5120) ** 2)
        return n

    @property
    def params(self) -> int:
        return self.root_params + self.num_layers * self.block_params


OFFICIAL_DIT = {
    Task.T2V_A14B: DiTFacts(dim=5120, ffn_dim=13824, num_layers=40, num_heads=40, in_dim=16, out_dim=16),
    Task.I2V_A14B: DiTFacts(dim=5120, ffn_dim=13824, num_layers=40, num_heads=40, in_dim=36, out_dim=16),
    Task.TI2V_5B: DiTFacts(dim=3072, ffn_dim=14336, num_layers=30, num_heads=24, in_dim=48, out_dim=48),
    Task.S2V_14B: DiTFacts(dim=5120, ffn_dim=13824, num_layers=40, num_heads=40, in_dim=16, out_dim=16,
                           s2v=True),
}


@dataclass(frozen=True)
class ModelSizes:
    """What the plan needs to know about a checkpoint; `official(task)` for the released models."""

    task: Task
    dit: DiTFacts
    t5_params: int = T5_PARAMS
    vae_params: int = 0
    audio_params: int = 0
    source: str = "official figures"

    @classmethod
    def official(cls, task: "Task | str") -> "ModelSizes":
        task = Task.parse(task)
        return cls(task=task, dit=OFFICIAL_DIT[task], vae_params=VAE_PARAMS[TASKS[task].vae],
                   audio_params=WAV2VEC2_PARAMS if task == Task.S2V_14B else 0)

    @property
    def experts(self) -> int:
        return 2 if TASKS[self.task].moe else 1

    @property
    def vae_scale(self) -> float:
        """VAE activations grow with its channel width, i.e. with sqrt(params) (1 for the real one)."""
        real = VAE_PARAMS[TASKS[self.task].vae]
        return math.sqrt(self.vae_params / real) if self.vae_params else 1.0


def facts_for(task: "Task | str", ckpt_dir: Optional[str], files=None) -> ModelSizes:
    """ModelSizes of the checkpoint in `ckpt_dir` (config.json + file sizes), or the official figures
    when there is none or it cannot be read (the checkpoint check reports a broken one by file).
    `files` (ModelFiles): ComfyUI single files replacing parts; their headers give the sizes."""
    task = Task.parse(task)
    official = ModelSizes.official(task)
    if files is not None and files.any():
        return _facts_from_parts(task, ckpt_dir, files, official)
    if not ckpt_dir:
        return official
    from pathlib import Path

    from .errors import CheckpointError
    from .loading.detect import dit_folders, read_config

    ckpt = Path(ckpt_dir)
    try:
        folder = next(iter(dit_folders(ckpt, task).values()))
        dit = DiTFacts.from_config(read_config(folder), s2v=task == Task.S2V_14B)
    except (CheckpointError, ConfigError, OSError, StopIteration):
        return official

    def size(name: str) -> Optional[int]:
        try:
            return (ckpt / name).stat().st_size
        except OSError:
            return None

    t5 = size("models_t5_umt5-xxl-enc-bf16.pth")          # bf16 file: 2 bytes a parameter
    vae = size(TASKS[task].vae_file)                      # fp32 file: 4 bytes a parameter
    return replace(official, dit=dit, t5_params=t5 // 2 if t5 else official.t5_params,
                   vae_params=vae // 4 if vae else official.vae_params,
                   audio_params=official.audio_params if dit.dim == 5120 else
                   (official.audio_params and int(WAV2VEC2_PARAMS * (dit.dim / 5120) ** 2)),
                   source=str(ckpt))


def _facts_from_parts(task: Task, ckpt_dir: Optional[str], files, official: ModelSizes) -> ModelSizes:
    from .errors import CheckpointError
    from .loading.parts import dit_config, part_params, resolve_parts

    try:
        parts = resolve_parts(task, ckpt_dir or None, files)
        dit = DiTFacts.from_config(dit_config(next(iter(parts.dits.values()))), s2v=task == Task.S2V_14B)
        t5 = part_params(parts.text_encoder, bytes_per_param=2)
        vae = part_params(parts.vae, bytes_per_param=4)
    except (CheckpointError, ConfigError, OSError, StopIteration):
        return official
    return replace(official, dit=dit, t5_params=t5 or official.t5_params, vae_params=vae or official.vae_params,
                   audio_params=official.audio_params if dit.dim == 5120 else
                   (official.audio_params and int(WAV2VEC2_PARAMS * (dit.dim / 5120) ** 2)),
                   source="model files")


# -- what is asked ------------------------------------------------------------------------------


WEIGHT_DTYPES = ("bf16", "fp16", "fp32", "fp8")


@dataclass(frozen=True)
class Layout:
    """The settings the plan compares: GPUs and strategies (ParallelConfig's fields) + weight dtype."""

    num_gpus: int = 1
    ulysses_size: int = 1
    cfg_parallel: bool = False
    dit_fsdp: bool = False
    t5_fsdp: bool = False
    t5_cpu: bool = False
    offload: str = "none"
    weight_dtype: str = "bf16"

    @classmethod
    def from_parallel(cls, par: ParallelConfig, weight_dtype: str = "bf16") -> "Layout":
        return cls(num_gpus=par.num_gpus, ulysses_size=par.ulysses_size, cfg_parallel=par.cfg_parallel,
                   dit_fsdp=par.dit_fsdp, t5_fsdp=par.t5_fsdp, t5_cpu=par.t5_cpu,
                   offload=OffloadMode(par.offload).value, weight_dtype=str(weight_dtype))

    def flags(self) -> str:
        """The CLI flags for this layout (also the widget names of the loader node)."""
        out = [f"--num_gpus {self.num_gpus}"]
        if self.ulysses_size != self.num_gpus // (2 if self.cfg_parallel else 1):
            out.append(f"--ulysses_size {self.ulysses_size}")
        out += [f"--{name}" for name in ("cfg_parallel", "dit_fsdp", "t5_fsdp", "t5_cpu")
                if getattr(self, name)]
        out.append(f"--offload {self.offload}")
        if self.weight_dtype == "fp8":
            out.append("fp8 weights (ComfyUI's fp8_scaled files)")
        elif self.weight_dtype != "bf16":
            out.append(f"--dtype {self.weight_dtype}")
        return " ".join(out)


@dataclass(frozen=True)
class Workload:
    task: Task
    width: int
    height: int
    frame_num: int          # s2v-14B: frames per clip (infer_frames)
    cfg: bool = True        # guidance != 1: cond and uncond (batched on one rank)
    image: Optional[bool] = None   # ti2v-5B: an input image (per-token timesteps); None = assume yes

    @property
    def latent(self) -> tuple[int, int, int, int]:
        spec = TASKS[self.task]
        st, sh, sw = spec.vae_stride
        f = (self.frame_num - 1) // st + 1
        if self.task == Task.S2V_14B:
            f = self.frame_num // st + S2V_EXTRA_LATENT_FRAMES
        return (48 if spec.vae == "2.2" else 16), f, self.height // sh, self.width // sw

    @property
    def tokens(self) -> int:
        _, f, h, w = self.latent
        pt, ph, pw = TASKS[self.task].patch_size
        return (f // pt) * (h // ph) * (w // pw)


def workload_for(task: "Task | str", request: Optional[GenerateRequest] = None) -> Workload:
    """The request's size/frames/guidance (task defaults where unset)."""
    from .config import GuideScale, parse_size

    task = Task.parse(task)
    spec = TASKS[task]
    size = request.size if request is not None and request.size is not None else spec.default_size
    if isinstance(size, str):
        size = parse_size(size)
    frames = spec.frame_num
    if request is not None and request.frame_num is not None:
        frames = int(request.frame_num)
    if task == Task.S2V_14B and request is not None and request.s2v is not None:
        frames = int(getattr(request.s2v, "infer_frames", frames) or frames)
    guide = GuideScale(*spec.guide_scale)
    if request is not None and request.guide_scale is not None:
        guide = GuideScale.parse(request.guide_scale)
    image = None
    if request is not None and task == Task.TI2V_5B:
        image = request.image is not None
    return Workload(task=task, width=int(size[0]), height=int(size[1]), frame_num=frames,
                    cfg=not (guide.low_noise == 1 and guide.high_noise == 1), image=image)


# -- the plan -----------------------------------------------------------------------------------


@dataclass
class MemoryPlan:
    """Estimated peaks in bytes. `gpu_peak` is the largest rank's (rank 0: it also decodes)."""

    task: str
    width: int
    height: int
    frame_num: int
    tokens: int
    layout: Layout
    device: str
    weights: dict[str, int]          # per rank, resident during the denoise
    phases: dict[str, int]           # per rank (rank 0), phase -> peak
    gpu_peak: int                    # the largest phase + the CUDA context/allocator reserve
    alloc_peak: int                  # the largest phase alone: compare with torch.cuda.max_memory_allocated
    dit_step_peak: int               # one expert's weights (or FSDP share) + one step: bench/bench_dit.py's figure
    host_ram: int                    # the whole machine (every rank)
    shm: int
    step_s: float                    # rough time of one denoising step (layout comparison only)
    video_s: float                   # rough time of the whole video
    capacity: Optional[int] = None   # usable bytes per GPU (or host RAM on CPU), when known
    capacity_what: str = ""
    fits: Optional[bool] = None
    sizes_from: str = "official figures"
    notes: list[str] = field(default_factory=list)
    prefetch_bytes: int = 0          # offload=experts: the next expert, copied early when it fits

    def to_json(self) -> dict:
        d = asdict(self)
        d["layout"] = asdict(self.layout)
        d["gpu_peak_gib"] = round(self.gpu_peak / GiB, 2)
        d["alloc_peak_gib"] = round(self.alloc_peak / GiB, 2)
        d["dit_step_peak_gib"] = round(self.dit_step_peak / GiB, 2)
        d["host_ram_gib"] = round(self.host_ram / GiB, 2)
        d["phases_gib"] = {k: round(v / GiB, 2) for k, v in self.phases.items()}
        d["weights_gib"] = {k: round(v / GiB, 2) for k, v in self.weights.items()}
        if self.capacity is not None:
            d["capacity_gib"] = round(self.capacity / GiB, 2)
        return d

    def summary(self) -> str:
        where = "per GPU" if self.device == "cuda" else "host RAM"
        text = (f"estimated peak {gib(self.gpu_peak)} {where} ({self.task} {self.width}*{self.height}, "
                f"{self.frame_num} frames, {self.layout.flags()})")
        if self.capacity is not None:
            text += f"; usable {gib(self.capacity)} ({self.capacity_what})"
        return text


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def _bytes_per_param(dtype: str) -> float:
    return {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 2}[dtype]


def _dit_bytes(d: DiTFacts, dtype: str) -> int:
    if dtype == "fp8":   # 8-bit linear weights (+ one scale each), the rest in bf16
        n_lin = d.num_layers * d.block_linear_params
        return n_lin + 2 * (d.params - n_lin)
    return int(d.params * _bytes_per_param(dtype))


def _block_bytes(d: DiTFacts, dtype: str) -> int:
    if dtype == "fp8":
        return d.block_linear_params + 2 * (d.block_params - d.block_linear_params)
    return int(d.block_params * _bytes_per_param(dtype))


def dit_activation_bytes(d: DiTFacts, w: Workload, layout: Layout, *, per_token_t: bool) -> int:
    """Peak of one denoiser call on one rank, above the weights."""
    s = 4 if layout.weight_dtype == "fp32" else 2           # compute dtype of the linear layers
    batch = 2 if (w.cfg and not layout.cfg_parallel) else 1  # cond + uncond batched (engine default)
    u = max(1, layout.ulysses_size)
    full = -(-w.tokens // u) * u                             # padded to a multiple of the degree
    local = full // u
    per_token = 8 * d.dim + s * (d.dim + 2 * d.ffn_dim)
    act = ACT_KAPPA * batch * local * per_token
    if u > 1:     # the heads' q, k, v over the whole sequence after the all-to-all
        act += 3 * batch * full * (d.dim // u) * s
    if per_token_t:   # TI2V image mode: e0 [B, L, 6, dim] + e [B, L, dim] fp32, and one mod at a time
        act += batch * local * (6 + 1 + 1) * 4 * d.dim
    head_dim = d.dim // max(1, d.num_heads)
    act += local * head_dim * 8                              # RoPE table (complex128, half dim)
    c, f, h, ww = w.latent
    act += 6 * batch * c * f * h * ww * 4                    # latents, noise, model output (fp32)
    return int(act)


def vae_bytes(sizes: ModelSizes, w: Workload, what: str) -> int:
    """VAE encode/decode peak above its weights (rank 0)."""
    px = w.width * w.height
    per = VAE_PX[TASKS[w.task].vae][what] * sizes.vae_scale
    video = 4 * 3 * w.frame_num * px                        # the float32 video in or out
    if what == "encode" and w.task == Task.TI2V_5B:
        video = 4 * 3 * px                                  # ti2v encodes the one image
    return int(per * px + video)


def _t5_activation_bytes(sizes: ModelSizes) -> int:
    return int(2 * 512 * 4096 * 4 * 12 * math.sqrt(sizes.t5_params / T5_PARAMS))


def estimate(sizes: ModelSizes, w: Workload, layout: Layout, *, device: str = "cuda",
             link: str = "unknown", tflops: float = DEFAULT_TFLOPS) -> MemoryPlan:
    """The plan for one workload and layout (no capacity check; see `check_fits`)."""
    if layout.weight_dtype not in WEIGHT_DTYPES:
        raise ConfigError(f"weight dtype {layout.weight_dtype!r}: choose one of {', '.join(WEIGHT_DTYPES)}")
    n = max(1, layout.num_gpus)
    d = sizes.dit
    dtype = layout.weight_dtype
    offload = OffloadMode(layout.offload)
    on_gpu = device == "cuda"
    expert = _dit_bytes(d, dtype)
    block = _block_bytes(d, dtype)
    root = expert - d.num_layers * block
    experts = sizes.experts
    t5_dtype = "fp8" if dtype == "fp8" else ("fp32" if dtype == "fp32" else "bf16")
    t5 = int(sizes.t5_params * (1 if t5_dtype == "fp8" else _bytes_per_param(t5_dtype)))
    vae = sizes.vae_params * 4
    audio = sizes.audio_params * 4
    notes: list[str] = []

    # DiT weights resident during the denoise (per rank); `transient`: the part held only while a
    # forward runs (FSDP's gathered blocks, the streamed blocks), gone in the other phases.
    transient, prefetch = 0, 0
    if layout.dit_fsdp:
        transient = FSDP_GATHERED_BLOCKS * block
        dit_res = experts * expert // n + root + transient
    elif offload == OffloadMode.EXPERTS and on_gpu:
        dit_res = expert
        prefetch = expert if experts > 1 else 0
        notes.append("offload=experts: one expert on the GPU at a time; the other is prefetched "
                     "only when free memory holds both")
    elif offload == OffloadMode.BLOCKS and on_gpu:
        transient = 2 * block
        dit_res = experts * root + transient
    else:
        dit_res = experts * expert
    # T5: where it waits, and what the encode needs on top.
    t5_gpu = on_gpu and not layout.t5_cpu
    if not on_gpu:
        t5_res, t5_encode = t5, 0
    elif layout.t5_cpu:
        t5_res, t5_encode = 0, 0
    elif layout.t5_fsdp:
        t5_res, t5_encode = t5 // n, 2 * t5 // 24 + t5 // n   # the shard + gathered blocks (24)
    elif offload != OffloadMode.NONE:
        t5_res, t5_encode = 0, t5                           # moved in for the encode, out after
    else:
        t5_res, t5_encode = t5, 0
    weights = {"dit": dit_res, "t5": t5_res, "vae": vae}
    if audio:
        weights["audio_encoder"] = audio
    resident = sum(weights.values())

    per_token_t = w.task == Task.TI2V_5B and w.image is not False
    act = dit_activation_bytes(d, w, layout, per_token_t=per_token_t)
    idle = resident - transient
    phases = {"text_encode": idle + t5_encode + (_t5_activation_bytes(sizes) if t5_gpu else 0)}
    if w.task != Task.T2V_A14B and not (w.task == Task.TI2V_5B and w.image is False):
        phases["image_encode"] = idle + vae_bytes(sizes, w, "encode")
    phases["denoise"] = resident + act
    phases["decode"] = idle + vae_bytes(sizes, w, "decode")
    reserve = (RESERVE_BYTES + (NCCL_BYTES if n > 1 else 0)) if on_gpu else 0
    peak = max(phases.values())
    one_expert = (expert // n + root + FSDP_GATHERED_BLOCKS * block) if layout.dit_fsdp else expert

    # Host RAM for the whole machine: every rank's process, CPU-side weights, CPU-run parts.
    per_rank_host = PROCESS_BYTES["cuda" if on_gpu else "cpu"]
    if on_gpu:
        if offload == OffloadMode.EXPERTS:
            per_rank_host += experts * expert                # pinned masters of both experts
        elif offload == OffloadMode.BLOCKS:
            per_rank_host += experts * d.num_layers * block
        if layout.t5_cpu or offload != OffloadMode.NONE or layout.t5_fsdp:
            per_rank_host += t5                              # T5 (master, CPU run, or pre-shard load)
        host = n * per_rank_host
    else:
        host = n * (per_rank_host + peak)
    video_bytes = w.frame_num * w.width * w.height * 3
    shm = (video_bytes + SHM_MARGIN + (NCCL_BYTES if on_gpu else 0)) if n > 1 else 0

    step_s, video_s = _speed(sizes, w, layout, link=link, tflops=tflops, on_gpu=on_gpu,
                             expert_bytes=expert, t5_bytes=t5)
    return MemoryPlan(task=w.task.value, width=w.width, height=w.height, frame_num=w.frame_num,
                      tokens=w.tokens, layout=layout, device=device, weights=weights, phases=phases,
                      gpu_peak=int(peak + reserve), alloc_peak=int(peak),
                      dit_step_peak=int(one_expert + act), host_ram=int(host), shm=int(shm), step_s=step_s,
                      video_s=video_s, sizes_from=sizes.source, notes=notes, prefetch_bytes=int(prefetch))


def _speed(sizes: ModelSizes, w: Workload, layout: Layout, *, link: str, tflops: float, on_gpu: bool,
           expert_bytes: int, t5_bytes: int) -> tuple[float, float]:
    """A rough time model, only to rank layouts against each other on the same GPUs: compute split
    over the ranks, Ulysses all-to-all and FSDP all-gathers over the GPU link, offload copies over
    PCIe (overlapped with compute when they are smaller)."""
    d = sizes.dit
    n = max(1, layout.num_gpus)
    batch = 2 if w.cfg else 1
    L = w.tokens
    flops = batch * (2 * L * d.num_layers * d.block_params + 4 * L * L * d.dim * d.num_layers)
    compute = flops / n / (tflops * 1e12)
    bw = LINK_GBPS.get(link, LINK_GBPS["unknown"]) * 1e9
    u = layout.ulysses_size
    comm = 0.0
    if u > 1:   # q, k, v out and the output back, per layer, per rank
        per_rank_batch = 1 if layout.cfg_parallel else batch
        comm += 4 * per_rank_batch * (L / u) * d.dim * 2 * (u - 1) / u * d.num_layers / bw
    if layout.dit_fsdp:
        comm = max(comm, expert_bytes * (n - 1) / n / bw)   # overlapped with compute by prefetch
    step = compute + comm if u > 1 else max(compute, comm)
    if layout.offload == "blocks" and on_gpu:   # every block crosses PCIe each step; mostly overlapped
        transfer = expert_bytes / (HOST_TO_GPU_GBPS * 1e9)
        step = max(step, transfer) + 0.1 * transfer
    steps = TASKS[w.task].sample_steps
    total = steps * step
    if layout.offload == "experts" and on_gpu and sizes.experts > 1:
        total += expert_bytes / (HOST_TO_GPU_GBPS * 1e9)     # one switch per video
    if layout.t5_cpu or not on_gpu:
        total += 10.0 * sizes.t5_params / T5_PARAMS          # two prompts on the CPU (rough)
    return round(step, 3), round(total, 1)


# -- capacity and the guard ---------------------------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    """Usable bytes per GPU (the smallest of those used), or host RAM on CPU."""

    per_device: int
    what: str
    free: Optional[int] = None       # the smallest free figure (GPU: other processes hold the rest)
    count: int = 1                   # GPUs visible (for suggestions with more GPUs)
    name: Optional[str] = None       # GPU model (its speed ranks the suggestions)
    host: Optional[int] = None       # host RAM (suggestions that need more are left out)
    link: str = "unknown"            # "nvlink" / "pcie" / "unknown" between the GPUs


def _meminfo(key: str) -> Optional[int]:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def host_ram() -> tuple[Optional[int], Optional[int]]:
    """(MemTotal, MemAvailable) in bytes, or None where /proc/meminfo is missing."""
    return _meminfo("MemTotal"), _meminfo("MemAvailable")


def gpu_memory(gpu_ids: Optional[Sequence[int]] = None) -> Optional[list[tuple[str, int, Optional[int]]]]:
    """(name, total, free) of each visible GPU (or of `gpu_ids`), or None without CUDA.

    NVML first (no CUDA context in this process), then torch."""
    try:
        import pynvml   # nvidia-ml-py

        pynvml.nvmlInit()
        try:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible is None:
                phys = list(range(pynvml.nvmlDeviceGetCount()))
            else:
                phys = [int(v) for v in visible.split(",") if v.strip()]
            out = []
            for i in phys:
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                info = pynvml.nvmlDeviceGetMemoryInfo(h)
                name = pynvml.nvmlDeviceGetName(h)
                out.append((name.decode() if isinstance(name, bytes) else str(name), int(info.total),
                            int(info.free)))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML (or UUIDs in CUDA_VISIBLE_DEVICES): ask torch
        try:
            import torch

            if not torch.cuda.is_available():
                return None
            out = []
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                out.append((p.name, int(p.total_memory), None))
        except Exception:  # noqa: BLE001
            return None
    if not out:
        return None
    if gpu_ids is not None:
        out = [out[i] for i in gpu_ids if 0 <= i < len(out)]
    return out


def capacity_for(device: str, num_gpus: int, gpu_ids: Optional[Sequence[int]] = None) -> Optional[Capacity]:
    """What the guard compares against: on CUDA the smallest total of the GPUs used; on CPU the
    host's MemTotal (every rank shares it; see docs/memory.md). None when nothing can be read."""
    if str(device).startswith("cuda"):
        gpus = gpu_memory()
        if not gpus:
            return None
        used = [gpus[i] for i in (gpu_ids or range(min(num_gpus, len(gpus)))) if i < len(gpus)]
        if not used:
            return None
        name, total, _ = min(used, key=lambda g: g[1])
        frees = [g[2] for g in used if g[2] is not None]
        return Capacity(per_device=total, what=f"{name}, {gib(total)}", free=min(frees) if frees else None,
                        count=len(gpus), name=name, host=host_ram()[0])
    total, avail = host_ram()
    if total is None:
        return None
    return Capacity(per_device=total, what=f"host RAM {gib(total)}", free=avail, count=num_gpus, host=total)


def _fits(plan: MemoryPlan, cap: Capacity) -> bool:
    if plan.device == "cuda":
        return plan.gpu_peak <= cap.per_device
    return plan.host_ram <= cap.per_device


def with_capacity(plan: MemoryPlan, cap: Optional[Capacity]) -> MemoryPlan:
    """`plan` checked against `cap`. With offload='experts' the offloader prefetches the next expert
    when free memory holds it beside the running step (distributed/offload.py: free > 1.1 x expert
    + 1 GiB); then that is the peak, and the plan says so."""
    if cap is None:
        return plan
    if plan.prefetch_bytes and plan.device == "cuda":
        reserve = plan.gpu_peak - plan.alloc_peak
        free = cap.per_device - plan.phases["denoise"] - reserve
        if free > 1.1 * plan.prefetch_bytes + GiB:
            plan.phases["denoise_prefetch"] = plan.phases["denoise"] + plan.prefetch_bytes
            plan.alloc_peak = max(plan.phases.values())
            plan.gpu_peak = plan.alloc_peak + reserve
            plan.notes.append(f"{cap.what} holds both experts during the switch: the next one is prefetched "
                              "(the peak above); a smaller GPU runs one at a time")
    plan.capacity, plan.capacity_what, plan.fits = cap.per_device, cap.what, _fits(plan, cap)
    return plan


def candidate_layouts(task: Task, max_gpus: int, weight_dtypes: Sequence[str] = ("bf16", "fp8"),
                      num_heads: Optional[int] = None) -> list[Layout]:
    """Every layout the engine accepts for `task` on 1..max_gpus GPUs."""
    spec = TASKS[task]
    heads = num_heads or spec.num_heads
    out = []
    for n in range(1, max(1, max_gpus) + 1):
        for cfgp in (False, True):
            deg = 2 if cfgp else 1
            if n % deg or heads % (n // deg):
                continue
            u = n // deg
            for fsdp in ((False, True) if n > 1 else (False,)):
                offloads = ["none"] if fsdp else ["none", "blocks"] + (["experts"] if spec.moe else [])
                for off in offloads:
                    for t5 in ("gpu", "cpu", "fsdp") if n > 1 else ("gpu", "cpu"):
                        for dt in weight_dtypes:
                            out.append(Layout(num_gpus=n, ulysses_size=u, cfg_parallel=cfgp, dit_fsdp=fsdp,
                                              t5_fsdp=t5 == "fsdp", t5_cpu=t5 == "cpu", offload=off,
                                              weight_dtype=dt))
    return out


@dataclass(frozen=True)
class Suggestion:
    layout: Layout
    plan: MemoryPlan
    why: str

    def to_json(self) -> dict:
        return {"why": self.why, "flags": self.layout.flags(), "layout": asdict(self.layout),
                "gpu_peak_gib": round(self.plan.gpu_peak / GiB, 2), "video_s": self.plan.video_s}


def suggest(sizes: ModelSizes, w: Workload, current: Layout, cap: Optional[Capacity], *,
            device: str = "cuda", allow_fp8: bool = True) -> list[Suggestion]:
    """Layouts to use instead: the fastest that fits (when `current` does not fit), a faster one with
    fewer GPUs (when there is one), and, when nothing fits at this size, the longest video and the
    official size that do."""
    if device != "cuda" or cap is None:
        return []
    heads = sizes.dit.num_heads
    max_gpus = max(current.num_gpus, cap.count)
    dtypes = ("bf16", "fp8") if allow_fp8 else (current.weight_dtype,)
    speed = {"link": cap.link, "tflops": tflops_for(cap.name)}
    plans = [estimate(sizes, w, lay, device=device, **speed)
             for lay in candidate_layouts(w.task, max_gpus, dtypes, heads)]
    fitting = [p for p in plans if _usable(p, cap)]
    mine = estimate(sizes, w, current, device=device, **speed)
    out: list[Suggestion] = []

    def best(cands):
        return min(cands, key=_rank)

    if mine.gpu_peak > cap.per_device:
        same = [p for p in fitting if p.layout.num_gpus <= current.num_gpus
                and (p.layout.weight_dtype == current.weight_dtype)]
        if same:
            p = best(same)
            out.append(Suggestion(p.layout, p, f"fits on {p.layout.num_gpus} GPU(s) with the same weights"))
        more = [p for p in fitting if p not in same]
        if more:
            p = best(more)
            if not out or p.video_s < out[0].plan.video_s or not same:
                out.append(Suggestion(p.layout, p, "fastest layout that fits"
                                      + (" (more GPUs)" if p.layout.num_gpus > current.num_gpus else "")
                                      + (" (fp8 weights)" if p.layout.weight_dtype == "fp8" else "")))
        if not fitting:
            out.extend(_shrink(sizes, w, cap, device=device, speed=speed, max_gpus=max_gpus, dtypes=dtypes))
    else:
        fewer = [p for p in fitting if p.layout.num_gpus < current.num_gpus
                 and p.layout.weight_dtype == current.weight_dtype]
        if fewer:
            p = best(fewer)
            if p.video_s < 0.9 * mine.video_s:
                out.append(Suggestion(p.layout, p, f"fewer GPUs would be faster here (about {p.video_s:.0f} s "
                                      f"against {mine.video_s:.0f} s: the exchange between GPUs costs more "
                                      "than it saves at this size)"))
    return out


def _usable(plan: MemoryPlan, cap: Capacity) -> bool:
    return plan.gpu_peak <= cap.per_device and (cap.host is None or plan.host_ram <= cap.host)


def _rank(p: MemoryPlan):
    """Fastest first; among near-equals (5%) bf16 before fp8, fewer GPUs, no offload before expert
    offload before block offload (the time model cannot see their stalls), fewer strategies."""
    lay = p.layout
    extras = sum((lay.dit_fsdp, lay.t5_fsdp, lay.t5_cpu, lay.cfg_parallel))
    return (round(math.log(max(p.video_s, 1e-3)) / math.log(1.05)), lay.weight_dtype == "fp8",
            lay.num_gpus, ("none", "experts", "blocks").index(lay.offload), extras, p.gpu_peak)


def _shrink(sizes: ModelSizes, w: Workload, cap: Capacity, *, device: str, speed: dict, max_gpus: int,
            dtypes: Sequence[str]) -> list[Suggestion]:
    """Nothing fits: the most frames at this size, and the official default size at these frames."""
    layouts = candidate_layouts(w.task, max_gpus, dtypes, sizes.dit.num_heads)

    def fitting(work: Workload):
        ps = [estimate(sizes, work, lay, device=device, **speed) for lay in layouts]
        ps = [p for p in ps if _usable(p, cap)]
        return min(ps, key=_rank) if ps else None

    out = []
    lo, hi, found = 0, (w.frame_num - 1) // 4, None        # frames = 4k + 1
    while lo <= hi:
        mid = (lo + hi) // 2
        p = fitting(replace(w, frame_num=4 * mid + 1))
        if p is not None:
            found, lo = p, mid + 1
        else:
            hi = mid - 1
    if found is not None:
        out.append(Suggestion(found.layout, found, f"at {w.width}*{w.height}: at most {found.frame_num} frames"))
    from .config import parse_size

    dw, dh = parse_size(TASKS[w.task].default_size)
    if (dw, dh) != (w.width, w.height):
        p = fitting(replace(w, width=dw, height=dh))
        if p is not None:
            out.append(Suggestion(p.layout, p, f"at {w.frame_num} frames: the official size {dw}*{dh}"))
    return out


class MemoryRefused(ConfigError):
    """A request that cannot fit (a ConfigError: nothing was started)."""


def spec_weight_dtype(spec: EngineSpec) -> str:
    """How the DiT weights sit in memory for `spec`: `weights` fp8/fp8_fast -> fp8; bf16/fp16/fp32
    -> that; auto -> fp8 when the DiT file given holds fp8 layers (they stay fp8), else param_dtype."""
    weights = str(getattr(getattr(spec, "weights", None), "value", getattr(spec, "weights", "auto")) or "auto")
    if weights in ("fp8", "fp8_fast"):
        return "fp8"
    if weights in ("bf16", "fp16", "fp32"):
        return weights
    files = getattr(spec, "files", None)
    dit = files and (files.dit or files.dit_high_noise or files.dit_low_noise)
    if dit:
        try:
            from .loading.single_file import inspect_file

            if inspect_file(dit, expect="dit").encoding.startswith("fp8"):
                return "fp8"
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the checkpoint check
            pass
    return getattr(spec.param_dtype, "value", str(spec.param_dtype))


def plan_for(spec: EngineSpec, request: Optional[GenerateRequest] = None, *,
             sizes: Optional[ModelSizes] = None, cap: "Capacity | None | bool" = True,
             weight_dtype: Optional[str] = None) -> tuple[MemoryPlan, list[Suggestion]]:
    """The plan for an EngineSpec and a request (task defaults when None), with suggestions.
    `cap=True` reads the capacity of this machine; pass a Capacity, or None for no check."""
    task = Task.parse(spec.task)
    sizes = sizes or facts_for(task, spec.ckpt_dir, spec.files)
    device = "cuda" if str(spec.device).startswith("cuda") else "cpu"
    if cap is True:
        cap = capacity_for(device, spec.parallel.num_gpus, spec.parallel.gpu_ids)
    layout = Layout.from_parallel(spec.parallel, weight_dtype or spec_weight_dtype(spec))
    w = workload_for(task, request)
    speed = {"link": cap.link, "tflops": tflops_for(cap.name)} if cap else {}
    plan = with_capacity(estimate(sizes, w, layout, device=device, **speed), cap or None)
    return plan, suggest(sizes, w, layout, cap or None, device=device)


def _guard_capacity(spec: EngineSpec, sizes: ModelSizes, cap: "Capacity | None | bool"):
    """The capacity the guard uses, or None when it is off: WAN22_MEMORY_GUARD=0, nothing readable,
    or a CPU run whose checkpoint could not be read (the plan would be the real model's, and the
    checkpoint check names the missing files better than a memory refusal)."""
    if os.environ.get("WAN22_MEMORY_GUARD", "1") == "0":
        return None
    if not str(spec.device).startswith("cuda") and sizes.source == "official figures" and spec.ckpt_dir:
        return None
    return cap


def check_fits(spec: EngineSpec, request: Optional[GenerateRequest] = None, *,
               cap: "Capacity | None | bool" = True, sizes: Optional[ModelSizes] = None) -> Optional[MemoryPlan]:
    """The memory guard for a request: raise `MemoryRefused` (a ConfigError, with the estimate and
    what would fit) when its estimated peak exceeds the GPUs' memory (on CPU: the host's RAM, every
    rank together). Returns the plan otherwise (`fits` None when the guard is off)."""
    sizes = sizes or facts_for(spec.task, spec.ckpt_dir, spec.files)
    try:
        workload = workload_for(spec.task, request)
    except (ConfigError, ValueError, TypeError, AttributeError):
        return None       # a malformed field: the request's own validation names it
    if workload.tokens <= 0 or workload.frame_num < 1:
        return None
    plan, tips = plan_for(spec, request, sizes=sizes, cap=_guard_capacity(spec, sizes, cap))
    if plan.fits is False:
        raise MemoryRefused(refusal_text(plan, tips))
    return plan


def check_load(spec: EngineSpec, *, cap: "Capacity | None | bool" = True,
               sizes: Optional[ModelSizes] = None) -> MemoryPlan:
    """The guard before a group starts (no request yet): refuse when even the smallest video (the
    task's smallest official size, 5 frames, with guidance) cannot fit; otherwise return the plan
    for the task's default request, which the loader shows (it may say `fits: NO` for the default
    size while smaller requests fit: each request is checked again by `check_fits`)."""
    from .config import parse_size

    task = Task.parse(spec.task)
    sizes = sizes or facts_for(task, spec.ckpt_dir, spec.files)
    cap = _guard_capacity(spec, sizes, cap)
    smallest = min(TASKS[task].supported_sizes, key=lambda s: parse_size(s)[0] * parse_size(s)[1])
    small = GenerateRequest(prompt="", size=parse_size(smallest), frame_num=5)
    if task == Task.S2V_14B:
        small = replace(small, frame_num=None)
    plan, tips = plan_for(spec, small, sizes=sizes, cap=cap)
    if plan.fits is False:
        raise MemoryRefused(refusal_text(plan, tips).replace("not enough memory:", "not enough memory "
                                                             "even for the smallest video:", 1))
    return plan_for(spec, None, sizes=sizes, cap=cap)[0]


def refusal_text(plan: MemoryPlan, tips: Sequence[Suggestion]) -> str:
    where = "per GPU" if plan.device == "cuda" else "of host RAM for all ranks"
    need = plan.gpu_peak if plan.device == "cuda" else plan.host_ram
    worst = max(plan.phases, key=plan.phases.get)
    text = (f"not enough memory: {plan.task} {plan.width}*{plan.height}, {plan.frame_num} frames with "
            f"{plan.layout.flags()} needs about {gib(need)} {where} (largest phase: {worst}) but "
            f"{plan.capacity_what} gives {gib(plan.capacity or 0)}")
    if tips:
        text += "; would fit: " + "; or ".join(f"{t.why}: {t.layout.flags()} (about {gib(t.plan.gpu_peak)})"
                                               for t in tips)
    elif plan.device == "cuda":
        text += "; nothing fits on these GPUs: use fewer frames or a smaller size"
    else:
        text += "; use fewer frames, a smaller size or a GPU"
    return text + " (set WAN22_MEMORY_GUARD=0 to run anyway)"


_STATUS_CACHE: dict = {}


def status_line(spec: EngineSpec) -> str:
    """One short line for the loader's status: the plan of the task's default request on these GPUs,
    e.g. "plan: ~50.7 GiB/GPU at 1280*720x81 of 79.1 GiB". Cached per spec (NVML is read once)."""
    if spec not in _STATUS_CACHE:
        try:
            plan, _ = plan_for(spec, None)
            where = "GiB/GPU" if plan.device == "cuda" else "GiB RAM"
            need = plan.gpu_peak if plan.device == "cuda" else plan.host_ram
            text = f"plan: ~{need / GiB:.1f} {where} at {plan.width}*{plan.height}x{plan.frame_num}"
            if plan.capacity is not None:
                text += f" of {plan.capacity / GiB:.1f}" + ("" if plan.fits else " (too big: smaller requests only)")
        except Exception as exc:  # noqa: BLE001 - a status line must never fail
            text = f"plan: unavailable ({type(exc).__name__})"
        _STATUS_CACHE[spec] = text
    return _STATUS_CACHE[spec]


def describe(plan: MemoryPlan, tips: Sequence[Suggestion] = ()) -> list[str]:
    """Lines for doctor and the loader's status."""
    lines = [plan.summary()]
    lines.append("  weights per rank: " + ", ".join(f"{k} {gib(v)}" for k, v in plan.weights.items()))
    lines.append("  phases (rank 0): " + ", ".join(f"{k} {gib(v)}" for k, v in plan.phases.items()))
    lines.append(f"  host RAM (all ranks): {gib(plan.host_ram)}; /dev/shm: {gib(plan.shm)}")
    if plan.fits is not None:
        lines.append("  fits: " + ("yes" if plan.fits else "NO"))
    for t in tips:
        lines.append(f"  instead: {t.why}: {t.layout.flags()} (about {gib(t.plan.gpu_peak)}, "
                     f"roughly {t.plan.video_s:.0f} s a video)")
    lines.extend(f"  note: {n}" for n in plan.notes)
    return lines


__all__ = ["DiTFacts", "ModelSizes", "Layout", "Workload", "MemoryPlan", "Capacity", "Suggestion",
           "facts_for", "workload_for", "estimate", "suggest", "plan_for", "check_fits", "capacity_for",
           "gpu_memory", "host_ram", "describe", "refusal_text", "with_capacity", "candidate_layouts", "spec_weight_dtype", "status_line",
           "MemoryRefused", "check_load", "GiB"]
