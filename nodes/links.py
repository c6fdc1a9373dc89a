"""Inputs that only take a link: a saved or API prompt that types a value there instead.

ComfyUI checks the values of its own widget types (INT, FLOAT, STRING, BOOLEAN, combos) when a
prompt is queued, but passes a literal given for any other input type (a custom socket such as
WAN22MG_ENGINE, or IMAGE/AUDIO) straight to the node: `"engine": "x"` then failed deep inside
with `'str' object has no attribute 'task'`. Every node of this pack calls `require_links` first
in `execute`, with its link-only inputs; one rule, one message: the node, the input, the value and
what to connect. Pure Python (no ComfyUI import): tests call it directly.
"""
from __future__ import annotations

from typing import Callable, Union

from wan_core.errors import InputError

from . import types as T

Check = Callable[[object], bool]

# socket type -> (what a linked value is, where it comes from)
SOURCES: dict[str, tuple[Check, str]] = {
    T.ENGINE: (lambda v: isinstance(v, T.EngineHandle),
               "the 'engine' output of a Wan2.2 Multi-GPU Model Loader"),
    T.TEXT: (lambda v: isinstance(v, T.TextPrompt), "the 'text' output of a Wan2.2 Multi-GPU Prompt node"),
    T.EXPERTS: (lambda v: isinstance(v, T.ExpertRouting),
                "the 'experts' output of a Wan2.2 Multi-GPU Expert Router (or leave it unconnected)"),
    T.AUDIO: (lambda v: isinstance(v, T.SpeechInput), "the 'audio' output of a Wan2.2 Multi-GPU Speech node"),
    T.LATENT: (lambda v: isinstance(v, T.WanLatent), "the 'latent' output of a Wan2.2 Multi-GPU Sampler"),
    "IMAGE": (lambda v: hasattr(v, "shape") and hasattr(v, "dtype"),
              "an IMAGE output (e.g. a Load Image node)"),
    "AUDIO": (lambda v: isinstance(v, dict) and "waveform" in v and "sample_rate" in v,
              "an AUDIO output (e.g. a Load Audio node)"),
    "LATENT": (lambda v: isinstance(v, dict) and "samples" in v,
               "a LATENT output (e.g. a Load Latent node, or the sampler's LATENT)"),
    "CONDITIONING": (lambda v: isinstance(v, list),
                     "a CONDITIONING output (e.g. CLIPTextEncode with the Wan umT5 text encoder)"),
}


def literal_error(node: str, name: str, socket: str, value: object) -> Union[str, None]:
    """The message for input `name` (socket type `socket`) of `node` when `value` is not what a
    link delivers, else None. A None value (optional input left unconnected) is fine."""
    if value is None or socket not in SOURCES:
        return None
    check, source = SOURCES[socket]
    if check(value):
        return None
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return (f"{node}: input '{name}' takes a link ({socket}), but the prompt gives it the value "
            f"{shown} ({type(value).__name__}); connect {source} to it (in an API prompt: "
            f"\"{name}\": [\"<node id>\", <output index>])")


def require_links(node: Union[str, Callable[[], str]], **inputs: tuple[str, object]) -> None:
    """`require_links(label, engine=(ENGINE, engine), text=(TEXT, text), ...)`: InputError for the
    first input whose value no link could have delivered. `node` names the node (a callable is
    only called when there is something to report)."""
    for name, (socket, value) in inputs.items():
        if value is None or (socket in SOURCES and SOURCES[socket][0](value)):
            continue
        label = node() if callable(node) else node
        message = literal_error(label, name, socket, value)
        if message:
            raise InputError(message)


def node_label(cls) -> str:
    """'Wan2.2 Multi-GPU Sampler (node 7)' for a V3 node class while it executes."""
    try:
        display = cls.define_schema().display_name or cls.__name__
    except Exception:  # noqa: BLE001 - a label must never fail
        display = cls.__name__
    hidden = getattr(cls, "hidden", None)
    unique_id = getattr(hidden, "unique_id", None) if hidden is not None else None
    return f"{display} (node {unique_id})" if unique_id is not None else display
