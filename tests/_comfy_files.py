"""Test converter: the tiny official checkpoints of `../shared/wan22_tiny` written as ComfyUI single
files, in each encoding ComfyUI's Wan2.2 templates use (our own code; facts from ComfyUI's
`comfy/utils.py::convert_old_quants`, `comfy/ops.py`, `comfy/sd.py`).

Every writer returns the *effective* official-layout state dict: the values a correct reader must
produce (fp16/bf16-rounded, fp8-dequantized in fp32). `write_official_dit` writes such a state dict
as an official DiT folder, for the latent oracle (same effective weights, official layout).

Used by tests/unit/test_single_file.py, tests/comfy (oracle 1) and tests/parity (oracle 2), and by
the LoRA and node tests; `write_fp8_scaled_dit` also serves the full-size random GPU benchmark.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

from wan_core.loading.single_file import DIT_PREFIX, t5_official_to_hf

PathLike = Union[str, Path]
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0

ENCODINGS = ("fp32", "bf16", "fp16", "fp8_e4m3fn", "fp8_scaled", "fp8_scaled_meta")
"""fp8_scaled: `scaled_fp8` marker + `<layer>.scale_weight`; fp8_scaled_meta: the newer
`_quantization_metadata` header + `<layer>.weight_scale`."""

# The big linears ComfyUI's fp8_scaled Wan files quantize; norms, embeddings, modulation and the
# head stay in high precision.
_DIT_QUANT = re.compile(r"^blocks\.\d+\.(self_attn\.(q|k|v|o)|cross_attn\.(q|k|v|o)|ffn\.(0|2))\.weight$")
_T5_QUANT = re.compile(r"^blocks\.\d+\.(attn\.(q|k|v|o)|ffn\.(gate\.0|fc1|fc2))\.weight$")
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def read_official_dit(folder: PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an official (sharded) DiT folder, as stored."""
    from wan_core.loading.checkpoint import TensorSource

    with TensorSource.from_folder(folder) as src:
        return {k: src.get(k) for k in src.keys()}


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor absmax fp8_e4m3fn: (fp8 tensor, fp32 scalar scale) with w ~ q.float() * scale."""
    w = w.float()
    scale = (w.abs().max() / FP8_MAX).clamp(min=1e-12).reshape(())
    q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def _encode(sd: dict[str, torch.Tensor], encoding: str, quant: re.Pattern,
            rest_dtype: torch.dtype = torch.bfloat16):
    """-> (tensors under official names + scale names, effective official state dict,
    {official weight name: scale key suffix})."""
    out: dict[str, torch.Tensor] = {}
    eff: dict[str, torch.Tensor] = {}
    scaled: list[str] = []
    for k, v in sd.items():
        v = v.detach()
        if encoding in _HALF:
            out[k] = v.to(_HALF[encoding]).contiguous()
            eff[k] = out[k].float()
        elif quant.match(k):
            if encoding == "fp8_e4m3fn":
                q = v.float().clamp(-FP8_MAX, FP8_MAX).to(FP8)
                out[k], eff[k] = q, q.float()
            else:
                q, s = quantize(v)
                out[k], eff[k] = q, q.float() * s
                out[k[: -len(".weight")] + (".scale_weight" if encoding == "fp8_scaled" else ".weight_scale")] = s
                scaled.append(k[: -len(".weight")])
        else:
            out[k] = v.to(rest_dtype).contiguous() if v.is_floating_point() else v
            eff[k] = out[k].float() if v.is_floating_point() else v
    return out, eff, scaled


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: Optional[dict] = None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _quant_metadata(layers: Iterable[str], prefix: str = "") -> dict:
    return {"_quantization_metadata": json.dumps(
        {"format_version": "1.0", "layers": {prefix + l: {"format": "float8_e4m3fn"} for l in layers}})}


def write_dit(official: Union[PathLike, dict], path: PathLike, encoding: str, *, prefix: bool = False,
              config: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """A DiT (or S2V DiT) single file in `encoding`; returns the effective official state dict.
    `official`: a DiT folder or a state dict; `config`: written into the safetensors metadata."""
    if encoding not in ENCODINGS:
        raise ValueError(encoding)
    sd = read_official_dit(official) if not isinstance(official, dict) else official
    out, eff, scaled = _encode(sd, encoding, _DIT_QUANT)   # fp8_scaled_meta: .weight_scale names
    pre = DIT_PREFIX if prefix else ""
    tensors = {pre + k: v for k, v in out.items()}
    meta: dict = {}
    if encoding == "fp8_scaled":
        tensors["scaled_fp8"] = torch.zeros(0, dtype=FP8)
    elif encoding == "fp8_scaled_meta":
        meta.update(_quant_metadata(scaled, pre))
    if config is not None:
        meta["config"] = json.dumps(config)
    _save(tensors, Path(path), meta or None)
    return eff


def write_fp8_scaled_dit(sd: dict[str, torch.Tensor], path: PathLike, *, prefix: bool = True,
                         meta_encoding: bool = False) -> Path:
    """Any official-named DiT state dict (e.g. full-size random weights) as ComfyUI's fp8_scaled file."""
    write_dit(sd, path, "fp8_scaled_meta" if meta_encoding else "fp8_scaled", prefix=prefix)
    return Path(path)


def write_random_fp8_scaled_dit(config: dict, path: PathLike, *, seed: int = 0, std: float = 0.02,
                                prefix: bool = True) -> Path:
    """Random weights of any size (e.g. the A14B expert's config.json) written straight in ComfyUI's
    fp8_scaled encoding, one tensor at a time (no full bf16 copy is ever held): the files the GPU
    benchmarks of `--weights auto|fp8|fp8_fast` load. Norm weights are 1, the rest N(0, std)."""
    from wan_core.models.dit import DiTConfig, WanModel

    cfg = DiTConfig.from_dict(config)
    with torch.device("meta"):
        model = WanModel(cfg)
    gen = torch.Generator().manual_seed(seed)
    pre = DIT_PREFIX if prefix else ""
    tensors: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(0, dtype=FP8)}
    for name, meta in model.state_dict().items():
        if "norm" in name and name.endswith(".weight"):
            t = torch.ones(meta.shape)
        else:
            t = torch.randn(meta.shape, generator=gen) * std
        if _DIT_QUANT.match(name):
            q, s = quantize(t)
            tensors[pre + name], tensors[pre + name[: -len(".weight")] + ".scale_weight"] = q, s
        else:
            tensors[pre + name] = t.to(torch.bfloat16)
        del t
    return _save(tensors, Path(path))


def write_official_dit(eff: dict[str, torch.Tensor], config: dict, folder: PathLike) -> Path:
    """An official single-shard DiT folder (config.json + diffusion_pytorch_model.safetensors)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    _save({k: v.float() for k, v in eff.items()}, folder / "diffusion_pytorch_model.safetensors")
    return folder


# -- umT5 --------------------------------------------------------------------------------------


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb_field(num: int, wt: int, payload: Union[int, bytes]) -> bytes:
    key = _pb_varint((num << 3) | wt)
    if wt == 0:
        return key + _pb_varint(payload)
    if wt == 5:
        return key + payload
    return key + _pb_varint(len(payload)) + payload


def spm_from_tokenizer_json(path: PathLike) -> bytes:
    """A sentencepiece ModelProto equivalent to a Unigram `tokenizer.json` (the tiny umT5 one):
    what a ComfyUI umT5 file stores as `spiece_model`."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    model = d["model"]
    if model["type"] != "Unigram":
        raise ValueError("only Unigram tokenizers")
    special = {t["content"] for t in d.get("added_tokens", [])} | {"<pad>", "</s>", "<unk>"}
    body = b""
    last = {p: i for i, (p, _) in enumerate(model["vocab"])}
    for i, (piece, score) in enumerate(model["vocab"]):
        ptype = 2 if i == model.get("unk_id", 2) else (3 if piece in special else 1)
        if last[piece] != i:   # the tiny vocabulary repeats a piece; tokenizers uses the last id,
            piece, ptype = f"<unused_{i}>", 5   # sentencepiece refuses repeats: mark it unused
        sp = _pb_field(1, 2, piece.encode("utf-8")) + _pb_field(2, 5, struct.pack("<f", score))
        if ptype != 1:
            sp += _pb_field(3, 0, ptype)
        body += _pb_field(1, 2, sp)
    vocab = {p: i for i, (p, _) in enumerate(model["vocab"])}
    trainer = (_pb_field(3, 0, 1) + _pb_field(40, 0, model.get("unk_id", 2))
               + _pb_field(41, 0, (1 << 64) - 1) + _pb_field(42, 0, vocab["</s>"]) + _pb_field(43, 0, vocab["<pad>"]))
    body += _pb_field(2, 2, trainer)
    body += _pb_field(3, 2, _pb_field(1, 2, b"identity") + _pb_field(3, 0, 1) + _pb_field(4, 0, 1)
                      + _pb_field(5, 0, 1))
    return body


def write_umt5(pth: PathLike, path: PathLike, encoding: str, *, tokenizer_json: Optional[PathLike] = None,
               hf_names: bool = True) -> dict[str, torch.Tensor]:
    """The official umT5 `.pth` as a ComfyUI text encoder file (Hugging Face T5 names, `spiece_model`
    from `tokenizer_json` when given); encoding fp16 / bf16 / fp32 / fp8_scaled (scaled_fp8 marker +
    scale_weight, as `umt5_xxl_fp8_e4m3fn_scaled`). Returns the effective official state dict."""
    sd = torch.load(str(pth), map_location="cpu", weights_only=True)
    out, eff, _ = _encode(sd, encoding, _T5_QUANT, rest_dtype=torch.float16)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in out.items():
        if hf_names:
            if k.endswith(".scale_weight"):
                k = t5_official_to_hf(k[: -len(".scale_weight")] + ".weight")[: -len(".weight")] + ".scale_weight"
            else:
                k = t5_official_to_hf(k)
        tensors[k] = v
    if encoding == "fp8_scaled":
        tensors["scaled_fp8"] = torch.zeros(0, dtype=FP8)
    if tokenizer_json is not None:
        tensors["spiece_model"] = torch.frombuffer(bytearray(spm_from_tokenizer_json(tokenizer_json)),
                                                   dtype=torch.uint8)
    _save(tensors, Path(path))
    return eff


# -- VAE, wav2vec2 -----------------------------------------------------------------------------


def write_vae(pth: PathLike, path: PathLike, encoding: str = "fp32") -> dict[str, torch.Tensor]:
    """An official VAE `.pth` as ComfyUI's `wan_2.1_vae.safetensors` / `wan2.2_vae.safetensors`."""
    sd = torch.load(str(pth), map_location="cpu", weights_only=True)
    out = {k: v.to(_HALF[encoding]).contiguous() for k, v in sd.items()}
    _save(out, Path(path))
    return {k: v.float() for k, v in out.items()}


def write_wav2vec2(folder: PathLike, path: PathLike, encoding: str = "fp16", *,
                   strip_prefix: bool = True, with_config: bool = True) -> Path:
    """The official wav2vec2 folder's `model.safetensors` as ComfyUI's
    `wav2vec2_large_english_fp16.safetensors` (HF names, `wav2vec2.` stripped as ComfyUI stores
    it). The tiny model's head count is not readable from its shapes, so its config.json goes into
    the safetensors metadata (`config`)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    sd = load_file(str(folder / "model.safetensors"))
    out = {}
    for k, v in sd.items():
        name = k[len("wav2vec2."):] if strip_prefix and k.startswith("wav2vec2.") else k
        out[name] = v.to(_HALF[encoding]) if v.is_floating_point() else v
    meta = None
    if with_config:
        cfg = json.loads((folder / "config.json").read_text())
        meta = {"config": json.dumps(cfg)}
    return _save(out, Path(path), meta)


# -- a whole ComfyUI models folder ---------------------------------------------------------------

TINY_FILES = {
    # task -> {part: (ComfyUI folder, file name)}
    "t2v-A14B": {"dit_high_noise": ("diffusion_models", "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"),
                 "dit_low_noise": ("diffusion_models", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"),
                 "text_encoder": ("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
                 "vae": ("vae", "wan_2.1_vae.safetensors")},
    "i2v-A14B": {"dit_high_noise": ("diffusion_models", "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"),
                 "dit_low_noise": ("diffusion_models", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"),
                 "text_encoder": ("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
                 "vae": ("vae", "wan_2.1_vae.safetensors")},
    "ti2v-5B": {"dit": ("diffusion_models", "wan2.2_ti2v_5B_fp16.safetensors"),
                "text_encoder": ("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
                "vae": ("vae", "wan2.2_vae.safetensors")},
    "s2v-14B": {"dit": ("diffusion_models", "wan2.2_s2v_14B_fp8_scaled.safetensors"),
                "text_encoder": ("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
                "vae": ("vae", "wan_2.1_vae.safetensors"),
                "audio_encoder": ("audio_encoders", "wav2vec2_large_english_fp16.safetensors")},
}


def write_comfy_models(tiny: PathLike, models_dir: PathLike, tasks: Iterable[str] = tuple(TINY_FILES)) -> dict:
    """ComfyUI's template files for `tasks`, made from the tiny checkpoints, under `models_dir`
    (diffusion_models/, text_encoders/, vae/, audio_encoders/), with ComfyUI's file names.
    Returns {task: {part: path}}."""
    tiny, models_dir = Path(tiny), Path(models_dir)
    ckpt = tiny / "ckpt"
    done: dict[str, Path] = {}
    result: dict[str, dict[str, Path]] = {}
    for task in tasks:
        parts = {}
        for part, (sub, name) in TINY_FILES[task].items():
            path = models_dir / sub / name
            parts[part] = path
            if path in done.values():
                continue
            if part.startswith("dit"):
                src = ckpt / task
                if part == "dit_high_noise":
                    src = src / "high_noise_model"
                elif part == "dit_low_noise":
                    src = src / "low_noise_model"
                enc = "fp16" if name.endswith("_fp16.safetensors") else "fp8_scaled"
                write_dit(src, path, enc, prefix=True)
            elif part == "text_encoder":
                write_umt5(ckpt / "shared" / "models_t5_umt5-xxl-enc-bf16.pth", path, "fp8_scaled",
                           tokenizer_json=ckpt / "shared" / "google" / "umt5-xxl" / "tokenizer.json")
            elif part == "vae":
                version = "2.2" if "2.2" in name else "2.1"
                write_vae(ckpt / "shared" / f"Wan{version}_VAE.pth", path)
            elif part == "audio_encoder":
                write_wav2vec2(ckpt / "s2v-14B" / "wav2vec2-large-xlsr-53-english", path)
            done[f"{task}:{part}"] = path
        result[task] = parts
    return result


__all__ = ["ENCODINGS", "quantize", "write_dit", "write_fp8_scaled_dit", "write_random_fp8_scaled_dit", "write_official_dit",
           "write_umt5", "write_vae", "write_wav2vec2", "write_comfy_models", "spm_from_tokenizer_json",
           "read_official_dit", "TINY_FILES"]
