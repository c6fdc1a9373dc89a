"""ComfyUI entry point of the Wan2.2 Multi-GPU pack.

Registers the nodes (ComfyUI's V3 entry point `comfy_entrypoint`, which imports the node classes
only when ComfyUI calls it), the `models/wan22` folder, our HTTP routes and the web extension. It
does no CUDA work, starts no process and does not import torch (ComfyUI has; the engine's workers
are started by the loader node when a prompt runs).

The pack root goes on sys.path (appended, so it never shadows ComfyUI's own modules such as
`nodes`): the engine must import as the top-level package `wan_core` here and in the worker
processes, or messages pickled on one side would not resolve on the other.
"""
import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)


def _engine_of_this_pack() -> None:
    """Import `wan_core` from this folder even when a `pip install .` of the repository put an
    older copy in site-packages, which the appended sys.path entry would find first. The workers
    get this folder first on PYTHONPATH (runtime/processes.py), so both sides run the same code."""
    if "wan_core" in sys.modules:
        return
    folder = os.path.join(_ROOT, "wan_core")
    spec = importlib.util.spec_from_file_location(
        "wan_core", os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["wan_core"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["wan_core"]
        raise


WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """ComfyUI's V3 extension (nodes/extension.py): every node family's V3 node classes."""
    from .nodes.extension import Wan22MGExtension

    return Wan22MGExtension()


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


if __package__:
    # ComfyUI imports this file as a package named after the pack's folder.
    _engine_of_this_pack()
    _install_into_comfyui()
# else: imported as a plain top-level module, with no parent package for `.nodes`: pytest does this
# when it collects the repository root (it holds this __init__.py) from a folder whose name is not a
# Python identifier, such as the README's `comfyui-wan22-multigpu`. Nothing needs the nodes there
# (comfy_entrypoint is only called by ComfyUI, which imports the pack as a package).

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
