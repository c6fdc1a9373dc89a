"""S2V-14B checkpoint -> `WanModelS2V` and the wav2vec2 encoder (official Wan2.2-S2V-14B layout).

    Wan2.2-S2V-14B/config.json                               (_class_name "WanModel_S2V")
    Wan2.2-S2V-14B/diffusion_pytorch_model.safetensors.index.json + the shards it names
    Wan2.2-S2V-14B/wav2vec2-large-xlsr-53-english/           (config.json + model.safetensors or
                                                              pytorch_model.bin)
Built on the meta device and materialised tensor by tensor in the target dtype/device by
`load_dit(..., s2v=True)` (the same `dit_on_meta` start as every DiT). The official pipeline
loads the S2V DiT in bf16 (`torch_dtype=param_dtype`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from .checkpoint import load_dit
from .wav2vec2 import FOLDER_NAME, load_wav2vec2


def load_s2v_dit(folder: Union[str, Path], dtype: torch.dtype = torch.bfloat16,
                 device: Union[str, torch.device] = "cpu", kernel=None):
    """`WanModelS2V` from an official S2V folder, parameters in `dtype` on `device`."""
    return load_dit(folder, dtype, device, kernel, s2v=True)


def load_s2v_audio_encoder(ckpt_dir: Union[str, Path], device: Union[str, torch.device] = "cpu",
                           dtype: torch.dtype = torch.float32):
    """The wav2vec2 encoder of an S2V checkpoint folder (`<ckpt_dir>/wav2vec2-large-xlsr-53-english`)."""
    return load_wav2vec2(Path(ckpt_dir) / FOLDER_NAME, device=device, dtype=dtype)


__all__ = ["load_s2v_dit", "load_s2v_audio_encoder"]
