"""wav2vec2 speech encoder (the S2V audio features), our own implementation.

`loading.wav2vec2` reads the official `wav2vec2-large-xlsr-53-english/` folder (a transformers
`Wav2Vec2ForCTC` saved with `save_pretrained`) into it; the encoder returns **all hidden states**, as the official
`AudioEncoder.extract_audio_feat(return_all_layers=True)` uses them.

Architecture (transformers `Wav2Vec2Model` with `feat_extract_norm="layer"` and
`do_stable_layer_norm=True`, the XLSR-53 layout; the only one S2V uses):
- feature encoder: 7 Conv1d layers (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2: 320 samples
  per frame, 50 frames/s at 16 kHz), each followed by LayerNorm over channels (affine, eps 1e-5)
  and exact GELU;
- feature projection: LayerNorm(conv_dim[-1], layer_norm_eps) -> Linear(conv_dim[-1], hidden);
- positional conv embedding: grouped Conv1d(hidden, hidden, k=num_conv_pos_embeddings,
  padding=k//2, groups) with weight norm over dim 2, the last output frame dropped when k is
  even, GELU; added to the projected features;
- pre-LN transformer layers: x += Attn(LN(x)); x += FFN(LN(x)) (FFN: Linear-GELU-Linear);
- final LayerNorm after the last layer.
Hidden states: [input of layer 0 (features + positions), output of layers 0..n-2, LN(output of
layer n-1)] -> n + 1 = 25 states for 24 layers. Dropout, SpecAugment masking and the CTC head do
nothing at inference and are not built.

The input normalisation is the processor's (`Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm`,
`do_normalize` in preprocessor_config.json): (x - mean) / sqrt(var + 1e-7) in float32 numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError

FOLDER_NAME = "wav2vec2-large-xlsr-53-english"   # the XLSR-53 model this encoder implements


@dataclass(frozen=True)
class Wav2Vec2Config:
    """The config.json fields the encoder needs (transformers `Wav2Vec2Config` names)."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "layer"
    do_stable_layer_norm: bool = True
    hidden_act: str = "gelu"
    feat_extract_activation: str = "gelu"
    # processor (preprocessor_config.json)
    do_normalize: bool = True
    sampling_rate: int = 16000

    @property
    def num_hidden_states(self) -> int:
        return self.num_hidden_layers + 1

    @property
    def samples_per_frame(self) -> int:
        return int(np.prod(self.conv_stride))

    def num_frames(self, num_samples: int) -> int:
        """Feature frames for `num_samples` input samples (no padding in the convolutions)."""
        n = num_samples
        for k, s in zip(self.conv_kernel, self.conv_stride):
            n = (n - k) // s + 1
        return max(0, n)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config.json") -> "Wav2Vec2Config":
        kw = {}
        for name, f in cls.__dataclass_fields__.items():
            if name in d and d[name] is not None:
                v = d[name]
                kw[name] = tuple(v) if isinstance(v, list) else v
        cfg = cls(**kw)
        problems = []
        if cfg.feat_extract_norm != "layer" or not cfg.do_stable_layer_norm:
            problems.append(f"feat_extract_norm={cfg.feat_extract_norm!r}, do_stable_layer_norm="
                            f"{cfg.do_stable_layer_norm} (only the XLSR layout 'layer' + stable "
                            "layer norm is implemented)")
        for act in (cfg.hidden_act, cfg.feat_extract_activation):
            if act != "gelu":
                problems.append(f"activation {act!r} (only 'gelu')")
        if not (len(cfg.conv_dim) == len(cfg.conv_kernel) == len(cfg.conv_stride)):
            problems.append("conv_dim, conv_kernel and conv_stride differ in length")
        if cfg.hidden_size % cfg.num_attention_heads:
            problems.append(f"hidden_size {cfg.hidden_size} not divisible by {cfg.num_attention_heads} heads")
        if d.get("add_adapter"):
            problems.append("add_adapter=true")
        if problems:
            raise CheckpointError(f"{where}: unsupported wav2vec2 config: {'; '.join(problems)}; "
                                  f"S2V uses {FOLDER_NAME}")
        return cfg


class _ConvLayer(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, s: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, stride=s, bias=bias)
        self.layer_norm = nn.LayerNorm(cout, eps=1e-5)   # transformers: nn.LayerNorm default eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # [B, C, T]
        x = self.conv(x)
        x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x)


class _FeatureEncoder(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        dims = (1,) + tuple(cfg.conv_dim)
        self.conv_layers = nn.ModuleList([
            _ConvLayer(dims[i], dims[i + 1], cfg.conv_kernel[i], cfg.conv_stride[i], cfg.conv_bias)
            for i in range(len(cfg.conv_dim))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # [B, N] -> [B, C, T]
        x = x[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class _FeatureProjection(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class _PositionalConv(nn.Module):
    """Grouped conv; its weight-normed weight is folded into `conv.weight` at load time."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        k = cfg.num_conv_pos_embeddings
        self.conv = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=k // 2,
                              groups=cfg.num_conv_pos_embedding_groups)
        self.remove = 1 if k % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # [B, T, C] -> [B, T, C]
        y = self.conv(x.transpose(1, 2))
        if self.remove:
            y = y[:, :, : -self.remove]
        return F.gelu(y).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        h = self.heads

        def split(y):
            return y.view(b, t, h, c // h).transpose(1, 2)

        # SDPA scales by 1/sqrt(head_dim) like transformers' Wav2Vec2Attention; no mask (one clip).
        o = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(o.transpose(1, 2).reshape(b, t, c))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, inner)
        self.output_dense = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class _Layer(nn.Module):
    """Pre-LN ("stable layer norm") encoder layer."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attention = _Attention(cfg.hidden_size, cfg.num_attention_heads)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = _FeedForward(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layer_norm(x))
        return x + self.feed_forward(self.final_layer_norm(x))


class _Encoder(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.pos_conv_embed = _PositionalConv(cfg)
        self.layers = nn.ModuleList([_Layer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class Wav2Vec2Encoder(nn.Module):
    """wav2vec2 returning every hidden state. Parameter names = the checkpoint's, minus the
    `wav2vec2.` prefix of `Wav2Vec2ForCTC` (so `feature_extractor.conv_layers.0.conv.weight`...)."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_extractor = _FeatureEncoder(cfg)
        self.feature_projection = _FeatureProjection(cfg)
        self.encoder = _Encoder(cfg)

    @property
    def device(self) -> torch.device:
        return self.feature_projection.projection.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feature_projection.projection.weight.dtype

    def normalize(self, samples: np.ndarray) -> np.ndarray:
        """The processor's input normalisation (float32 numpy, as `Wav2Vec2FeatureExtractor`)."""
        x = np.asarray(samples, dtype=np.float32)
        if not self.cfg.do_normalize:
            return x
        return (x - x.mean()) / np.sqrt(x.var() + 1e-7)

    @torch.no_grad()
    def hidden_states(self, input_values: torch.Tensor) -> torch.Tensor:
        """input_values [B, N] (already normalised) -> all hidden states [S, B, T, hidden] (S = layers+1)."""
        x = input_values.to(device=self.device, dtype=self.dtype)
        feats = self.feature_extractor(x).transpose(1, 2)          # [B, T, conv_dim]
        h = self.feature_projection(feats)
        h = h + self.encoder.pos_conv_embed(h)
        states = []
        for layer in self.encoder.layers:
            states.append(h)
            h = layer(h)
        states.append(self.encoder.layer_norm(h))
        return torch.stack(states)

    @torch.no_grad()
    def forward(self, samples: np.ndarray) -> torch.Tensor:
        """16 kHz mono samples [N] -> all hidden states [S, T, hidden] float32 (the official
        `torch.cat(model(input_values, output_hidden_states=True).hidden_states)`)."""
        x = torch.from_numpy(np.ascontiguousarray(self.normalize(samples)))[None]
        if x.shape[1] < self.cfg.conv_kernel[0]:
            raise ValueError(f"{x.shape[1]} samples are too few for wav2vec2 (need at least "
                             f"{self.cfg.samples_per_frame})")
        return self.hidden_states(x)[:, 0].float()


__all__ = ["Wav2Vec2Config", "Wav2Vec2Encoder", "FOLDER_NAME"]
