"""Relay between one node execution and the engine: progress out, cancel in.

- every engine `Progress` becomes a phase text on the node (ComfyUI's progress-text channel) and a
  `wan22mg.progress` websocket event; denoising steps also drive the node's ProgressBar;
- when ComfyUI shows sampler previews (`--preview-method`, or the prompt's `preview_method`), each
  denoising step carries the engine's latent preview (issue 5) to that ProgressBar, which sends it
  to the browser as ComfyUI's binary preview image;
- `should_cancel` is ComfyUI's interrupt flag (the Cancel button, POST /interrupt): the engine
  stops every rank at the next step boundary and the node then raises ComfyUI's interrupt.
"""
from __future__ import annotations

import logging
from typing import Optional

log = logging.getLogger(__name__)

EVENT = "wan22mg.progress"
_LABELS = {"load": "loading", "shard": "sharding", "encode": "encoding", "denoise": "step",
           "decode": "decoding", "audio": "encoding audio"}


def describe(phase: str, step: Optional[int], total: Optional[int], message: str = "") -> str:
    """The engine's own message ('step 3/40 (high_noise_model)', 'decoding the video'...), else
    'step 3/40', 'loading', 'decoding'..."""
    if message:
        return message
    label = _LABELS.get(phase, phase)
    return f"{label} {step}/{total}" if phase == "denoise" and total else label


def _server():
    try:
        from server import PromptServer
    except ImportError:          # not inside ComfyUI (unit tests)
        return None
    return getattr(PromptServer, "instance", None)


def previews_enabled() -> bool:
    """ComfyUI's own rule (latent_preview.get_previewer): previews unless the method is
    NoPreviews. ComfyUI sets it per prompt before executing, so ask at each node execution. Any
    other method (auto, latent2rgb, taesd) gets the engine's latent2rgb preview: the pack has no
    TAESD decoder of its own."""
    try:
        from comfy.cli_args import LatentPreviewMethod, args
    except ImportError:          # not inside ComfyUI (unit tests)
        return False
    return args.preview_method != LatentPreviewMethod.NoPreviews


def comfy_preview(image) -> tuple:
    """uint8 [H, W, 3] tensor -> what `ProgressBar.update_absolute` takes as its preview:
    ("JPEG", PIL image, max size), as ComfyUI's latent_preview makes it (the server scales it to
    fit --preview-size and encodes it)."""
    from comfy.cli_args import args
    from PIL import Image

    return ("JPEG", Image.fromarray(image.numpy()), args.preview_size)


def send_event(event: str, data: dict) -> None:
    server = _server()
    if server is not None:
        server.send_sync(event, data, server.client_id)


class NodeProgress:
    """Callbacks for one node execution (`on_progress`, `should_cancel`), plus the last phase text
    (read by the status route)."""

    def __init__(self, node_id: Optional[str], want_preview: bool = False) -> None:
        self.node_id = node_id
        self.want_preview = want_preview     # pass to the engine; events then carry `preview`
        self.text = ""
        self._bar = None

    def on_progress(self, progress) -> None:
        phase = str(getattr(progress, "phase", ""))
        step, total = getattr(progress, "step", None), getattr(progress, "total", None)
        self.text = describe(phase, step, total, str(getattr(progress, "message", "") or ""))
        server = _server()
        if server is not None:
            if self.node_id is not None:
                server.send_progress_text(self.text, self.node_id, server.client_id)
            server.send_sync(EVENT, {"node": self.node_id, "phase": phase, "step": step, "total": total,
                                     "text": self.text}, server.client_id)
        if phase == "denoise" and total:
            self._update_bar(int(step or 0), int(total), getattr(progress, "preview", None))

    def _update_bar(self, step: int, total: int, preview=None) -> None:
        import comfy.utils

        if self._bar is None or self._bar.total != total:
            self._bar = comfy.utils.ProgressBar(total, node_id=self.node_id)
        # ComfyUI's progress hook raises InterruptProcessingException once Cancel was pressed; the
        # engine client then stops every rank and re-raises it (-> execution_interrupted).
        self._bar.update_absolute(step, total, comfy_preview(preview) if preview is not None else None)

    @staticmethod
    def should_cancel() -> bool:
        import comfy.model_management

        return comfy.model_management.processing_interrupted()

    @staticmethod
    def raise_if_interrupted() -> None:
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()
