"""Wan22MGLoRA: adds a LoRA (from ComfyUI's models/loras) to the engine handle, chainable.

The LoRA list travels with the handle to the sampler's request; the workers apply the difference
from the previous prompt (wan_core/loading/lora.py): no base weight is read again and the worker
group is not restarted when LoRAs or strengths change.
"""
from __future__ import annotations

import os
from dataclasses import replace

from comfy_api.latest import io

from wan_core.config import LoraSpec, LoraTarget
from wan_core.errors import InputError

from . import types
from .links import node_label, require_links
from .sockets import Engine, schema, tip

FOLDER = "loras"
NONE_FOUND = "(no LoRA in models/loras)"


def list_loras() -> list[str]:
    try:
        import folder_paths

        return [n for n in folder_paths.get_filename_list(FOLDER) if n.lower().endswith(".safetensors")]
    except (ImportError, KeyError):
        return []


def resolve(name: str) -> str:
    """A name from the widget -> its file, only if ComfyUI still lists it (no arbitrary paths)."""
    path = None
    if name in list_loras():
        import folder_paths

        path = folder_paths.get_full_path(FOLDER, name)
    if path is None or not os.path.isfile(path):
        raise InputError(f"LoRA {name!r} is not in ComfyUI's models/loras folder; download it there "
                         "(the workflow's model list has its URL) or pick another LoRA")
    return path


class Wan22MGLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = list_loras() or [NONE_FOUND]
        return schema(
            "Wan22MGLoRA", "Wan2.2 Multi-GPU LoRA",
            "Applies a LoRA to the loaded model's experts (chain several). Changing LoRAs or strengths "
            "between prompts keeps the model loaded: the GPUs apply only the difference.",
            ["lora", "lightx2v", "4 steps", "distill", "style lora", "LoraLoaderModelOnly"],
            inputs=[
                Engine.Input("engine", tooltip="from the Wan2.2 Multi-GPU Model Loader (or another LoRA node)"),
                io.Combo.Input("lora_name", options=names, tooltip=tip("LoraSpec.path")),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01, round=0.001,
                               tooltip=tip("LoraSpec.strength")),
                io.Combo.Input("expert", options=LoraTarget, default=LoraTarget.BOTH,
                               tooltip=tip("LoraSpec.expert")),
            ],
            outputs=[Engine.Output("engine", display_name="engine",
                                   tooltip="the same worker group, with this LoRA added")],
        )

    @classmethod
    def execute(cls, engine, lora_name, strength, expert) -> io.NodeOutput:
        require_links(lambda: node_label(cls), engine=(types.ENGINE, engine))
        if lora_name == NONE_FOUND:
            raise InputError("no LoRA in ComfyUI's models/loras folder: put a Wan2.2 LoRA .safetensors there")
        try:
            strength = float(strength)
        except (TypeError, ValueError):
            raise InputError(f"LoRA {lora_name}: strength {strength!r} is not a number") from None
        target = LoraTarget(getattr(expert, "value", expert))
        if target != LoraTarget.BOTH:
            from wan_core.config import TASKS

            if not TASKS[engine.task].moe:
                raise InputError(f"LoRA {lora_name}: expert={target.value!r} but {engine.task.value} has a "
                                 "single model; use expert 'both'")
        spec = LoraSpec(path=resolve(lora_name), strength=strength, expert=target).checked()
        return io.NodeOutput(replace(engine, loras=tuple(engine.loras) + (spec,)))


NODES = [Wan22MGLoRA]
