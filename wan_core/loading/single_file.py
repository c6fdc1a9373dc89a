"""ComfyUI's single model files: recognise what a file holds and read it as official-layout tensors.

ComfyUI users keep Wan2.2 as one `.safetensors` file per part (docs/model_files.md lists them):

| part           | ComfyUI folder                  | keys in the file                                     |
|----------------|---------------------------------|------------------------------------------------------|
| DiT / S2V DiT  | diffusion_models (legacy unet)  | the official names, optionally `model.diffusion_model.` |
| umT5 encoder   | text_encoders (legacy clip)     | Hugging Face T5 names (`encoder.block.N.layer.0...`), |
|                |                                 | plus `spiece_model` (the tokenizer, a sentencepiece model) |
| VAE 2.1 / 2.2  | vae                             | the official names                                   |
| wav2vec2       | audio_encoders                  | Hugging Face names, with or without `wav2vec2.`      |

Encodings (facts from ComfyUI's `comfy/utils.py::convert_old_quants`, `comfy/ops.py`,
`comfy/quant_ops.py`): fp32 / bf16 / fp16; fp8_e4m3fn weights without scales (a plain cast);
"fp8_scaled" with a `scaled_fp8` marker tensor and one fp32 `<layer>.scale_weight` per quantized
layer (and `<layer>.scale_input`, unused here); the newer encoding with a `_quantization_metadata`
JSON entry in the safetensors header (or one `<layer>.comfy_quant` tensor per layer) and
`<layer>.weight_scale`. A quantized weight means `fp8.float() * scale`.

`inspect_file(path)` reads only the header and says what the file is (`FileInfo`), refusing with one
line naming the file what is not a Wan2.2 part (a LoRA, an SDXL / Flux / CLIP / T5-XXL file, a
truncated file). `SingleFileSource` then offers the file under the official key names with the
`TensorSource` interface (`get`, `get_slice`, `shape`, `dtype`, ...): values are dequantized on
read, so `materialize` and FSDP rank-local loading work unchanged; `raw(key)` gives the stored fp8
tensor and its scale for the transforms that keep weights in fp8 (loading/fp8.py).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import CheckpointError
from .checkpoint import TensorSource
from .transforms import cast_tensor

PathLike = Union[str, Path]

DIT_PREFIX = "model.diffusion_model."
FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))

# Header-only fingerprints of the parts (after the prefix is removed).
_DIT_KEYS = ("patch_embedding.weight", "blocks.0.self_attn.q.weight", "head.head.weight")
_S2V_KEY = "casual_audio_encoder.encoder.final_linear.weight"
_HF_T5_KEYS = ("shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight",
               "encoder.final_layer_norm.weight")
_OFFICIAL_T5_KEYS = ("token_embedding.weight", "blocks.0.attn.q.weight", "blocks.0.pos_embedding.embedding.weight")
_VAE_KEYS = ("encoder.conv1.weight", "conv2.weight", "decoder.head.0.gamma")
_W2V_KEY = "encoder.layer_norm.bias"
_LORA_MARKERS = (".lora_up.", ".lora_down.", ".lora_A.", ".lora_B.", "lora_unet_", ".diff_b")
_FAMILIES = (  # (marker, what it is): files of other model families
    ("input_blocks.", "an SD1/SDXL-family UNet"), ("conditioner.embedders.", "an SDXL checkpoint"),
    ("double_blocks.", "a Flux-family model"), ("joint_blocks.", "an SD3-family model"),
    ("text_model.encoder.", "a CLIP text encoder"), ("transformer_blocks.", "a diffusers-format transformer"),
    ("condition_embedder.", "a diffusers-format Wan transformer"),
)

PARTS = ("dit", "text_encoder", "vae", "audio_encoder")
PART_NAMES = {"dit": "diffusion model", "text_encoder": "umT5 text encoder", "vae": "Wan VAE",
              "audio_encoder": "wav2vec2 audio encoder"}


@dataclass(frozen=True)
class FileInfo:
    """What one single file holds, read from its header only."""

    path: Path
    part: str                 # one of PARTS
    encoding: str             # "fp32" | "bf16" | "fp16" | "fp8_e4m3fn" | "fp8_scaled"
    scheme: str = ""          # fp8_scaled only: "scale_weight" (scaled_fp8 marker) or "weight_scale"
    prefix: str = ""          # key prefix removed (DiT: "model.diffusion_model.")
    details: dict = field(default_factory=dict, compare=False)   # part-specific facts (dims...)

    def describe(self) -> str:
        enc = self.encoding + (f" ({self.scheme})" if self.scheme else "")
        return f"{self.path.name}: {PART_NAMES[self.part]}, {enc}"


# ---------------------------------------------------------------------------------------------
# Header reading


def read_header(path: PathLike) -> tuple[dict[str, tuple[str, list[int]]], dict[str, str]]:
    """{key: (safetensors dtype name, shape)} and the `__metadata__` of a safetensors file, from
    its header alone; CheckpointError naming the file when it is missing, not safetensors, or
    shorter than its header says (an interrupted download)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > min(size - 8, 1 << 28):
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a safetensors file ({exc}); a model file must be "
                              ".safetensors; re-download it") from None
    meta = header.pop("__metadata__", None) or {}
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: its header describes {8 + n + end:,} bytes but the "
                              f"file has {size:,}; the download was interrupted, download it again")
    return {k: (v["dtype"], list(v["shape"])) for k, v in header.items()}, meta


def _common_prefix(keys, prefix: str) -> bool:
    return sum(1 for k in keys if k.startswith(prefix)) > 5


def _encoding(header: dict, weight_keys: list[str], meta: dict) -> tuple[str, str]:
    """(encoding, scheme) of a file from its weights' dtypes and its scale tensors."""
    names = {header[k][0] for k in weight_keys if k in header}
    has_scale_weight = any(k.endswith(".scale_weight") for k in header)
    has_weight_scale = any(k.endswith(".weight_scale") for k in header)
    if "_quantization_metadata" in meta or any(k.endswith(".comfy_quant") for k in header):
        formats = _quant_formats(header, meta)
        bad = sorted(f for f in formats if f != "float8_e4m3fn")
        if bad:
            raise CheckpointError(f"quantization format(s) {bad} are not supported (only float8_e4m3fn "
                                  "with per-tensor scales, ComfyUI's fp8_scaled)")
        return "fp8_scaled", "weight_scale"
    if any(k == "scaled_fp8" or k.endswith(".scaled_fp8") for k in header) or has_scale_weight:
        return "fp8_scaled", "scale_weight"
    if has_weight_scale:
        return "fp8_scaled", "weight_scale"
    if "F8_E4M3" in names:
        return "fp8_e4m3fn", ""
    if "F8_E5M2" in names:
        raise CheckpointError("fp8_e5m2 weights without scales are not supported; use the fp8_e4m3fn "
                              "or fp8_scaled file")
    for st, label in (("BF16", "bf16"), ("F16", "fp16"), ("F32", "fp32")):
        if names == {st}:
            return label, ""
    counts = {}
    for k in weight_keys:
        if k in header:
            counts[header[k][0]] = counts.get(header[k][0], 0) + 1
    top = max(counts, key=counts.get) if counts else "F32"
    return {"BF16": "bf16", "F16": "fp16"}.get(top, "fp32"), ""


def _quant_formats(header: dict, meta: dict) -> set[str]:
    if "_quantization_metadata" in meta:
        try:
            layers = json.loads(meta["_quantization_metadata"])["layers"]
            return {str(v.get("format")) for v in layers.values()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"_quantization_metadata is not valid ({exc!r})") from None
    return {"float8_e4m3fn"}   # per-layer .comfy_quant tensors: checked when read


def inspect_file(path: PathLike, expect: Optional[str] = None) -> FileInfo:
    """What `path` holds (`FileInfo`), from its header. `expect` (one of PARTS) turns a file of
    another kind into a CheckpointError that says what the file is and what was expected."""
    path = Path(path)
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin") and expect != "vae":
        raise CheckpointError(f"{path}: only .safetensors single files are read for this part "
                              f"(expected a {PART_NAMES.get(expect, 'model')} file)")
    header, meta = read_header(path)
    keys = list(header)
    want = f"; expected a {PART_NAMES[expect]} file" if expect else ""
    if not keys:
        raise CheckpointError(f"{path} holds no tensors{want}")
    lora = next((k for k in keys if any(m in k for m in _LORA_MARKERS) or k.endswith((".alpha", ".diff"))), None)
    if lora is not None:
        raise CheckpointError(f"{path} is a LoRA (keys like {lora!r}), "
                              f"not a model{want}; put it in models/loras and load it as a LoRA")
    try:
        info = _classify(path, header, meta)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if info is None:
        fam = next((what for marker, what in _FAMILIES if any(marker in k for k in keys)), None)
        what = fam or f"not a Wan2.2 part (first keys: {keys[:3]})"
        raise CheckpointError(f"{path} is {what}{want or '; expected a Wan2.2 diffusion model, umT5 text encoder, Wan VAE or wav2vec2 file'}")
    if expect is not None and info.part != expect:
        raise CheckpointError(f"{path} is a {PART_NAMES[info.part]} file{want}")
    return info


def _classify(path: Path, header: dict, meta: dict) -> Optional[FileInfo]:
    keys = header.keys()
    prefix = DIT_PREFIX if _common_prefix(keys, DIT_PREFIX) else ""
    if all(prefix + k in header for k in _DIT_KEYS):
        return _dit_info(path, header, meta, prefix)
    if all(k in header for k in _HF_T5_KEYS) or all(k in header for k in _OFFICIAL_T5_KEYS):
        return _t5_info(path, header, meta)
    if all(k in header for k in _VAE_KEYS):
        shape = header["encoder.conv1.weight"][1]
        version = {3: "2.1", 12: "2.2"}.get(shape[1] if len(shape) == 5 else -1)
        if version is None:
            raise CheckpointError(f"encoder.conv1.weight has shape {shape}; a Wan VAE takes 3 (2.1) or "
                                  "12 (2.2) input channels")
        z = header["conv2.weight"][1][0]
        enc, _ = _encoding(header, [k for k in keys if k.endswith(".weight")], meta)
        return FileInfo(path, "vae", enc, details={"version": version, "z_dim": z})
    w2v = "wav2vec2." if _common_prefix(keys, "wav2vec2.") else ""
    if w2v + _W2V_KEY in header and any(k.startswith(w2v + "feature_extractor.") for k in keys):
        enc, _ = _encoding(header, [k for k in keys if k.endswith(".weight")], meta)
        return FileInfo(path, "audio_encoder", enc, prefix=w2v,
                        details={"hidden": header[w2v + _W2V_KEY][1][0]})
    return None


_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_INJECTOR = re.compile(r"^audio_injector\.injector\.(\d+)\.q\.weight$")
# Official S2V-14B: audio injected after these blocks (Wan2.2-S2V-14B/config.json).
S2V_INJECT_LAYERS_14B = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)


def _dit_info(path: Path, header: dict, meta: dict, prefix: str) -> FileInfo:
    h = {k[len(prefix):]: v for k, v in header.items() if k.startswith(prefix)}
    weight_keys = [prefix + k for k in h if k.endswith(".weight")]
    enc, scheme = _encoding(header, weight_keys, meta)
    shape = lambda k: h[k][1]   # noqa: E731
    dim, in_dim = shape("patch_embedding.weight")[:2]
    layers = 1 + max(int(m.group(1)) for k in h if (m := _BLOCK.match(k)))
    out_dim = shape("head.head.weight")[0] // 4
    s2v = _S2V_KEY in h
    for marker, what in (("img_emb.", "a Wan2.1 image-to-video model (CLIP 'img_emb' layers)"),
                         ("vace_", "a Wan VACE model"), ("face_adapter.", "a Wan2.2 Animate model"),
                         ("control_adapter.", "a Wan Fun camera-control model"),
                         ("audio_proj.", "a HuMo model")):
        if any(k.startswith(marker) for k in h):
            raise CheckpointError(f"holds {what}, which this engine does not run (Wan2.2 T2V/I2V-A14B, "
                                  "TI2V-5B, S2V-14B only)")
    if dim == 1536 and layers == 30:
        raise CheckpointError("holds a Wan 1.3B model (dim 1536, 30 blocks, e.g. Wan2.1 T2V-1.3B); Wan2.2 "
                              "needs the A14B experts (dim 5120), TI2V-5B (dim 3072) or S2V-14B")
    cfg = {"_class_name": "WanModel_S2V" if s2v else "WanModel", "dim": dim, "in_dim": in_dim,
           "out_dim": out_dim, "ffn_dim": shape("blocks.0.ffn.0.weight")[0],
           "freq_dim": shape("time_embedding.0.weight")[1], "num_layers": layers,
           "num_heads": max(1, dim // 128), "text_len": 512, "eps": 1e-6}
    if s2v:
        cfg["model_type"] = "s2v"
        injectors = sorted(int(m.group(1)) for k in h if (m := _INJECTOR.match(k)))
        if len(injectors) == len(S2V_INJECT_LAYERS_14B) and layers == 40:
            inject = list(S2V_INJECT_LAYERS_14B)
        elif len(injectors) == layers:
            inject = list(range(layers))
        else:
            inject = None   # only the file's own config can say; checked below
        cfg.update({"audio_dim": shape("casual_audio_encoder.encoder.conv1_local.conv.weight")[1],
                    "cond_dim": shape("cond_encoder.weight")[1], "num_audio_token": 4,
                    "audio_inject_layers": inject})
    else:
        cfg["model_type"] = {16: "t2v", 36: "i2v", 48: "ti2v"}.get(in_dim, f"in_dim {in_dim}")
    # A file may carry its own config (ComfyUI's model_detection reads metadata["config"] too).
    if "config" in meta:
        try:
            extra = json.loads(meta["config"])
            extra = extra.get("transformer", extra)
            cfg.update({k: v for k, v in extra.items() if not k.startswith("_")})
        except (ValueError, AttributeError) as exc:
            raise CheckpointError(f"metadata 'config' is not valid JSON ({exc})") from None
    if s2v and cfg.get("audio_inject_layers") is None:
        raise CheckpointError(f"S2V file with {len(injectors)} audio injectors for {layers} blocks: "
                              "cannot tell which blocks they follow (expected the official 12 of 40)")
    return FileInfo(path, "dit", enc, scheme, prefix, details={"config": cfg})


def _t5_info(path: Path, header: dict, meta: dict) -> FileInfo:
    keys = header.keys()
    hf = "shared.weight" in header
    weight_keys = [k for k in keys if k.endswith(".weight")]
    enc, scheme = _encoding(header, weight_keys, meta)
    if hf:
        vocab, dim = header["shared.weight"][1]
        layers = 1 + max(int(k.split(".")[2]) for k in keys if k.startswith("encoder.block."))
        per_layer_bias = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in header
        gated = "encoder.block.0.layer.1.DenseReluDense.wi_1.weight" in header
        if not (per_layer_bias and gated) or vocab < 250000 and vocab in (32100, 32128):
            raise CheckpointError(
                f"holds a T5 encoder that is not umT5-XXL (vocabulary {vocab}, "
                f"{'one relative-position table per layer' if per_layer_bias else 'a shared relative-position table'}"
                "): Wan2.2 needs umT5-XXL (umt5_xxl_fp16.safetensors or umt5_xxl_fp8_e4m3fn_scaled.safetensors), "
                "not the T5-XXL of SD3/Flux (t5xxl_*.safetensors)")
    else:
        vocab, dim = header["token_embedding.weight"][1]
        layers = 1 + max(int(m.group(1)) for k in keys if (m := _BLOCK.match(k)))
    return FileInfo(path, "text_encoder", enc, scheme, details={
        "hf_names": hf, "vocab": vocab, "dim": dim, "layers": layers,
        "tokenizer_in_file": "spiece_model" in header})


# ---------------------------------------------------------------------------------------------
# Key maps (official name -> name in the file)

_T5_MAP = (  # official suffix pattern -> Hugging Face T5 name
    (re.compile(r"^blocks\.(\d+)\.norm1\.weight$"), "encoder.block.{}.layer.0.layer_norm.weight"),
    (re.compile(r"^blocks\.(\d+)\.attn\.(q|k|v|o)\.weight$"), "encoder.block.{}.layer.0.SelfAttention.{}.weight"),
    (re.compile(r"^blocks\.(\d+)\.pos_embedding\.embedding\.weight$"),
     "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"),
    (re.compile(r"^blocks\.(\d+)\.norm2\.weight$"), "encoder.block.{}.layer.1.layer_norm.weight"),
    (re.compile(r"^blocks\.(\d+)\.ffn\.gate\.0\.weight$"), "encoder.block.{}.layer.1.DenseReluDense.wi_0.weight"),
    (re.compile(r"^blocks\.(\d+)\.ffn\.fc1\.weight$"), "encoder.block.{}.layer.1.DenseReluDense.wi_1.weight"),
    (re.compile(r"^blocks\.(\d+)\.ffn\.fc2\.weight$"), "encoder.block.{}.layer.1.DenseReluDense.wo.weight"),
)
_T5_FIXED = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}


def t5_official_to_hf(name: str) -> str:
    """Official umT5 parameter name -> the Hugging Face / ComfyUI name of the same tensor."""
    if name in _T5_FIXED:
        return _T5_FIXED[name]
    for pattern, template in _T5_MAP:
        m = pattern.match(name)
        if m:
            return template.format(*m.groups())
    raise KeyError(name)


def t5_hf_to_official(name: str) -> Optional[str]:
    """Inverse of `t5_official_to_hf`; None for tensors the encoder does not use."""
    inverse = {v: k for k, v in _T5_FIXED.items()}
    if name in inverse:
        return inverse[name]
    m = re.match(r"^encoder\.block\.(\d+)\.(.*)$", name)
    if not m:
        return None
    i, rest = m.groups()
    for official, hf in (("norm1.weight", "layer.0.layer_norm.weight"),
                         ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
                         ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
                         ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
                         ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
                         ("pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
                         ("norm2.weight", "layer.1.layer_norm.weight"),
                         ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),
                         ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),
                         ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight")):
        if rest == hf:
            return f"blocks.{i}.{official}"
    return None


_SKIP_SUFFIXES = (".scale_weight", ".scale_input", ".weight_scale", ".input_scale", ".comfy_quant",
                  ".weight_scale_2")


def official_key_map(info: FileInfo, file_keys) -> dict[str, str]:
    """{official name: key in the file} for the tensors of `info`'s part (scales, markers, the
    tokenizer and unused tensors left out)."""
    out: dict[str, str] = {}
    for k in file_keys:
        if k.endswith(_SKIP_SUFFIXES) or k == "scaled_fp8" or k.endswith(".scaled_fp8") or k == "spiece_model":
            continue
        if info.part == "text_encoder" and info.details.get("hf_names"):
            name = t5_hf_to_official(k)
            if name is None:
                continue   # encoder.embed_tokens (a tied copy of shared), decoder leftovers
        elif info.prefix:
            if not k.startswith(info.prefix):
                continue
            name = k[len(info.prefix):]
        else:
            name = k
        out[name] = k
    return out


# ---------------------------------------------------------------------------------------------
# The source


class SingleFileSource(TensorSource):
    """A ComfyUI single file seen under the official key names (`TensorSource` interface).

    `get`/`get_slice` return dequantized values (`fp8.float() * scale`, then `dtype`);
    `raw(key)` returns (stored tensor, fp32 scale or None) for fp8-keeping transforms;
    `scale_of(key)` the scale alone; `stored_dtype(key)` the dtype in the file.
    """

    def __init__(self, info: FileInfo) -> None:
        inner = TensorSource.from_file(info.path)
        self.__dict__.update(inner.__dict__)
        self.info = info
        file_keys = list(inner._files)
        self._map = official_key_map(info, file_keys)
        have = set(file_keys)
        self._scale: dict[str, str] = {}
        for name, k in self._map.items():
            if not k.endswith(".weight"):
                continue
            layer = k[: -len(".weight")]
            for cand in (layer + ".weight_scale", layer + ".scale_weight"):
                if cand in have:
                    self._scale[name] = cand
                    break
        self._keys = list(self._map)
        self._scale_cache: dict[str, torch.Tensor] = {}
        self.name = str(info.path)

    # TensorSource keeps `_files` keyed by the names in the file; translate first.
    def __contains__(self, key: str) -> bool:
        return key in self._map

    def file_of(self, key: str) -> str:
        return self.name

    def file_key(self, key: str) -> str:
        if key not in self._map:
            raise CheckpointError(f"{self.name}: tensor {key!r} is not in the file")
        return self._map[key]

    def _slice(self, key: str):
        return self._handles[self.info.path].get_slice(self.file_key(key))

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._slice(key).get_shape())

    def stored_dtype(self, key: str) -> torch.dtype:
        return _st_dtype(self, key)

    def dtype(self, key: str) -> torch.dtype:
        """The dtype a plain read gives: the stored one, or fp32 for a dequantized fp8 weight."""
        d = self.stored_dtype(key)
        return torch.float32 if d in FP8_DTYPES else d

    def scale_of(self, key: str) -> Optional[torch.Tensor]:
        sk = self._scale.get(key)
        if sk is None:
            return None
        if sk not in self._scale_cache:
            s = self._handles[self.info.path].get_tensor(sk).float()
            if s.numel() != 1:
                raise CheckpointError(f"{self.name}: {sk} has {s.numel()} values; only per-tensor "
                                      "scales (one value) are supported")
            self._scale_cache[sk] = s.reshape(())
        return self._scale_cache[sk]

    def is_quantized(self, key: str) -> bool:
        return self.stored_dtype(key) in FP8_DTYPES

    def _read(self, key: str, index=None) -> torch.Tensor:
        fk = self.file_key(key)
        try:
            if index is None:
                t = self._handles[self.info.path].get_tensor(fk)
            else:
                t = self._handles[self.info.path].get_slice(fk)[index]
        except Exception as exc:
            raise CheckpointError(f"{self.name}: reading tensor {fk!r} failed ({exc}); the file is "
                                  "corrupt, download it again") from None
        return t

    def _dequant(self, key: str, t: torch.Tensor) -> torch.Tensor:
        if t.dtype not in FP8_DTYPES:
            return t
        scale = self.scale_of(key)
        t = t.float()
        return t * scale if scale is not None else t

    def raw(self, key: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(the tensor as stored, its fp32 scale or None)."""
        return self._read(key), self.scale_of(key)

    def get(self, key: str, dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
        return cast_tensor(self._dequant(key, self._read(key)), dtype, device)

    def get_slice(self, key: str, dim: int, start: int, stop: int, dtype: Optional[torch.dtype] = None,
                  device=None) -> torch.Tensor:
        ndim = len(self.shape(key))
        dim = dim % ndim
        index = tuple([slice(None)] * dim + [slice(start, stop)])
        return cast_tensor(self._dequant(key, self._read(key, index)), dtype, device)

    def read_spiece_model(self) -> Optional[bytes]:
        """The sentencepiece model a ComfyUI text encoder file carries (`spiece_model`), or None."""
        h = self._handles[self.info.path]
        if "spiece_model" not in set(h.keys()):
            return None
        return h.get_tensor("spiece_model").numpy().tobytes()

    def __repr__(self) -> str:
        return f"SingleFileSource({self.info.describe()})"


def _st_dtype(src: SingleFileSource, key: str) -> torch.dtype:
    from .checkpoint import _ST_DTYPES

    name = src._slice(key).get_dtype()
    if name not in _ST_DTYPES:
        raise CheckpointError(f"{src.name}: tensor {src.file_key(key)!r} has unsupported dtype {name}")
    return _ST_DTYPES[name]


def open_part(path: PathLike, part: str) -> SingleFileSource:
    """`inspect_file(path, expect=part)` and the file opened under official names."""
    return SingleFileSource(inspect_file(path, expect=part))


__all__ = ["FileInfo", "SingleFileSource", "inspect_file", "open_part", "read_header",
           "official_key_map", "t5_official_to_hf", "t5_hf_to_official", "DIT_PREFIX", "PARTS",
           "PART_NAMES", "S2V_INJECT_LAYERS_14B", "FP8_DTYPES"]
