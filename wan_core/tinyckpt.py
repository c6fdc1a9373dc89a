"""Our own writer of a tiny random-weight T2V-A14B checkpoint in the official on-disk layout.

Used by `python -m wan_core demo` (and tests) to run the whole T2V path, loading included, without
downloading anything:

    <dir>/high_noise_model/, <dir>/low_noise_model/   config.json, diffusion_pytorch_model-0000i-of-00002
                                                      .safetensors, diffusion_pytorch_model.safetensors.index.json
    <dir>/models_t5_umt5-xxl-enc-bf16.pth             T5 encoder state dict (bf16, torch.save)
    <dir>/google/umt5-xxl/tokenizer.json              a small umT5-style Unigram tokenizer (+ config files)
    <dir>/Wan2.1_VAE.pth                              Wan2.1 VAE state dict (fp32)

Weights are deterministic random values (seeded); the models have the real architectures at small
widths. The text width stays 4096 because the DiT's text_dim is fixed by the official class.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import string
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

import torch

LAYOUT_VERSION = "1"
MARKER = ".wan_core_tiny"


@dataclass(frozen=True)
class TinySizes:
    dit_dim: int = 128
    dit_heads: int = 2
    dit_ffn: int = 256
    dit_layers: int = 2
    text_len: int = 64
    t5_attn: int = 64
    t5_heads: int = 2
    t5_ffn: int = 128
    t5_layers: int = 1
    vae_dim: int = 4


WORDS = ("the a of and to in is on with two cats cat boxing gear bright gloves fight intensely "
         "spotlighted stage white sunglasses sits surfboard beach summer person singing video "
         "anthropomorphic comfy dog runs field sunset ocean waves city night rain forest").split()


def write_tokenizer(folder: Union[str, Path]) -> int:
    """A umT5-style tokenizer (Unigram, NFKC, Metaspace '▁', `</s>` appended; <pad>=0, </s>=1,
    <unk>=2) with a small vocabulary. Returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -5.0 - 0.01 * i) for i, w in enumerate(WORDS)]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    for c in chars:
        vocab += [(c, -10.0), ("\u2581" + c, -11.0)]
    vocab.append(("\u2581", -12.0))
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "pad_token": "<pad>", "eos_token": "</s>",
         "unk_token": "<unk>", "extra_ids": 0, "model_max_length": 512}, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))
    return len(vocab)


def _randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Deterministic values for every tensor: norms/gammas 1, other vectors small, matrices
    N(0, 1/fan_in) so activations keep their scale."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name or name.endswith("gamma"):
                p.fill_(1.0)
            elif p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            else:
                fan_in = max(1, math.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def _write_dit(folder: Path, sizes: TinySizes, gen: torch.Generator, shards: int = 2) -> None:
    from safetensors.torch import save_file

    from .models.dit import DiTConfig, WanModel

    cfg = DiTConfig(model_type="t2v", in_dim=16, out_dim=16, dim=sizes.dit_dim, ffn_dim=sizes.dit_ffn,
                    freq_dim=256, num_heads=sizes.dit_heads, num_layers=sizes.dit_layers,
                    text_len=sizes.text_len, eps=1e-6)
    model = WanModel(cfg)
    _randomize(model, gen)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "dim": cfg.dim, "eps": cfg.eps,
              "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": cfg.in_dim, "model_type": "t2v",
              "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "out_dim": cfg.out_dim,
              "text_len": cfg.text_len}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    keys = list(state)
    per = math.ceil(len(keys) / shards)
    weight_map, total = {}, 0
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i * per:(i + 1) * per]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        for k, v in part.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _write_t5(path: Path, vocab: int, sizes: TinySizes, gen: torch.Generator) -> None:
    from .models.t5 import T5Config, T5Encoder

    cfg = T5Config(vocab_size=vocab, dim=4096, dim_attn=sizes.t5_attn, dim_ffn=sizes.t5_ffn,
                   num_heads=sizes.t5_heads, num_layers=sizes.t5_layers)
    model = T5Encoder(cfg)
    _randomize(model, gen)
    with torch.no_grad():
        model.token_embedding.weight.normal_(0.0, 1.0, generator=gen)
    torch.save({k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}, path)


def _write_vae21(path: Path, sizes: TinySizes, gen: torch.Generator) -> None:
    from .models.vae21 import WanVAE21
    from .models.vae_common import VAEConfig

    model = WanVAE21(VAEConfig(dim=sizes.vae_dim, z_dim=16, dec_dim=sizes.vae_dim))
    _randomize(model, gen)
    torch.save({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, path)


def write_tiny_t2v(folder: Union[str, Path], sizes: TinySizes = TinySizes(), seed: int = 0) -> Path:
    """Write the tiny T2V-A14B checkpoint to `folder` (created; written to a temp folder beside it
    and renamed, so a folder that exists is complete). Returns the folder."""
    folder = Path(folder)
    if is_complete(folder, sizes):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp", dir=folder.parent))
    try:
        gen = torch.Generator("cpu").manual_seed(seed)
        vocab = write_tokenizer(tmp / "google" / "umt5-xxl")
        t5_rows = int(math.ceil(vocab / 64) * 64)    # like umT5: a few unused rows past the pieces
        _write_t5(tmp / "models_t5_umt5-xxl-enc-bf16.pth", t5_rows, sizes, gen)
        _write_vae21(tmp / "Wan2.1_VAE.pth", sizes, gen)
        for expert in ("high_noise_model", "low_noise_model"):
            _write_dit(tmp / expert, sizes, gen)
        (tmp / MARKER).write_text(json.dumps({"version": LAYOUT_VERSION, "sizes": asdict(sizes), "seed": seed}))
        if is_complete(folder, sizes):   # another process (a torchrun rank) finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
            return folder
        if folder.exists():
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:                  # lost the race to a writer that renamed in between
            if not is_complete(folder, sizes):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def is_complete(folder: Path, sizes: TinySizes = TinySizes()) -> bool:
    marker = Path(folder) / MARKER
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return data.get("version") == LAYOUT_VERSION and data.get("sizes") == asdict(sizes)
