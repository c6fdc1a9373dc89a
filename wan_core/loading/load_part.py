"""S2V's audio encoder from whatever holds it: the official `wav2vec2-large-xlsr-53-english/`
folder or ComfyUI's single file (`loading.parts.Parts.audio_encoder`)."""
from __future__ import annotations

from typing import Union

import torch

from .components import load_wav2vec2_file
from .parts import Parts
from .wav2vec2 import load_wav2vec2


def load_audio_encoder_part(parts: Parts, device: Union[str, torch.device], dtype: torch.dtype = torch.float32):
    """S2V's wav2vec2 (float32, the official precision, by default)."""
    path = parts.audio_encoder
    if path.is_file():
        return load_wav2vec2_file(path, device=device, dtype=dtype)
    return load_wav2vec2(path, device=device, dtype=dtype)


__all__ = ["load_audio_encoder_part"]
