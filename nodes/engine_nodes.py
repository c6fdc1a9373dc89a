"""Wan22MGModelLoader and Wan22MGRelease: start and end worker groups."""
from __future__ import annotations

import math

from comfy_api.latest import io

from wan_core.config import AttentionBackend, OffloadMode, ParamDtype, Task, WeightsMode
from wan_core.errors import Cancelled

from . import checkpoints, types
from .links import node_label, require_links
from .progress import NodeProgress
from .registry import REGISTRY
from .requests import build_spec
from .sockets import Engine, schema, tip
from .types import EngineHandle

MAX_GPUS = 8


class Wan22MGModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = checkpoints.list_checkpoints() + [checkpoints.COMPONENTS]
        parts = [io.Combo.Input(part, options=checkpoints.list_part_files(part), default=checkpoints.FROM_CHECKPOINT,
                                optional=True, tooltip=tip(f"ModelFiles.{part}"))
                 for part in ("dit_high_noise", "dit_low_noise", "dit", "text_encoder", "vae", "audio_encoder")]
        return schema(
            "Wan22MGModelLoader", "Wan2.2 Multi-GPU Model Loader",
            "Starts a persistent group of worker processes (one per GPU) that load a Wan2.2 "
            "checkpoint from models/wan22/ and keep it loaded between prompts.",
            ["load wan", "wan loader", "fsdp", "ulysses", "sequence parallel"],
            inputs=[
                io.Combo.Input("task", options=[t.value for t in Task], default=Task.T2V_A14B.value,
                               tooltip=tip("EngineSpec.task")),
                io.Combo.Input("checkpoint", options=names, tooltip="a folder in ComfyUI/models/wan22/ "
                               "in the official Hugging Face layout (see the workflow's note)"),
                io.Int.Input("gpus", default=1, min=1, max=MAX_GPUS, tooltip=tip("ParallelConfig.num_gpus")),
                io.Int.Input("ulysses_size", default=1, min=1, max=MAX_GPUS,
                             tooltip=tip("ParallelConfig.ulysses_size")),
                io.Boolean.Input("cfg_parallel", default=False, tooltip=tip("ParallelConfig.cfg_parallel")),
                io.Boolean.Input("dit_fsdp", default=False, tooltip=tip("ParallelConfig.dit_fsdp")),
                io.Boolean.Input("t5_fsdp", default=False, tooltip=tip("ParallelConfig.t5_fsdp")),
                io.Boolean.Input("t5_cpu", default=False, tooltip=tip("ParallelConfig.t5_cpu")),
                io.Combo.Input("offload", options=OffloadMode, default=OffloadMode.NONE,
                               tooltip=tip("ParallelConfig.offload")),
                io.Combo.Input("dtype", options=ParamDtype, default=ParamDtype.BF16,
                               tooltip=tip("EngineSpec.param_dtype")),
                io.Combo.Input("attention", options=AttentionBackend, default=AttentionBackend.AUTO,
                               tooltip=tip("EngineSpec.attention")),
                io.Combo.Input("device", options=["cuda", "cpu"], default="cuda", tooltip=tip("EngineSpec.device")),
                io.String.Input("gpu_ids", default="", optional=True, tooltip=tip("ParallelConfig.gpu_ids")),
                io.Combo.Input("weights", options=WeightsMode, default=WeightsMode.AUTO, optional=True,
                               tooltip=tip("EngineSpec.weights")),
                *parts,
            ],
            outputs=[Engine.Output("engine", display_name="engine", tooltip="a handle on the worker "
                                   "group; connect it to the Wan2.2 Multi-GPU Sampler")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, task=None, dit_high_noise=None, dit_low_noise=None, dit=None, text_encoder=None,
                        vae=None, audio_encoder=None):
        """A saved workflow naming a file that is not in its folder: the file, the folder and where to
        download it (instead of ComfyUI's bare 'value not in list'); parts the task lacks are ignored."""
        from wan_core.errors import WanEngineError

        chosen = dict(dit_high_noise=dit_high_noise, dit_low_noise=dit_low_noise, dit=dit,
                      text_encoder=text_encoder, vae=vae, audio_encoder=audio_encoder)
        try:
            used = _parts_of(task)
            for part, name in chosen.items():
                if part in used:
                    checkpoints.resolve_part(part, name)
        except WanEngineError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, task, checkpoint, gpus, ulysses_size, cfg_parallel, dit_fsdp, t5_fsdp, t5_cpu,
                offload, dtype, attention, device, gpu_ids="", weights=None, dit_high_noise=None,
                dit_low_noise=None, dit=None, text_encoder=None, vae=None, audio_encoder=None) -> io.NodeOutput:
        from wan_core.config import ModelFiles
        from wan_core.loading.check import check_checkpoint
        from wan_core.memory_plan import check_load

        chosen = dict(dit_high_noise=dit_high_noise, dit_low_noise=dit_low_noise, dit=dit,
                      text_encoder=text_encoder, vae=vae, audio_encoder=audio_encoder)
        used = _parts_of(task)   # hidden widgets (parts the task lacks) keep values that are ignored
        files = ModelFiles(**{part: checkpoints.resolve_part(part, name) for part, name in chosen.items()
                              if part in used})
        ckpt_dir = "" if checkpoint == checkpoints.COMPONENTS else _resolve(checkpoint, task)
        spec = build_spec(task, ckpt_dir, gpus, ulysses_size, cfg_parallel, dit_fsdp, t5_fsdp, t5_cpu,
                          offload, dtype, attention, device, gpu_ids, files=files,
                          weights=weights or "auto")
        # Every file there, the right task, no truncated shard: said here, before any worker starts.
        check_checkpoint(spec.ckpt_dir, spec.task, spec.files)
        # The memory plan: refuses (with what would fit) before an idle group is ended or a worker
        # starts when not even the smallest video fits; otherwise shown on the node.
        plan = check_load(spec)
        relay = NodeProgress(cls.hidden.unique_id if cls.hidden is not None else None)
        try:
            REGISTRY.ensure(spec, relay.on_progress, relay.should_cancel)
        except Cancelled:
            relay.raise_if_interrupted()   # -> execution_interrupted
            raise
        text = plan.summary() + ("" if plan.fits is not False else
                                 " - too big for the default request; smaller requests are checked each time")
        return io.NodeOutput(EngineHandle(spec=spec, checkpoint=checkpoint), ui={"text": [text]})


def _resolve(checkpoint: str, task: str) -> str:
    """The checkpoint's folder; when it is not there, the error says the command that downloads it."""
    import os
    import sys

    from wan_core.errors import CheckpointError

    try:
        return checkpoints.resolve(checkpoint)
    except CheckpointError as exc:
        pack = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        raise CheckpointError(f"{exc}\nto download {task} there: cd {pack} && {sys.executable} -m wan_core "
                              f"download {task}") from None


def _parts_of(task: str) -> set[str]:
    """The model-file widgets that apply to `task` (the web extension shows only these)."""
    t = Task.parse(task)
    moe = t in (Task.T2V_A14B, Task.I2V_A14B)
    parts = {"text_encoder", "vae"} | ({"dit_high_noise", "dit_low_noise"} if moe else {"dit"})
    return parts | ({"audio_encoder"} if t == Task.S2V_14B else set())


class Wan22MGRelease(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            "Wan22MGRelease", "Wan2.2 Multi-GPU Release GPUs",
            "Ends the worker group of the connected loader and frees its GPUs. Connect `after` to "
            "the last output (e.g. the saved video) so it runs at the end. ComfyUI's 'Free model "
            "and node cache' ends every group too.",
            ["free gpu", "unload wan", "release"],
            inputs=[Engine.Input("engine", tooltip="the loader whose worker group ends"),
                    io.AnyType.Input("after", optional=True, tooltip="anything that must be finished first")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return math.nan       # an action: run it every time it is queued

    @classmethod
    def execute(cls, engine, after=None) -> io.NodeOutput:
        require_links(lambda: node_label(cls), engine=(types.ENGINE, engine))
        count = REGISTRY.release(engine.spec)
        return io.NodeOutput(ui={"text": [f"released {count} worker group(s) of {engine.checkpoint}"]})


NODES = [Wan22MGModelLoader, Wan22MGRelease]
