"""The official `wav2vec2-large-xlsr-53-english/` folder -> `models.wav2vec2.Wav2Vec2Encoder`.

A transformers `Wav2Vec2ForCTC` saved with `save_pretrained`: config.json (+ optional
preprocessor_config.json) and model.safetensors, or pytorch_model.bin read with
`torch.load(weights_only=True)`. Keys lose the `wav2vec2.` prefix, the CTC head and training-only
tensors are dropped, and the positional conv's weight norm is folded into one weight.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Union

import torch

from ..errors import CheckpointError
from ..models.wav2vec2 import FOLDER_NAME, Wav2Vec2Config, Wav2Vec2Encoder
from .checkpoint import TensorSource, check_keys, load_pth
from .detect import read_json
from .transforms import cast_module

log = logging.getLogger("wan_core.wav2vec2")

LAYOUT = (f"expected <ckpt_dir>/{FOLDER_NAME}/ with config.json and model.safetensors (or "
          "pytorch_model.bin), as in the official Wan2.2-S2V-14B download (also optional: "
          "preprocessor_config.json)")


def read_wav2vec2_config(folder: Union[str, Path]) -> Wav2Vec2Config:
    """config.json (+ preprocessor_config.json when present) -> `Wav2Vec2Config`."""
    folder = Path(folder)
    path = folder / "config.json"
    d = read_json(path, LAYOUT)
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        p = read_json(pre, LAYOUT)
        d = {**d, "do_normalize": p.get("do_normalize", True),
             "sampling_rate": p.get("sampling_rate", 16000)}
    return Wav2Vec2Config.from_dict(d, str(path))


def _weight_files(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder} has neither model.safetensors nor pytorch_model.bin; {LAYOUT}")


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        with TensorSource.from_file(path) as src:
            return {k: src.get(k) for k in src.keys()}
    return load_pth(path)


def _fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """weight = g * v / ||v||, the norm over every dim except 2 (torch weight_norm with dim=2)."""
    g, v = g.double(), v.double()
    norm = v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
    return (g * v / norm).float()


def convert_state_dict(state: dict[str, torch.Tensor], where: str = "") -> dict[str, torch.Tensor]:
    """Checkpoint keys -> `Wav2Vec2Encoder` keys: strip `wav2vec2.`, drop the CTC head and the
    training-only tensors, fold the positional conv's weight norm (old `weight_g`/`weight_v` or new
    `parametrizations.weight.original0/1` names)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        name = k[len("wav2vec2."):] if k.startswith("wav2vec2.") else k
        if name.startswith(("lm_head.", "masked_spec_embed", "quantizer.", "project_q.", "project_hid.",
                            "dropout_features", "adapter.")):
            continue
        out[name] = v
    base = "encoder.pos_conv_embed.conv."
    pairs = [(base + "weight_g", base + "weight_v"),
             (base + "parametrizations.weight.original0", base + "parametrizations.weight.original1")]
    for gk, vk in pairs:
        if gk in out and vk in out:
            out[base + "weight"] = _fold_weight_norm(out.pop(gk), out.pop(vk))
    if base + "weight" not in out:
        raise CheckpointError(f"{where}: the positional conv weight is missing (expected "
                              f"wav2vec2.{base}weight_g/weight_v or parametrizations.weight.original0/1)")
    return out


def load_wav2vec2(folder: Union[str, Path], device: Union[str, torch.device] = "cpu",
                  dtype: torch.dtype = torch.float32) -> Wav2Vec2Encoder:
    """`Wav2Vec2Encoder` from the official folder (the official encoder runs on CPU in float32)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"wav2vec2 folder {folder} does not exist; {LAYOUT}")
    t0 = time.perf_counter()
    cfg = read_wav2vec2_config(folder)
    wfile = _weight_files(folder)
    state = convert_state_dict(_read_state(wfile), str(wfile))
    model = Wav2Vec2Encoder(cfg)
    check_keys(model.state_dict().keys(), TensorSource.from_state_dict(state, str(wfile)), "wav2vec2 encoder")
    for name, param in model.state_dict().items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise CheckpointError(f"{wfile}: tensor {name!r} has shape {list(state[name].shape)} but "
                                  f"config.json implies {list(param.shape)}; config and weights disagree")
    model.load_state_dict(state, strict=True)
    cast_module(model.to(device=device), dtype).eval().requires_grad_(False)
    log.info("loaded wav2vec2 (%d layers, hidden %d) from %s in %.1f s", cfg.num_hidden_layers,
             cfg.hidden_size, folder, time.perf_counter() - t0)
    return model


__all__ = ["load_wav2vec2", "read_wav2vec2_config", "convert_state_dict", "FOLDER_NAME", "LAYOUT"]
