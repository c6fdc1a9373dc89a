"""Wan2.2 VAE: z_dim 48, stride 4×16×16 (`wan/modules/vae2_2.py`, reference §4.3). Used by TI2V-5B.

Real size: dim 160, dec_dim 256, 196 tensors, 704.69 M parameters (fp32). Differences from Wan2.1:
- the video is patchified 2×2 before the encoder (3 → 12 channels, channel order (c, r, q) with r
  the x offset and q the y offset) and unpatchified after the decoder;
- encoder levels are `Down_ResidualBlock`s with a parameter-free `AvgDown3D` shortcut, decoder
  levels `Up_ResidualBlock`s with a `DupUp3D` shortcut; upsample convs keep the width;
- the decoder's first latent frame runs with `first_chunk=True` (DupUp3D drops its leading frame).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from wan_core.models.vae_common import (
    CausalCache, CausalConv3d, CausalEncoder, CausalVideoVAE, Resample, ResidualBlock, VAEConfig,
    cached_conv, make_head, make_middle, run_head, run_middle,
)

WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)

WAN22_CONFIG = VAEConfig(dim=160, z_dim=48, dec_dim=256)
"""The official `Wan2.2_VAE.pth` (`Wan2_2_VAE(z_dim=48, c_dim=160)`, dec_dim class default 256)."""

PATCH = 2


def patchify(x: torch.Tensor, p: int = PATCH) -> torch.Tensor:
    """[B, C, F, H·p, W·p] -> [B, C·p·p, F, H, W]; channel index c·p² + r·p + q for pixel
    (y = h·p + q, x = w·p + r) (official `b c f (h q) (w r) -> b (c r q) f h w`)."""
    b, c, f, hp, wp = x.shape
    x = x.reshape(b, c, f, hp // p, p, wp // p, p)            # b c f h q w r
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, f, hp // p, wp // p)


def unpatchify(x: torch.Tensor, p: int = PATCH) -> torch.Tensor:
    """Inverse of `patchify`: [B, C·p·p, F, H, W] -> [B, C, F, H·p, W·p]."""
    b, cpp, f, h, w = x.shape
    x = x.reshape(b, cpp // (p * p), p, p, f, h, w)            # b c r q f h w
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), f, h * p, w * p)


class AvgDown3D(nn.Module):
    """Parameter-free shortcut: fold (factor_t, factor_s, factor_s) blocks into channels and average
    groups of them down to out_channels. Time is front-padded with zeros to a multiple of factor_t."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.factor_t = factor_t
        self.factor_s = factor_s
        self.factor = factor_t * factor_s * factor_s
        if in_channels * self.factor % out_channels:
            raise ValueError(f"AvgDown3D: {in_channels}·{self.factor} not divisible by {out_channels}")
        self.group_size = in_channels * self.factor // out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor == 1 and self.group_size == 1:
            return x  # mean over a group of one: the identity
        ft, fs = self.factor_t, self.factor_s
        pad_t = (ft - x.shape[2] % ft) % ft
        x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6).contiguous()       # b c ft fs fs t h w
        x = x.view(b, self.out_channels, self.group_size, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free shortcut: repeat channels and unfold them into (factor_t, factor_s, factor_s)
    blocks. On the first chunk the leading factor_t - 1 frames are dropped (causal first frame)."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.factor_t = factor_t
        self.factor_s = factor_s
        factor = factor_t * factor_s * factor_s
        if out_channels * factor % in_channels:
            raise ValueError(f"DupUp3D: {out_channels}·{factor} not divisible by {in_channels}")
        self.repeats = out_channels * factor // in_channels

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1)
        x = x.view(b, self.out_channels, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).contiguous()        # b c t ft h fs w fs
        x = x.view(b, self.out_channels, t * ft, h * fs, w * fs)
        if first_chunk:
            x = x[:, :, ft - 1:]
        return x


class Down_ResidualBlock(nn.Module):  # noqa: N801 (official name)
    """`downsamples.{j}`: `mult` ResidualBlocks (+ Resample when down_flag), plus AvgDown3D of the input."""

    def __init__(self, in_dim: int, out_dim: int, mult: int, temporal_downsample: bool, down_flag: bool) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, factor_t=2 if temporal_downsample else 1,
                                      factor_s=2 if down_flag else 1)
        layers: list[nn.Module] = []
        for _ in range(mult):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if down_flag:
            layers.append(Resample(out_dim, "downsample3d" if temporal_downsample else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache]) -> torch.Tensor:
        h = x
        for layer in self.downsamples:
            h = layer(h, cache)
        return h + self.avg_shortcut(x)


class Up_ResidualBlock(nn.Module):  # noqa: N801 (official name)
    """`upsamples.{j}`: `mult` ResidualBlocks (+ Resample when up_flag), plus DupUp3D of the input
    when up_flag."""

    def __init__(self, in_dim: int, out_dim: int, mult: int, temporal_upsample: bool, up_flag: bool) -> None:
        super().__init__()
        self.avg_shortcut = (DupUp3D(in_dim, out_dim, factor_t=2 if temporal_upsample else 1, factor_s=2)
                             if up_flag else None)
        layers: list[nn.Module] = []
        for _ in range(mult):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if up_flag:
            mode = "upsample3d" if temporal_upsample else "upsample2d"
            layers.append(Resample(out_dim, mode, upsample_out=out_dim))
        self.upsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache], first_chunk: bool = False) -> torch.Tensor:
        h = x
        for layer in self.upsamples:
            h = layer(h, cache)
        if self.avg_shortcut is None:
            return h
        return h.add_(self.avg_shortcut(x, first_chunk))


class Encoder22(CausalEncoder):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * u for u in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3 * PATCH * PATCH, dims[0], 3, padding=1)
        levels = len(cfg.dim_mult)
        self.downsamples = nn.Sequential(*[
            Down_ResidualBlock(in_dim, out_dim, cfg.num_res_blocks,
                               temporal_downsample=i < len(cfg.temporal_downsample) and cfg.temporal_downsample[i],
                               down_flag=i != levels - 1)
            for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:]))])
        self.middle = make_middle(dims[-1])
        self.head = make_head(dims[-1], cfg.z_dim * 2)


class Decoder22(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dec_dim * u for u in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = make_middle(dims[0])
        levels = len(cfg.dim_mult)
        t_up = cfg.temporal_upsample
        self.upsamples = nn.Sequential(*[
            Up_ResidualBlock(in_dim, out_dim, cfg.num_res_blocks + 1,
                             temporal_upsample=i < len(t_up) and t_up[i], up_flag=i != levels - 1)
            for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:]))])
        self.head = make_head(dims[-1], 3 * PATCH * PATCH)

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache], first_chunk: bool = False) -> torch.Tensor:
        x = cached_conv(self.conv1, x, cache)
        x = run_middle(self.middle, x, cache)
        for layer in self.upsamples:
            x = layer(x, cache, first_chunk)
        return run_head(self.head, x, cache)


class WanVAE22(CausalVideoVAE):
    """`encode(video [B,3,F,H,W] in [-1,1]) -> [B,48,1+(F-1)/4,H/16,W/16]` (normalised) and
    `decode(latent) -> [B,3,F,H,W]` clamped to [-1, 1]; see `CausalVideoVAE`."""

    latent_mean = WAN22_LATENT_MEAN
    latent_std = WAN22_LATENT_STD
    patch = PATCH

    def __init__(self, cfg: VAEConfig = WAN22_CONFIG) -> None:
        super().__init__(cfg)
        self.encoder = Encoder22(cfg)
        self.decoder = Decoder22(cfg)

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x, PATCH)

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, PATCH)
