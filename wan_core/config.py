"""Typed configuration of the engine: tasks and their official defaults, parallel options, requests.

Everything here is plain data (frozen dataclasses and enums) plus `validate()` functions whose
messages name the offending value and the fix. No torch.distributed, no model code, no ComfyUI.
Figures come from the official Wan2.2 configs (`wan/configs/*.py` of github.com/Wan-Video/Wan2.2).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Union

from .errors import ConfigError

if TYPE_CHECKING:   # annotations only: io.audio pulls in the audio decoders
    from .io.audio import AudioInput

AudioSource = Union[str, "AudioInput", object]
"""What `GenerateRequest.audio` takes: a file path, an `io.audio.AudioInput`, or any object with
`waveform` and `sample_rate` (the ComfyUI AUDIO dict's contents)."""


def _enum(cls, value, name: str):
    """`cls(value)` with a ConfigError that lists the choices."""
    if isinstance(value, cls):
        return value
    try:
        return cls(str(getattr(value, "value", value)).lower())
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of "
                          f"{', '.join(repr(m.value) for m in cls)}") from None


class Task(str, enum.Enum):
    T2V_A14B = "t2v-A14B"
    I2V_A14B = "i2v-A14B"
    TI2V_5B = "ti2v-5B"
    S2V_14B = "s2v-14B"

    @classmethod
    def parse(cls, value: "str | Task") -> "Task":
        if isinstance(value, Task):
            return value
        for task in cls:
            if task.value.lower() == str(value).lower():
                return task
        raise ConfigError(f"unknown task {value!r}; choose one of {', '.join(t.value for t in cls)}")


class Solver(str, enum.Enum):
    """`unipc` / `dpm++`: the official flow solvers (official sigmas, int64 timesteps).
    `euler`: ComfyUI's `euler` sampler on its `simple` schedule of `ModelSamplingSD3(shift)`
    (float timesteps sigma * 1000), as the 4-step LoRA templates run it. `uni_pc` / `uni_pc_bh2`:
    ComfyUI's samplers of those names on `simple` (the TI2V-5B template), docs/samplers.md."""

    UNIPC = "unipc"
    DPMPP = "dpm++"
    EULER = "euler"
    COMFY_UNI_PC = "uni_pc"          # ComfyUI's uni_pc (bh1) on `simple`: not the official UniPC
    COMFY_UNI_PC_BH2 = "uni_pc_bh2"  # ComfyUI's uni_pc_bh2 on `simple`

    @classmethod
    def parse(cls, value: "str | Solver") -> "Solver":
        if isinstance(value, Solver):
            return value
        for solver in cls:
            if solver.value == str(value).lower():
                return solver
        raise ConfigError(f"unknown sample_solver {value!r}; choose one of "
                          f"{', '.join(repr(s.value) for s in cls)}")


class OffloadMode(str, enum.Enum):
    """Where weights wait when the GPU is too small.

    NONE: everything resident. EXPERTS: the inactive MoE expert waits in pinned CPU memory and is
    prefetched before the boundary. BLOCKS: transformer blocks are streamed from CPU with a prefetch
    stream (slowest, smallest).
    """

    NONE = "none"
    EXPERTS = "experts"
    BLOCKS = "blocks"


class AttentionBackend(str, enum.Enum):
    AUTO = "auto"
    SDPA = "sdpa"
    FLASH2 = "flash2"
    FLASH3 = "flash3"
    FLASH4 = "flash4"


class ParamDtype(str, enum.Enum):
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"

    @property
    def torch_dtype(self):
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.value]


NEG_PROMPT_DEFAULT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
NEG_PROMPT_S2V = (
    "画面模糊，最差质量，画面模糊，细节模糊不清，情绪激动剧烈，手快速抖动，字幕，丑陋的，残缺的，多余的手指，"
    "画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)

# Official size tables (W, H), wan/configs/__init__.py.
SIZES = {
    "720*1280": (720, 1280), "1280*720": (1280, 720), "480*832": (480, 832), "832*480": (832, 480),
    "704*1280": (704, 1280), "1280*704": (1280, 704), "1024*704": (1024, 704), "704*1024": (704, 1024),
}


@dataclass(frozen=True)
class TaskSpec:
    """Official per-task constants and sampling defaults."""

    task: Task
    moe: bool                    # two experts (high_noise_model / low_noise_model)
    vae: str                     # "2.1" or "2.2"
    vae_stride: tuple[int, int, int]
    patch_size: tuple[int, int, int]
    num_heads: int               # real model's head count (for the Ulysses rule)
    sample_steps: int
    sample_shift: float
    guide_scale: tuple[float, float]   # (low-noise, high-noise); equal for single-model tasks
    boundary: Optional[float]    # MoE switch as a fraction of 1000 train timesteps
    frame_num: int
    fps: int
    supported_sizes: tuple[str, ...]
    default_size: str
    neg_prompt: str
    needs_image: bool
    accepts_image: bool

    @property
    def vae_file(self) -> str:
        return "Wan2.2_VAE.pth" if self.vae == "2.2" else "Wan2.1_VAE.pth"

    @property
    def size_multiple(self) -> int:
        """Pixel sizes must be multiples of VAE stride x patch size (16 for Wan2.1 VAE, 32 for 2.2)."""
        return self.vae_stride[1] * self.patch_size[1]


TASKS: dict[Task, TaskSpec] = {
    Task.T2V_A14B: TaskSpec(
        task=Task.T2V_A14B, moe=True, vae="2.1", vae_stride=(4, 8, 8), patch_size=(1, 2, 2),
        num_heads=40, sample_steps=40, sample_shift=12.0, guide_scale=(3.0, 4.0), boundary=0.875,
        frame_num=81, fps=16, supported_sizes=("720*1280", "1280*720", "480*832", "832*480"),
        default_size="1280*720", neg_prompt=NEG_PROMPT_DEFAULT, needs_image=False, accepts_image=False),
    Task.I2V_A14B: TaskSpec(
        task=Task.I2V_A14B, moe=True, vae="2.1", vae_stride=(4, 8, 8), patch_size=(1, 2, 2),
        num_heads=40, sample_steps=40, sample_shift=5.0, guide_scale=(3.5, 3.5), boundary=0.900,
        frame_num=81, fps=16, supported_sizes=("720*1280", "1280*720", "480*832", "832*480"),
        default_size="1280*720", neg_prompt=NEG_PROMPT_DEFAULT, needs_image=True, accepts_image=True),
    Task.TI2V_5B: TaskSpec(
        task=Task.TI2V_5B, moe=False, vae="2.2", vae_stride=(4, 16, 16), patch_size=(1, 2, 2),
        num_heads=24, sample_steps=50, sample_shift=5.0, guide_scale=(5.0, 5.0), boundary=None,
        frame_num=121, fps=24, supported_sizes=("704*1280", "1280*704"),
        default_size="1280*704", neg_prompt=NEG_PROMPT_DEFAULT, needs_image=False, accepts_image=True),
    Task.S2V_14B: TaskSpec(
        task=Task.S2V_14B, moe=False, vae="2.1", vae_stride=(4, 8, 8), patch_size=(1, 2, 2),
        num_heads=40, sample_steps=40, sample_shift=3.0, guide_scale=(4.5, 4.5), boundary=None,
        frame_num=80, fps=16, supported_sizes=tuple(SIZES),
        default_size="1024*704", neg_prompt=NEG_PROMPT_S2V, needs_image=True, accepts_image=True),
}


def valid_ulysses_degrees(num_heads: int, max_degree: int = 8) -> list[int]:
    return [d for d in range(1, max_degree + 1) if num_heads % d == 0]


# DiT input / latent channels of the official models (config.json `in_dim` / `out_dim`).
_OFFICIAL_CHANNELS = {Task.T2V_A14B: (16, 16), Task.I2V_A14B: (36, 16), Task.TI2V_5B: (48, 48),
                      Task.S2V_14B: (16, 16)}


@dataclass(frozen=True)
class ModelFacts:
    """What the rules need to know about the model a checkpoint holds.

    Read from the checkpoint by `loading.facts.read_model_facts` (the official figures when the
    folder cannot be read yet: a missing checkpoint is reported later, by file)."""

    num_heads: int
    moe: bool
    in_dim: Optional[int] = None          # DiT input channels (latent + conditioning)
    latent_channels: Optional[int] = None
    text_len: int = 512
    source: str = "official figures"      # where the facts come from (a config.json path)

    @classmethod
    def official(cls, task: "Task | str") -> "ModelFacts":
        spec = TASKS[Task.parse(task)]
        in_dim, out_dim = _OFFICIAL_CHANNELS[spec.task]
        return cls(num_heads=spec.num_heads, moe=spec.moe, in_dim=in_dim, latent_channels=out_dim)


def check_ulysses_size(num_heads: int, ulysses_size: int) -> None:
    """Ulysses splits the attention heads over its ranks: ulysses_size must divide the head count."""
    if ulysses_size < 1 or num_heads % ulysses_size:
        raise ConfigError(
            f"ulysses_size={ulysses_size} does not divide the model's {num_heads} attention heads; valid "
            f"degrees: {', '.join(map(str, valid_ulysses_degrees(num_heads)))}")


def check_parallel(parallel: "ParallelConfig", facts: ModelFacts) -> None:
    """The parallel rules that need model facts (the others hold once a ParallelConfig exists).

    The sizes are checked together, heads first: a ulysses_size that divides no head count is the
    more useful message, and the fix for num_gpus names a ulysses_size that divides them."""
    check_ulysses_size(facts.num_heads, parallel.ulysses_size)
    cfg, n = parallel.cfg_degree, parallel.num_gpus
    if cfg * parallel.ulysses_size != n:
        hint = (f"use ulysses_size={n // cfg}" if n % cfg == 0 and facts.num_heads % (n // cfg) == 0
                else "change num_gpus")
        raise ConfigError(f"num_gpus={n} must equal cfg degree ({cfg}, cfg_parallel={parallel.cfg_parallel}) "
                          f"x ulysses_size ({parallel.ulysses_size}); {hint}")
    if parallel.offload == OffloadMode.EXPERTS and not facts.moe:
        raise ConfigError("offload='experts' keeps the inactive MoE expert in CPU memory, but this task "
                          "has a single model; use offload='blocks' to stream its blocks instead")


def padded_seq_len(seq_len: int, ulysses_size: int) -> int:
    """The token count rounded up to a multiple of ulysses_size (each rank holds an equal chunk;
    the padded keys are masked, official text2video.py:259)."""
    return -(-seq_len // ulysses_size) * ulysses_size


def check_cfg_guidance(cfg_parallel: bool, guide: "GuideScale | float") -> None:
    """cfg_parallel runs cond and uncond on two ranks; at guidance 1 (or NaN) the uncond branch is
    unused (uncond + 1 * (cond - uncond) == cond), so half the group would compute for nothing."""
    if not cfg_parallel:
        return
    if isinstance(guide, GuideScale):
        named = [("low-noise", guide.low_noise), ("high-noise", guide.high_noise)]
    else:
        named = [("guide", guide)]
    ones = [f"{name}={float(g):g}" for name, g in named if float(g) == 1.0 or math.isnan(float(g))]
    if ones:
        raise ConfigError(
            f"cfg_parallel needs classifier-free guidance > 1 on every expert, but {', '.join(ones)}: "
            "at guidance 1 the unconditional branch is not used, so one of the two CFG ranks would "
            "compute for nothing. Turn cfg_parallel off (use ulysses_size=num_gpus instead), or set "
            "the guide scale above 1")


def check_world_size(parallel: "ParallelConfig", world: int, fix: str = "start one process per GPU") -> None:
    """The processes that joined a group must be the layout's num_gpus (= cfg degree x ulysses_size)."""
    if world != parallel.num_gpus or world != parallel.cfg_degree * parallel.ulysses_size:
        raise ConfigError(f"{world} process(es) joined the group but num_gpus={parallel.num_gpus} "
                          f"(cfg degree {parallel.cfg_degree} x ulysses_size {parallel.ulysses_size}); {fix}")


@dataclass(frozen=True)
class ParallelConfig:
    """How one video is split across the worker group.

    world size = cfg degree (1 or 2) x ulysses_size. FSDP shards weights over the whole world.
    """

    num_gpus: int = 1
    """Worker processes (one per GPU; gloo ranks on CPU)."""
    gpu_ids: Optional[tuple[int, ...]] = None
    """Physical GPU ids to use (len == num_gpus); None = 0..num_gpus-1."""
    ulysses_size: int = 1
    """Sequence-parallel degree for self-attention; must divide the model's head count."""
    cfg_parallel: bool = False
    """cond and uncond on different ranks (needs guidance > 1)."""
    dit_fsdp: bool = False
    """FSDP2-shard every DiT block (both MoE experts resident, each rank holds 1/N)."""
    t5_fsdp: bool = False
    """FSDP2-shard the T5 encoder."""
    t5_cpu: bool = False
    """Run T5 on the CPU (saves ~11 GB of GPU memory at real size)."""
    offload: OffloadMode = OffloadMode.NONE

    @property
    def cfg_degree(self) -> int:
        return 2 if self.cfg_parallel else 1

    def __post_init__(self) -> None:
        # Coerced once here, so no reader converts again (widgets and flags give strings/lists).
        object.__setattr__(self, "offload", _enum(OffloadMode, self.offload, "offload"))
        if self.gpu_ids is not None:
            object.__setattr__(self, "gpu_ids", tuple(int(i) for i in self.gpu_ids))
        self._check()

    def _check(self) -> None:
        """The rules that need no model facts. `check_parallel` has the ones that do, and the size
        equation num_gpus == cfg degree x ulysses_size, checked right after the head count."""
        if self.num_gpus < 1:
            raise ConfigError(f"num_gpus={self.num_gpus}: need at least 1")
        if self.gpu_ids is not None:
            if len(self.gpu_ids) != self.num_gpus:
                raise ConfigError(f"gpu_ids={list(self.gpu_ids)} lists {len(self.gpu_ids)} GPUs but "
                                  f"num_gpus={self.num_gpus}; give one id per worker")
            if len(set(self.gpu_ids)) != len(self.gpu_ids):
                raise ConfigError(f"gpu_ids={list(self.gpu_ids)} repeats a GPU; give each worker its own")
        if self.ulysses_size < 1:
            raise ConfigError(f"ulysses_size={self.ulysses_size}: need at least 1")
        if (self.dit_fsdp or self.t5_fsdp) and self.num_gpus == 1:
            raise ConfigError("dit_fsdp/t5_fsdp shard weights across GPUs and need num_gpus >= 2; "
                              "on one GPU use offload='experts' or 'blocks' instead")
        if self.t5_fsdp and self.t5_cpu:
            raise ConfigError("t5_fsdp and t5_cpu exclude each other: pick one place for the T5 encoder")
        if self.dit_fsdp and self.offload != OffloadMode.NONE:
            raise ConfigError(f"offload={self.offload.value!r} cannot be combined with dit_fsdp: FSDP "
                              "already keeps 1/N of each expert per GPU; turn one of them off")


class WeightsMode(str, enum.Enum):
    """How weights are held (`--weights`, the loader's `weights` widget).

    AUTO keeps what the files hold (an fp8 file's layers stay fp8); BF16 / FP16 / FP32 cast at load;
    FP8 quantizes the big linears to fp8 with per-tensor scales at load; FP8_FAST also runs them
    as fp8 matmuls (torch._scaled_mm) on GPUs of compute capability 8.9+.
    """

    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"
    FP8 = "fp8"
    FP8_FAST = "fp8_fast"

    @classmethod
    def parse(cls, value: "str | WeightsMode") -> "WeightsMode":
        return _enum(cls, value, "weights")


@dataclass(frozen=True)
class ModelFiles:
    """Single files (ComfyUI's) that replace parts of the official checkpoint folder; None: take
    the part from `EngineSpec.ckpt_dir`. Paths are absolute or relative to the working folder."""

    dit: Optional[str] = None              # ti2v-5B, s2v-14B
    dit_high_noise: Optional[str] = None   # t2v-A14B, i2v-A14B
    dit_low_noise: Optional[str] = None
    text_encoder: Optional[str] = None
    vae: Optional[str] = None
    audio_encoder: Optional[str] = None    # s2v-14B

    def any(self) -> bool:
        return any(getattr(self, f) for f in self.__dataclass_fields__)


@dataclass(frozen=True)
class EngineSpec:
    """What a worker group loads and how it is laid out. Changing it restarts the group."""

    task: Task
    ckpt_dir: str                 # the official folder ("" when `files` gives every part)
    device: str = "cuda"          # "cuda" or "cpu" (gloo ranks)
    param_dtype: ParamDtype = ParamDtype.BF16
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    attention: AttentionBackend = AttentionBackend.AUTO
    files: ModelFiles = field(default_factory=ModelFiles)
    weights: WeightsMode = WeightsMode.AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task.parse(self.task))
        object.__setattr__(self, "param_dtype", _enum(ParamDtype, self.param_dtype, "dtype"))
        object.__setattr__(self, "attention", _enum(AttentionBackend, self.attention, "attention"))
        object.__setattr__(self, "weights", WeightsMode.parse(self.weights))
        if not isinstance(self.parallel, ParallelConfig):
            raise ConfigError(f"EngineSpec.parallel must be a ParallelConfig, got {type(self.parallel).__name__}")

    def validate(self, facts: "ModelFacts") -> None:
        """Every rule of this spec that needs the model's facts (read by `loading.facts`)."""
        check_parallel(self.parallel, facts)


@dataclass(frozen=True)
class GuideScale:
    """Classifier-free guidance per MoE expert (equal values for single-model tasks)."""

    low_noise: float
    high_noise: float

    @classmethod
    def parse(cls, value: "float | str | tuple[float, float] | GuideScale") -> "GuideScale":
        """One value for both experts, or 'LOW,HIGH' (the official config tuple order)."""
        if isinstance(value, GuideScale):
            return value
        if isinstance(value, (int, float)):
            return cls(float(value), float(value))
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise ConfigError(f"guide scale {value!r}: give one value or two (low-noise, high-noise)")
            return cls(float(value[0]), float(value[1]))
        parts = [p for p in str(value).replace(" ", "").split(",") if p]
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise ConfigError(f"sample_guide_scale {value!r} is not a number or 'LOW,HIGH' pair") from None
        if len(nums) == 1:
            return cls(nums[0], nums[0])
        if len(nums) == 2:
            return cls(nums[0], nums[1])
        raise ConfigError(f"sample_guide_scale {value!r}: give one value or two ('LOW,HIGH')")


@dataclass(frozen=True)
class GenerateRequest:
    """One video. Unset fields (None) take the task's official default."""

    prompt: str
    neg_prompt: Optional[str] = None          # None or "" -> the task's official negative prompt
    size: Optional[tuple[int, int]] = None    # (W, H); for image tasks only the area counts
    frame_num: Optional[int] = None
    steps: Optional[int] = None
    shift: Optional[float] = None
    guide_scale: Optional[GuideScale] = None
    boundary: Optional[float] = None          # MoE switch (fraction of 1000)
    solver: Solver = Solver.UNIPC
    seed: int = 42
    image: Optional[object] = None            # float tensor [3, H, W] in [0, 1] (RGB), or None
    audio: Optional["AudioSource"] = None     # S2V: a file path, an io.audio.AudioInput, or an object
                                              # with `waveform` and `sample_rate`; None otherwise
    s2v: Optional["S2VOptions"] = None        # S2V-only settings, or None (= defaults)
    decode: bool = True                       # False: return the latent only
    switch_step: Optional[int] = None         # MoE switch by step index (None/0: use `boundary`)
    loras: tuple = ()                         # LoraSpec entries, applied in order (loading/lora.py)
    # Video-to-video / continuation (ComfyUI's KSampler rule): start from `init_latent` (normalised
    # latent [C, f, h, w] of this task's VAE, the shape the size and frame_num give) noised to the
    # first sigma of the last `steps` of an int(steps / denoise)-step schedule. denoise 0 runs no
    # step: the latent is only decoded.
    init_latent: Optional[object] = None
    denoise: float = 1.0
    # Precomputed text embeddings [L, text_dim] (e.g. ComfyUI's CONDITIONING), used instead of
    # encoding `prompt` / `neg_prompt` with the checkpoint's umT5.
    context: Optional[object] = None
    neg_context: Optional[object] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "solver", Solver.parse(self.solver))
        if self.guide_scale is not None:
            object.__setattr__(self, "guide_scale", GuideScale.parse(self.guide_scale))
        object.__setattr__(self, "loras", tuple(self.loras or ()))


class LoraTarget(str, enum.Enum):
    """Which expert(s) a LoRA patches (single-model tasks: `both` means the one model)."""

    BOTH = "both"
    HIGH_NOISE = "high_noise"
    LOW_NOISE = "low_noise"


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a request: a .safetensors file, its strength and the expert(s) it patches.

    Part of the request, not of the engine: between prompts the engine applies the difference
    (loading/lora.py) without reading any base weight again."""

    path: str
    strength: float = 1.0
    expert: LoraTarget = LoraTarget.BOTH

    @classmethod
    def parse(cls, text: str, expert: "LoraTarget | str" = LoraTarget.BOTH) -> "LoraSpec":
        """CLI form 'FILE[:STRENGTH]' (a ':' followed by a number at the end is the strength)."""
        text = str(text)
        path, sep, tail = text.rpartition(":")
        strength = 1.0
        if not sep or not path or text.lower().endswith(".safetensors") or "/" in tail or "\\" in tail:
            path = text            # no strength given (a ':' inside the path is kept)
        else:
            try:
                strength = float(tail)
            except ValueError:
                raise ConfigError(f"LoRA {text!r}: strength {tail!r} is not a number; write "
                                  "FILE[:STRENGTH], e.g. my_lora.safetensors:0.8") from None
        return cls(path=path, strength=strength, expert=LoraTarget(expert)).checked()

    def checked(self) -> "LoraSpec":
        if not self.path:
            raise ConfigError("LoRA: empty file name; give the path of a .safetensors file")
        s = self.strength
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise ConfigError(f"LoRA {self.path}: strength {s!r} is not a finite number")
        try:
            LoraTarget(self.expert)
        except ValueError:
            raise ConfigError(f"LoRA {self.path}: expert {self.expert!r}; choose "
                              f"{', '.join(t.value for t in LoraTarget)}") from None
        return self


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


@dataclass
class GenerateResult:
    latent: object                 # final latent [C, F, H, W] float32 (CPU); S2V: the last clip's
    video: Optional[object]        # uint8 tensor [F, H, W, 3] (CPU), None when decode=False
    fps: int
    seed: int
    extra_latents: dict = field(default_factory=dict)   # S2V: {"clip0": ..., "clip1": ...}
    audio: Optional[object] = None  # S2V: the input audio (samples, rate) to mux
    timings: dict = field(default_factory=dict)          # phase -> seconds
    warnings: tuple = ()           # notes for the user (e.g. LoRA keys that matched no layer)


def check_frame_num(frame_num: int) -> None:
    if frame_num < 1 or (frame_num - 1) % 4:
        lower = max(1, (frame_num - 1) // 4 * 4 + 1)
        raise ConfigError(f"frame_num={frame_num} is not of the form 4n+1; use {lower} or {lower + 4}")


def check_size(spec: TaskSpec, width: int, height: int) -> Optional[str]:
    """Raise for a size the model cannot take; return a warning text for an unofficial one."""
    m = spec.size_multiple
    if width <= 0 or height <= 0 or width % m or height % m:
        def near(v: int) -> str:
            lo = max(m, v // m * m)
            return f"{lo}" if lo == v else f"{lo} or {lo + m}"
        raise ConfigError(
            f"size {width}*{height} cannot be used by {spec.task.value}: width and height must be "
            f"multiples of {m} (VAE stride x patch size); nearest valid: width {near(width)}, "
            f"height {near(height)}")
    if f"{width}*{height}" not in spec.supported_sizes:
        return (f"size {width}*{height} is not one of the official sizes for {spec.task.value} "
                f"({', '.join(spec.supported_sizes)}); quality may suffer")
    return None


def check_sampling(steps: int, shift: float, guide: GuideScale) -> None:
    if not 1 <= steps <= 1000:
        raise ConfigError(f"sample_steps={steps} is out of range; use 1..1000 (official: 40-50)")
    if not (0 < shift <= 100) or math.isnan(shift):
        raise ConfigError(f"sample_shift={shift} is out of range; use a value in (0, 100] (official: 3-12)")
    for name, g in (("low-noise", guide.low_noise), ("high-noise", guide.high_noise)):
        if not (0 <= g <= 50) or math.isnan(g):
            raise ConfigError(f"guide scale {g} ({name}) is out of range; use 0..50 (official: 3-5; 1 disables CFG)")


def parse_size(text: str) -> tuple[int, int]:
    """'1280*720' or '1280x720' -> (W, H)."""
    for sep in ("*", "x", "X"):
        if sep in text:
            w, _, h = text.partition(sep)
            try:
                return int(w), int(h)
            except ValueError:
                break
    raise ConfigError(f"size {text!r} is not WIDTH*HEIGHT (for example 1280*720)")


def validate_request(spec: EngineSpec, request: GenerateRequest) -> None:
    """The per-request rules of a layout, before a request reaches a worker: cfg_parallel needs a
    guidance other than 1 (the request's, or the task's official one when it leaves it unset)."""
    guide = request.guide_scale
    if guide is None:
        guide = GuideScale(*TASKS[spec.task].guide_scale)
    check_cfg_guidance(spec.parallel.cfg_parallel, guide)
