"""The pack's V3 entry: every node family's NODES, handed to ComfyUI by `comfy_entrypoint` (the
root __init__.py calls it lazily, so importing the pack stays light). A new family is one module
with a NODES list, added to FAMILIES."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension

from . import conditioning_nodes, engine_nodes, lora_nodes, sampling_nodes

FAMILIES = (engine_nodes, lora_nodes, conditioning_nodes, sampling_nodes)


def node_classes() -> list:
    return [cls for family in FAMILIES for cls in family.NODES]


class Wan22MGExtension(ComfyExtension):
    async def get_node_list(self) -> list:
        return node_classes()


async def comfy_entrypoint() -> Wan22MGExtension:
    return Wan22MGExtension()
