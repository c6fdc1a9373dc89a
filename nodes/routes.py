"""HTTP side of the pack, installed once when ComfyUI loads it:

GET  /wan22mg/status    the worker groups: task, layout, phase, loads, each rank's phase and memory
POST /wan22mg/release   end every group (what Wan22MGRelease does for one)
POST /free              ComfyUI's own route ("Free model and node cache"): watched by a middleware
                        that ends our groups too (after a running request finishes), since ComfyUI
                        only unloads the models it loaded itself.
Every route also answers under /api/... (ComfyUI mirrors them).
"""
from __future__ import annotations

import asyncio
import logging

from .registry import REGISTRY

log = logging.getLogger(__name__)
_installed = False


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a status page must answer
        return 0


def status_payload() -> dict:
    from wan_core.config import TASKS

    from . import checkpoints

    out = REGISTRY.status()
    out["visible_gpus"] = _visible_gpus()
    out["checkpoints"] = checkpoints.list_checkpoints()
    # What the web extension needs to offer valid layouts (Ulysses degrees divide the head count).
    out["tasks"] = {t.value: {"num_heads": s.num_heads, "moe": s.moe} for t, s in TASKS.items()}
    return checkpoints.hide_paths(out)     # names relative to the model folders, never absolute paths


def install(server) -> None:
    global _installed
    if _installed:
        return
    from aiohttp import web

    @server.routes.get("/wan22mg/status")
    async def wan22mg_status(request):
        payload = await asyncio.get_running_loop().run_in_executor(None, status_payload)
        return web.json_response(payload)

    @server.routes.post("/wan22mg/release")
    async def wan22mg_release(request):
        count = REGISTRY.release(wait=False)
        return web.json_response({"released": count})

    @web.middleware
    async def watch_free(request, handler):
        response = await handler(request)
        if request.method == "POST" and request.path in ("/free", "/api/free") and response.status == 200:
            try:
                body = await request.json()
            except ValueError:
                body = {}
            if body.get("unload_models") or body.get("free_memory"):
                count = REGISTRY.release(wait=False)
                if count:
                    log.info("/free: ending %d Wan2.2 worker group(s)", count)
        return response

    server.app.middlewares.append(watch_free)
    _installed = True
