"""Wan22MGModelLoader and Wan22MGRelease: start and end worker groups."""
from __future__ import annotations

import math

from wan_core.config import (TASKS, AttentionBackend, EngineSpec, OffloadMode, ParallelConfig,
                             ParamDtype, Task)
from wan_core.errors import Cancelled, ConfigError

from . import checkpoints
from .progress import NodeProgress
from .registry import REGISTRY
from .types import ENGINE, EngineHandle

CATEGORY = "Wan2.2 Multi-GPU"
MAX_GPUS = 8


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
               device: str, gpu_ids: str = "") -> EngineSpec:
    """Widget values -> a validated EngineSpec (ConfigError names the value and the fix).

    The layout is checked as every entry point checks it (`pipeline.parallelize.validate_spec`):
    against the head count in the checkpoint's config.json (the official figure when it cannot be
    read) and the offload rules. Here, before any worker starts, and before the registry ends an
    idle group on the same GPUs to make room for a layout that would then fail."""
    from wan_core.pipeline.parallelize import model_num_heads, validate, validate_spec

    task_ = Task.parse(task)
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"device {device!r}: choose 'cuda' or 'cpu'")
    parallel = ParallelConfig(num_gpus=int(gpus), gpu_ids=parse_gpu_ids(gpu_ids, int(gpus)),
                              ulysses_size=int(ulysses_size), cfg_parallel=bool(cfg_parallel),
                              dit_fsdp=bool(dit_fsdp), t5_fsdp=bool(t5_fsdp), t5_cpu=bool(t5_cpu),
                              offload=OffloadMode(offload))
    spec = EngineSpec(task=task_, ckpt_dir=ckpt_dir, device=device, param_dtype=ParamDtype(dtype),
                      parallel=parallel, attention=AttentionBackend(attention))
    try:
        validate_spec(spec)
    except ConfigError as exc:
        official = TASKS[task_]
        try:
            validate(parallel, num_heads=official.num_heads, moe=official.moe)
        except ConfigError:
            raise exc from None       # wrong whatever the head count
        # Only this checkpoint's head count refuses the layout, and the widget's tooltip quotes the
        # official figures: say where the other one comes from.
        raise ConfigError(f"{exc} (this checkpoint's config.json has num_heads="
                          f"{model_num_heads(task_, ckpt_dir)}; the official {task_.value} has "
                          f"{official.num_heads})") from None
    return spec


class Wan22MGModelLoader:
    DESCRIPTION = ("Starts a persistent group of worker processes (one per GPU) that load a Wan2.2 "
                   "checkpoint from models/wan22/ and keep it loaded between prompts.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (ENGINE,)
    RETURN_NAMES = ("engine",)
    OUTPUT_TOOLTIPS = ("a handle on the worker group; connect it to Wan22MG Sampler",)

    @classmethod
    def INPUT_TYPES(cls):
        names = checkpoints.list_checkpoints() or [checkpoints.NONE_FOUND]
        return {
            "required": {
                "task": ([t.value for t in Task], {"default": Task.T2V_A14B.value,
                         "tooltip": "which Wan2.2 model the checkpoint holds"}),
                "checkpoint": (names, {"tooltip": "a folder in ComfyUI/models/wan22/ in the official "
                               "Hugging Face layout (see the workflow's note)"}),
                "gpus": ("INT", {"default": 1, "min": 1, "max": MAX_GPUS,
                         "tooltip": "worker processes, one per GPU (gloo ranks when device is cpu)"}),
                "ulysses_size": ("INT", {"default": 1, "min": 1, "max": MAX_GPUS,
                                 "tooltip": "sequence-parallel degree; gpus = ulysses_size x (2 if "
                                 "cfg_parallel else 1); must divide the head count (14B: 40, 5B: 24)"}),
                "cfg_parallel": ("BOOLEAN", {"default": False, "tooltip": "run the prompt and the "
                                 "negative prompt on different GPUs (halves the ulysses degree)"}),
                "dit_fsdp": ("BOOLEAN", {"default": False, "tooltip": "shard the DiT weights over "
                             "the GPUs (FSDP2): each GPU holds 1/N of both experts"}),
                "t5_fsdp": ("BOOLEAN", {"default": False, "tooltip": "shard the T5 text encoder "
                            "over the GPUs"}),
                "t5_cpu": ("BOOLEAN", {"default": False, "tooltip": "run the T5 text encoder on the "
                           "CPU (saves ~11 GB of GPU memory)"}),
                "offload": ([m.value for m in OffloadMode], {"default": OffloadMode.NONE.value,
                            "tooltip": "none: all weights on the GPU; experts: the idle MoE expert "
                            "waits in CPU memory; blocks: stream blocks from CPU (smallest, slowest)"}),
                "dtype": ([d.value for d in ParamDtype], {"default": ParamDtype.BF16.value,
                          "tooltip": "weight dtype (official: bf16)"}),
                "attention": ([a.value for a in AttentionBackend], {"default": AttentionBackend.AUTO.value,
                              "tooltip": "attention kernel; auto picks the fastest one installed"}),
                "device": (["cuda", "cpu"], {"default": "cuda", "tooltip": "cuda: GPUs; cpu: CPU "
                           "ranks joined by gloo (for tests and tiny models)"}),
            },
            "optional": {
                "gpu_ids": ("STRING", {"default": "", "tooltip": "which GPUs, e.g. '2,3'; empty = the "
                            "first `gpus` GPUs visible to ComfyUI"}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def load(self, task, checkpoint, gpus, ulysses_size, cfg_parallel, dit_fsdp, t5_fsdp, t5_cpu,
             offload, dtype, attention, device, gpu_ids="", unique_id=None):
        from wan_core.pipeline.engine import check_checkpoint

        spec = build_spec(task, checkpoints.resolve(checkpoint), gpus, ulysses_size, cfg_parallel,
                          dit_fsdp, t5_fsdp, t5_cpu, offload, dtype, attention, device, gpu_ids)
        # Every file there, the right task, no truncated shard: said here, before any worker starts.
        check_checkpoint(spec.ckpt_dir, spec.task)
        relay = NodeProgress(unique_id)
        try:
            REGISTRY.ensure(spec, relay.on_progress, relay.should_cancel)
        except Cancelled:
            relay.raise_if_interrupted()   # -> execution_interrupted
            raise
        return (EngineHandle(spec=spec, checkpoint=checkpoint),)


class Wan22MGRelease:
    DESCRIPTION = ("Ends the worker group of the connected loader and frees its GPUs. Connect "
                   "`after` to the last output (e.g. the saved video) so it runs at the end. "
                   "ComfyUI's 'Free model and node cache' ends every group too.")
    CATEGORY = CATEGORY
    FUNCTION = "release"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"engine": (ENGINE, {})},
                "optional": {"after": ("*", {"tooltip": "anything that must be finished first"})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return math.nan       # an action: run it every time it is queued

    def release(self, engine, after=None):
        count = REGISTRY.release(engine.spec)
        text = f"released {count} worker group(s) of {engine.checkpoint}"
        return {"ui": {"text": [text]}, "result": ()}
