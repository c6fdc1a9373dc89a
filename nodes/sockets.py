"""What every node family shares in ComfyUI's V3 schema (`comfy_api.latest.io`): this pack's socket
types, the category, the search aliases and the tooltip source.

Imported only inside ComfyUI (or with ComfyUI's source on sys.path, as the schema tests do): the
rest of `nodes/` (requests, conversions, registry) imports neither ComfyUI nor torch.
"""
from __future__ import annotations

from comfy_api.latest import io

from wan_core.field_docs import describe as tip   # re-exported: one description per field

from . import types

# Next to ComfyUI's own Wan nodes (model/conditioning/wan/...), so browsing the Add Node menu for
# Wan finds both; our display names all start with "Wan2.2 Multi-GPU".
CATEGORY = "model/conditioning/wan/multi-gpu"
# Every node answers these in the node search (typing "wan" also matches the display names).
ALIASES = ["wan", "wan2.2", "wan 2.2", "wan22", "multi-gpu", "multigpu"]

# This pack's sockets (the type names are part of saved workflows: see types.py).
Engine = io.Custom(types.ENGINE)
Text = io.Custom(types.TEXT)
Experts = io.Custom(types.EXPERTS)
Speech = io.Custom(types.AUDIO)
Result = io.Custom(types.LATENT)


def schema(node_id: str, display_name: str, description: str, aliases: list[str], **kwargs) -> io.Schema:
    """io.Schema with this pack's category and common search aliases."""
    return io.Schema(node_id=node_id, display_name=display_name, category=CATEGORY,
                     description=description, search_aliases=ALIASES + aliases, **kwargs)


__all__ = ["CATEGORY", "ALIASES", "Engine", "Text", "Experts", "Speech", "Result", "schema", "tip"]
