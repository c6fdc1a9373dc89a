"""ComfyUI entry point of the Wan2.2 Multi-GPU pack.

Registers the nodes, the `models/wan22` folder, our HTTP routes and the web extension. It does no
CUDA work, starts no process and does not import torch (ComfyUI has; the engine's workers are
started by the loader node when a prompt runs).

The pack root goes on sys.path (appended, so it never shadows ComfyUI's own modules such as
`nodes`): the engine must import as the top-level package `wan_core` here and in the worker
processes, or messages pickled on one side would not resolve on the other.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web"


def _install_into_comfyui() -> None:
    try:
        import folder_paths  # noqa: F401
        from server import PromptServer
    except ImportError:      # imported outside ComfyUI (tests, tools)
        return
    from .nodes import checkpoints, routes

    checkpoints.register()
    server = getattr(PromptServer, "instance", None)
    if server is not None:   # absent when ComfyUI is imported in-process without a server
        routes.install(server)


_install_into_comfyui()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
