"""Relay between one node execution and the engine: progress out, cancel in.

- every engine `Progress` becomes a phase text on the node (ComfyUI's progress-text channel) and a
  `wan22mg.progress` websocket event; denoising steps also drive the node's ProgressBar;
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


def send_event(event: str, data: dict) -> None:
    server = _server()
    if server is not None:
        server.send_sync(event, data, server.client_id)


class NodeProgress:
    """Callbacks for one node execution (`on_progress`, `should_cancel`), plus the last phase text
    (read by the status route)."""

    def __init__(self, node_id: Optional[str]) -> None:
        self.node_id = node_id
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
            self._update_bar(int(step or 0), int(total))

    def _update_bar(self, step: int, total: int) -> None:
        import comfy.utils

        if self._bar is None or self._bar.total != total:
            self._bar = comfy.utils.ProgressBar(total, node_id=self.node_id)
        # ComfyUI's progress hook raises InterruptProcessingException once Cancel was pressed; the
        # engine client then stops every rank and re-raises it (-> execution_interrupted).
        self._bar.update_absolute(step, total)

    @staticmethod
    def should_cancel() -> bool:
        import comfy.model_management

        return comfy.model_management.processing_interrupted()

    @staticmethod
    def raise_if_interrupted() -> None:
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()
