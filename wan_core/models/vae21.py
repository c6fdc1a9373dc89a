"""Wan2.1 VAE: z_dim 16, stride 4×8×8 (`wan/modules/vae2_1.py`, reference §4.2).

Used by T2V-A14B, I2V-A14B and S2V-14B. Real size: dim 96, 194 tensors, 126.89 M parameters (fp32).
Encoder: conv1 (3→dim) → 4 levels of 2 ResidualBlocks, with a spatial (level 0) or spatio-temporal
(levels 1, 2) downsample after each level but the last → middle → head (→ 2·z_dim). Decoder: conv1
(z_dim→4·dim) → middle → 4 levels of 3 ResidualBlocks with upsample3d, upsample3d, upsample2d
(each upsample conv halves the width) → head (→ 3).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from wan_core.models.vae_common import (
    CausalCache, CausalConv3d, CausalEncoder, CausalVideoVAE, Resample, ResidualBlock, VAEConfig,
    cached_conv, make_head, make_middle, run_head, run_middle,
)

WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

WAN21_CONFIG = VAEConfig(dim=96, z_dim=16, dec_dim=96)
"""The official `Wan2.1_VAE.pth` (`_video_vae(dim=96, z_dim=16, ...)`)."""


class Encoder21(CausalEncoder):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * u for u in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
                layers.append(Resample(out_dim, mode))
        self.downsamples = nn.Sequential(*layers)
        self.middle = make_middle(dims[-1])
        self.head = make_head(dims[-1], cfg.z_dim * 2)


class Decoder21(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dec_dim * u for u in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = make_middle(dims[0])
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # the previous level's upsample conv halved the width
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                mode = "upsample3d" if cfg.temporal_upsample[i] else "upsample2d"
                layers.append(Resample(out_dim, mode, upsample_out=out_dim // 2))
        self.upsamples = nn.Sequential(*layers)
        self.head = make_head(dims[-1], 3)

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache], first_chunk: bool = False) -> torch.Tensor:
        # first_chunk is a Wan2.2 notion; Wan2.1 handles its first chunk through the cache alone.
        x = cached_conv(self.conv1, x, cache)
        x = run_middle(self.middle, x, cache)
        for layer in self.upsamples:
            x = layer(x, cache)
        return run_head(self.head, x, cache)


class WanVAE21(CausalVideoVAE):
    """`encode(video [B,3,F,H,W] in [-1,1]) -> [B,16,1+(F-1)/4,H/8,W/8]` (normalised) and
    `decode(latent) -> [B,3,F,H,W]` clamped to [-1, 1]; see `CausalVideoVAE`."""

    latent_mean = WAN21_LATENT_MEAN
    latent_std = WAN21_LATENT_STD
    patch = 1

    def __init__(self, cfg: VAEConfig = WAN21_CONFIG) -> None:
        super().__init__(cfg)
        self.encoder = Encoder21(cfg)
        self.decoder = Decoder21(cfg)
