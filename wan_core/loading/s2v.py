"""S2V-14B checkpoint -> `WanModelS2V` and the wav2vec2 encoder (official Wan2.2-S2V-14B layout).

    Wan2.2-S2V-14B/config.json                               (_class_name "WanModel_S2V")
    Wan2.2-S2V-14B/diffusion_pytorch_model.safetensors.index.json + the shards it names
    Wan2.2-S2V-14B/wav2vec2-large-xlsr-53-english/           (config.json + model.safetensors or
                                                              pytorch_model.bin)
Built on the meta device and materialised tensor by tensor in the target dtype/device, like
`load_dit`. The official pipeline loads the S2V DiT in bf16 (`torch_dtype=param_dtype`).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Union

import torch

from ..errors import CheckpointError
from .checkpoint import TensorSource, materialize
from .detect import detect_variant, read_config

log = logging.getLogger("wan_core.loading")


def load_s2v_dit(folder: Union[str, Path], dtype: torch.dtype = torch.bfloat16,
                 device: Union[str, torch.device] = "cpu", kernel=None):
    """`WanModelS2V` from an official S2V folder, parameters in `dtype` on `device`."""
    from ..models.s2v import S2VConfig, WanModelS2V

    folder = Path(folder)
    cfg_dict = read_config(folder)
    t0 = time.perf_counter()
    with TensorSource.from_folder(folder) as source:
        variant = detect_variant(folder, source.keys(), cfg_dict)
        if not variant.is_s2v:
            raise CheckpointError(f"{folder} holds a {variant.model_type} WanModel, not an S2V model "
                                  "(WanModel_S2V); use it with its own task")
        try:
            cfg = S2VConfig.from_dict(cfg_dict)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{folder / 'config.json'}: {exc}") from None
        with torch.device("meta"):
            model = WanModelS2V(cfg, kernel=kernel)
        materialize(model, source, dtype, device, what="WanModel_S2V")
    model.eval()
    log.info("loaded S2V DiT from %s in %.1f s (%s, %s)", folder, time.perf_counter() - t0, dtype, device)
    return model


def load_s2v_audio_encoder(ckpt_dir: Union[str, Path], device: Union[str, torch.device] = "cpu",
                           dtype: torch.dtype = torch.float32):
    """The wav2vec2 encoder of an S2V checkpoint folder (`<ckpt_dir>/wav2vec2-large-xlsr-53-english`)."""
    from ..models.wav2vec2 import FOLDER_NAME, load_wav2vec2

    return load_wav2vec2(Path(ckpt_dir) / FOLDER_NAME, device=device, dtype=dtype)


__all__ = ["load_s2v_dit", "load_s2v_audio_encoder"]
