"""Model parts from ComfyUI single files (`loading/single_file.py` reads them): the DiT, the umT5
encoder and its tokenizer, the VAE and the wav2vec2 encoder, each built exactly as from the
official folder (same classes, same parameter names), values dequantized on read.

Configurations come from the tensor shapes, since a single file has no config.json:
- DiT: in_dim / dim / ffn_dim / freq_dim / layers / out_dim from the shapes, heads = dim / 128
  (every Wan model; ComfyUI's `model_detection.py` uses the same rule), text_len 512 (what
  ComfyUI's Wan tokenizer pads to); model_type from in_dim (16 t2v, 36 i2v, 48 ti2v) or the S2V
  layers; a `config` JSON in the file's metadata overrides (ComfyUI honours it too).
- wav2vec2: widths and layer count from the shapes, conv strides the official (5,2,2,2,2,2,2),
  heads = hidden / 64 (16 for the large model) unless the metadata `config` says otherwise.
- umT5: `T5Config.from_state_dict` on the shapes.
Tokenizer of a single umT5 file: the `spiece_model` the file carries (ComfyUI's files do), converted
by `loading/spiece.py`; else `google/umt5-xxl/tokenizer.json` of an official folder when one is
given; else a CheckpointError saying so.
"""
from __future__ import annotations

import json
import logging
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
import torch.nn as nn

from ..errors import CheckpointError
from .checkpoint import dit_from_config, materialize
from .detect import DiTVariant, detect_variant
from .single_file import FileInfo, SingleFileSource, inspect_file
from .tokenizer import PromptTokenizer

log = logging.getLogger("wan_core.loading")
PathLike = Union[str, Path]


def dit_file_config(path: PathLike) -> dict:
    """The config.json-equivalent dict of a DiT single file (from its header)."""
    return dict(inspect_file(path, expect="dit").details["config"])


@contextmanager
def dit_file_on_meta(path: PathLike, *, s2v: bool = False,
                     kernel=None) -> Iterator[tuple[nn.Module, SingleFileSource, DiTVariant]]:
    """`dit_on_meta` for a single file: (model on meta, open `SingleFileSource`, variant)."""
    path = Path(path)
    info = inspect_file(path, expect="dit")
    cfg_dict = info.details["config"]
    with SingleFileSource(info) as source:
        variant = detect_variant(path, source.keys(), cfg_dict)
        if variant.is_s2v != s2v:
            raise CheckpointError(
                f"{path} holds {'an S2V' if variant.is_s2v else f'a {variant.model_type}'} model; "
                f"{'use it with task s2v-14B' if variant.is_s2v else 'task s2v-14B needs the S2V model file (wan2.2_s2v_14B_*.safetensors)'}")
        yield dit_from_config(cfg_dict, s2v=s2v, kernel=kernel, where=path), source, variant


def load_dit_file(path: PathLike, dtype: Optional[torch.dtype] = torch.bfloat16,
                  device: Union[str, torch.device] = "cpu", kernel=None, *, s2v: bool = False) -> nn.Module:
    """`WanModel` / `WanModelS2V` from a ComfyUI single file, parameters in `dtype` on `device`."""
    t0 = time.perf_counter()
    with dit_file_on_meta(path, s2v=s2v, kernel=kernel) as (model, source, variant):
        materialize(model, source, dtype, device, what=f"{variant.model_type} {variant.class_name}")
    log.info("loaded %s DiT from %s in %.1f s", source.info.describe(), path, time.perf_counter() - t0)
    return model.eval()


# -- umT5 ----------------------------------------------------------------------------------------


def load_t5_file(path: PathLike, dtype: torch.dtype = torch.bfloat16,
                 device: Union[str, torch.device] = "cpu"):
    """The umT5 encoder of a ComfyUI text encoder file (HF T5 names) or of an official-named
    safetensors file; the same `T5Encoder` as the official `.pth` gives."""
    from ..models.t5 import T5Config, T5Encoder

    info = inspect_file(path, expect="text_encoder")
    with SingleFileSource(info) as source:
        shapes = {k: torch.empty(source.shape(k), device="meta") for k in source.keys()}
        try:
            cfg = T5Config.from_state_dict(shapes)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a umT5 encoder (missing or malformed {exc})") from None
        with torch.device("meta"):
            model = T5Encoder(cfg)
        materialize(model, source, dtype, device, what="umT5 encoder")
    return model.eval().requires_grad_(False)


def file_tokenizer(path: PathLike, text_len: int, fallback_dir: Optional[PathLike] = None):
    """(PromptTokenizer, where it came from) for the umT5 file `path`."""
    from tokenizers import Tokenizer

    info = inspect_file(path, expect="text_encoder")
    if info.details.get("tokenizer_in_file"):
        from .spiece import tokenizer_from_spm

        with SingleFileSource(info) as source:
            tok = tokenizer_from_spm(source.read_spiece_model(), where=f"{path}: spiece_model")
        return _tokenizer(tok, text_len, str(path)), f"{Path(path).name} (spiece_model)"
    if fallback_dir is not None and (Path(fallback_dir) / "tokenizer.json").is_file():
        tj = Path(fallback_dir) / "tokenizer.json"
        return _tokenizer(Tokenizer.from_file(str(tj)), text_len, str(tj)), str(tj)
    raise CheckpointError(
        f"{path} carries no tokenizer ('spiece_model') and no google/umt5-xxl/tokenizer.json was given; "
        "use ComfyUI's umt5_xxl_fp16.safetensors / umt5_xxl_fp8_e4m3fn_scaled.safetensors (they carry "
        "it) or also pass the official checkpoint folder (--ckpt_dir)")


def _tokenizer(tok, text_len: int, where: str):
    """A `PromptTokenizer` around an already built `tokenizers.Tokenizer`."""
    return PromptTokenizer.wrap(tok, text_len, where)


# -- VAE -----------------------------------------------------------------------------------------


def load_vae_file(path: PathLike, version: str, device: Union[str, torch.device] = "cpu",
                  dtype: torch.dtype = torch.float32):
    """ComfyUI's `wan_2.1_vae.safetensors` / `wan2.2_vae.safetensors` (official names, fp32/fp16/bf16)."""
    from .vae import load_vae

    info = inspect_file(path, expect="vae")
    if info.details["version"] != version:
        need = "wan2.2_vae.safetensors (TI2V-5B)" if version == "2.2" else "wan_2.1_vae.safetensors"
        raise CheckpointError(f"{path} is a Wan{info.details['version']} VAE (z_dim {info.details['z_dim']}); "
                              f"this task needs the Wan{version} VAE: {need}")
    return load_vae(path, version, device=device, dtype=dtype)


# -- wav2vec2 ------------------------------------------------------------------------------------

_W2V_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")
_W2V_CONV = re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.conv\.weight$")


def wav2vec2_file_config(info: FileInfo, source: SingleFileSource) -> dict:
    keys = [k[len(info.prefix):] if k.startswith(info.prefix) else k for k in source.keys()]
    shape = lambda k: source.shape(info.prefix + k if info.prefix + k in source else k)  # noqa: E731
    convs = sorted(int(m.group(1)) for k in keys if (m := _W2V_CONV.match(k)))
    hidden = shape("encoder.layer_norm.bias")[0]
    pos = next(k for k in keys if k.startswith("encoder.pos_conv_embed.conv.") and
               (k.endswith("weight_v") or k.endswith("original1") or k.endswith(".weight")))
    pos_shape = shape(pos)
    cfg = {"hidden_size": hidden,
           "num_hidden_layers": 1 + max(int(m.group(1)) for k in keys if (m := _W2V_LAYER.match(k))),
           "num_attention_heads": max(1, hidden // 64),
           "intermediate_size": shape("encoder.layers.0.feed_forward.intermediate_dense.weight")[0],
           "conv_dim": [shape(f"feature_extractor.conv_layers.{i}.conv.weight")[0] for i in convs],
           "conv_kernel": [shape(f"feature_extractor.conv_layers.{i}.conv.weight")[2] for i in convs],
           "conv_stride": [5, 2, 2, 2, 2, 2, 2][: len(convs)],
           "conv_bias": "feature_extractor.conv_layers.0.conv.bias" in keys,
           "num_conv_pos_embeddings": pos_shape[2],
           "num_conv_pos_embedding_groups": hidden // pos_shape[1],
           "feat_extract_norm": "layer", "do_stable_layer_norm": True}
    meta = source._handles[info.path].metadata() or {}
    if "config" in meta:
        cfg.update({k: v for k, v in json.loads(meta["config"]).items() if k in cfg or k == "do_normalize"})
    return cfg


def load_wav2vec2_file(path: PathLike, device: Union[str, torch.device] = "cpu",
                       dtype: torch.dtype = torch.float32):
    """ComfyUI's `wav2vec2_large_english_fp16.safetensors` as the S2V audio encoder (fp32 by default,
    the official precision)."""
    from ..models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder
    from .wav2vec2 import convert_state_dict

    path = Path(path)
    info = inspect_file(path, expect="audio_encoder")
    with SingleFileSource(info) as source:
        cfg = Wav2Vec2Config.from_dict(wav2vec2_file_config(info, source), str(path))
        state = convert_state_dict({k: source.get(k, torch.float32) for k in source.keys()}, str(path))
    model = Wav2Vec2Encoder(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        raise CheckpointError(f"{path} does not match a wav2vec2 encoder of the widths it implies "
                              f"(hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers): missing "
                              f"{missing[:4]}, wrong shape {wrong[:4]}")
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


__all__ = ["dit_file_config", "dit_file_on_meta", "load_dit_file", "load_t5_file", "file_tokenizer",
           "load_vae_file", "wav2vec2_file_config", "load_wav2vec2_file"]


# -- any DiT location, with the weights mode ------------------------------------------------------


@contextmanager
def open_dit(path: PathLike, *, s2v: bool, kernel, dtype: torch.dtype, weights: str = "auto",
             fast: bool = False) -> Iterator[tuple[nn.Module, object, list]]:
    """(DiT on meta in `dtype`, the source to fill it from, fp8 layer names) for an official folder
    or a single file. fp8 layers (the file's own fp8 linears under `weights='auto'`, the block
    linears under 'fp8'/'fp8_fast') are swapped to `loading.fp8.Fp8Linear` before any data is read,
    and the source yields their fp8 data and scales."""
    from .checkpoint import dit_on_meta
    from .fp8 import DIT_FP8_LAYERS, Fp8Source, apply_fp8, fp8_layer_names

    on_meta = dit_file_on_meta if Path(path).is_file() else dit_on_meta
    with on_meta(path, s2v=s2v, kernel=kernel) as (model, source, variant):
        model.to(dtype)      # on meta: records the dtype only
        names = [] if weights in ("bf16", "fp16", "fp32") else \
            fp8_layer_names(model, source, DIT_FP8_LAYERS, quantize_all=weights in ("fp8", "fp8_fast"))
        if names:
            apply_fp8(model, names, dtype, fast=fast)
            source = Fp8Source(source, names)
        yield model, source, names


def load_dit_any(path: PathLike, dtype: torch.dtype, device, kernel=None, *, s2v: bool = False,
                 weights: str = "auto", fast: bool = False) -> nn.Module:
    """A DiT from a folder or a single file, materialised on `device` (fp8 layers kept fp8)."""
    t0 = time.perf_counter()
    with open_dit(path, s2v=s2v, kernel=kernel, dtype=dtype, weights=weights, fast=fast) as (model, src, names):
        materialize(model, src, dtype, device, what="DiT")
    log.info("loaded DiT %s in %.1f s (%s, %d fp8 layers)", path, time.perf_counter() - t0, dtype, len(names))
    return model.eval()
