"""Building blocks shared by the Wan2.1 and Wan2.2 video VAEs (causal 3-D convolutions with a
per-call frame cache, RMS norm, residual/attention blocks, spatial/temporal resampling).

Reference: `wan/modules/vae2_1.py` and `vae2_2.py` of github.com/Wan-Video/Wan2.2 @ 42bf4cf.
Module and parameter names follow the official ones so the official state dicts load with
strict=True.

Causal chunking. The official VAEs run the encoder on chunks of frames (1, then 4 at a time) and
the decoder on one latent frame at a time. Every temporal convolution then needs the last
`CACHE_T` input frames of the previous chunk, which the official code keeps in a list on the
model (`_feat_map`) indexed by a running counter. Here the cache is a `CausalCache` object created
per encode/decode call and keyed by module, so the model itself holds no state between calls.

Memory. Spatial 2-D convolutions of `Resample` run as 3-D convolutions with a (1, k, k) kernel on
the [B, C, T, H, W] tensor (the official code folds time into the batch, which costs two extra
full-size permuted copies), the causal convolution pads H/W inside the convolution and pads time
with a single concatenation (the official code pads a second full-size copy), and decoded frames
go straight into a preallocated output (the official code re-concatenates the output per frame).
Measured on an H200, fp32, random real-size weights, peak above the weights: Wan2.1 decode of
81×720×1280 18.9 GiB (official-style ops 20.2 GiB before the output re-concatenation), encode
14.8 GiB; Wan2.2 decode of 121×704×1280 18.5 GiB (19.4), encode 6.7 GiB. About 7 GiB of the
Wan2.1 decode peak is the frame cache itself (2 frames per causal conv, inherent to the scheme).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from wan_core.errors import InputError

CACHE_T = 2
"""Frames of the previous chunk that a causal conv with a temporal kernel of 3 needs."""

_REP = "Rep"
"""Cache marker of an `upsample3d` whose first chunk skipped the temporal upsampling (official name)."""


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a Wan VAE. The widths are read from the checkpoint (`config_from_state_dict`);
    the other fields are the same in every official VAE and in the tiny test ones."""

    dim: int
    """Encoder base width (real: 96 for Wan2.1, 160 for Wan2.2)."""
    z_dim: int
    """Latent channels (16 for Wan2.1, 48 for Wan2.2). The encoder head outputs 2·z_dim (mu, log_var)."""
    dec_dim: int
    """Decoder base width (Wan2.1: equal to dim; Wan2.2: 256 real)."""
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    """Per encoder level; the decoder upsamples in time at the mirrored levels."""

    @property
    def temporal_upsample(self) -> tuple[bool, ...]:
        return tuple(reversed(self.temporal_downsample))


def config_from_state_dict(sd: dict, dec_dim_key: str = "decoder.head.0.gamma") -> VAEConfig:
    """Infer the widths from tensor shapes: `encoder.conv1.weight` [dim, Cin, 3, 3, 3],
    `conv2.weight` [z_dim, z_dim, 1, 1, 1], `decoder.head.0.gamma` [dec_dim, 1, 1, 1]."""
    return VAEConfig(dim=int(sd["encoder.conv1.weight"].shape[0]),
                     z_dim=int(sd["conv2.weight"].shape[0]),
                     dec_dim=int(sd[dec_dim_key].shape[0]))


class RowHalo(Protocol):
    """What a decoder module needs when the frame is split by rows across processes (implemented
    in wan_core/distributed/vae_split.py; the model never talks to other processes itself).

    Every module with a spatial kernel asks for `n` rows above and below its tile before it
    convolves (the neighbours' rows, zeros at the frame's edges: exactly the zero padding a
    one-process convolution applies there); the attention block works on the whole frame."""

    def pad_rows(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """[B, C, T, h, W] -> [B, C, T, n + h + n, W]."""
        ...

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """This tile -> the whole frame (every tile, in row order)."""
        ...

    def own_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Whole frame -> this process's tile."""
        ...


class CausalCache:
    """Frames carried from one chunk to the next, for one encode or decode call. Keyed by module."""

    def __init__(self) -> None:
        self._frames: dict[nn.Module, object] = {}

    def get(self, module: nn.Module):
        return self._frames.get(module)

    def put(self, module: nn.Module, value) -> None:
        self._frames[module] = value


class CausalConv3d(nn.Conv3d):
    """Conv3d whose temporal padding is all in front (2·p_t frames), so frame t sees only frames <= t.
    `prev` (the previous chunk's last frames) replaces that many zero frames of the padding."""

    halo: Optional[RowHalo] = None
    """Set from outside when the frame is split by rows (see `RowHalo`); None: the whole frame."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._front = 2 * self.padding[0]
        # H/W are zero-padded by the convolution itself; time is padded in forward.
        self.padding = (0, self.padding[1], self.padding[2])

    def forward(self, x: torch.Tensor, prev: Optional[torch.Tensor] = None) -> torch.Tensor:
        front = self._front
        if front == 0:
            return self._spatial(x)
        parts = [x]
        if prev is not None:
            parts.insert(0, prev.to(x.device, x.dtype))
            front -= prev.shape[2]
        if front > 0:
            b, c, _, h, w = x.shape
            parts.insert(0, x.new_zeros(b, c, front, h, w))
        return self._spatial(torch.cat(parts, dim=2) if len(parts) > 1 else x)

    def _spatial(self, x: torch.Tensor) -> torch.Tensor:
        ph = self.padding[1]
        if self.halo is None or ph == 0:
            return super().forward(x)
        # The neighbours' rows replace the zero padding in H at tile borders (same values as one frame).
        return F.conv3d(self.halo.pad_rows(x, ph), self.weight, self.bias, self.stride,
                        (0, 0, self.padding[2]), self.dilation, self.groups)


def cached_conv(conv: CausalConv3d, x: torch.Tensor, cache: Optional[CausalCache]) -> torch.Tensor:
    """Run `conv` on this chunk with the previous chunk's frames, then keep this chunk's last
    CACHE_T frames (topped up with the previous chunk's last frame when the chunk has one frame)."""
    if cache is None:
        return conv(x)
    prev = cache.get(conv)
    keep = x[:, :, -CACHE_T:].clone()
    if keep.shape[2] < CACHE_T and prev is not None:
        keep = torch.cat([prev[:, :, -1:].to(keep.device), keep], dim=2)
    out = conv(x, prev)
    cache.put(conv, keep)
    return out


class RMS_norm(nn.Module):  # noqa: N801 (official name)
    """`F.normalize(x, dim=1) · sqrt(C) · gamma` over the channel dim; gamma is [C,1,1,1] (video)
    or [C,1,1] (images)."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same operations, in the same order, as the official; in place on the fresh tensor.
        return F.normalize(x, dim=1).mul_(self.scale).mul_(self.gamma)


def _conv2d_on_video(conv: nn.Conv2d, x: torch.Tensor, halo: Optional[RowHalo] = None) -> torch.Tensor:
    """Apply a Conv2d to every frame of [B, C, T, H, W] without folding time into the batch."""
    ph, pw = conv.padding
    if halo is not None and ph:
        x, ph = halo.pad_rows(x, ph), 0
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, *conv.stride), padding=(0, ph, pw))


class Upsample(nn.Module):
    """Nearest-exact ×2 in H and W, computed in fp32 as the official `Upsample.forward` does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=(1.0, 2.0, 2.0), mode="nearest-exact").to(x.dtype)


class Resample(nn.Module):
    """Spatial ×2 up/down (`resample.1` is the Conv2d), plus a temporal ×2 for the 3d modes
    (`time_conv`). `upsample_out` is the Conv2d's output width: dim//2 in Wan2.1, dim in Wan2.2."""

    halo: Optional[RowHalo] = None
    """See `CausalConv3d.halo` (decoding only: the upsample convs)."""

    def __init__(self, dim: int, mode: str, upsample_out: Optional[int] = None) -> None:
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(Upsample(), nn.Conv2d(dim, upsample_out, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))
        else:
            raise ValueError(f"unknown Resample mode {mode!r}")

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache] = None) -> torch.Tensor:
        if self.mode == "upsample3d" and cache is not None:
            x = self._time_upsample(x, cache)
        if self.mode.startswith("upsample"):
            x = _conv2d_on_video(self.resample[1], self.resample[0](x), self.halo)
        else:
            x = _conv2d_on_video(self.resample[1], F.pad(x, (0, 1, 0, 1)))
        if self.mode == "downsample3d" and cache is not None:
            x = self._time_downsample(x, cache)
        return x

    def _time_upsample(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # [B, C, T, H, W] -> [B, C, 2T, H, W]: time_conv doubles the channels, the two halves are
        # interleaved as frames. The first chunk is passed through unchanged ('Rep'), and the chunk
        # after it sees zeros, not the first chunk, in front (official behaviour).
        prev = cache.get(self)
        if prev is None:
            cache.put(self, _REP)
            return x
        keep = x[:, :, -CACHE_T:].clone()
        if keep.shape[2] < CACHE_T:
            head = torch.zeros_like(keep) if prev is _REP else prev[:, :, -1:].to(keep.device)
            keep = torch.cat([head, keep], dim=2)
        x = self.time_conv(x) if prev is _REP else self.time_conv(x, prev)
        cache.put(self, keep)
        b, c2, t, h, w = x.shape
        x = x.reshape(b, 2, c2 // 2, t, h, w)
        return torch.stack((x[:, 0], x[:, 1]), dim=3).reshape(b, c2 // 2, 2 * t, h, w)

    def _time_downsample(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # The first chunk (one frame) is kept as is; later chunks are convolved (kernel 3, stride 2,
        # no padding) together with the previous chunk's last frame: 1 + 4 frames -> 2.
        prev = cache.get(self)
        keep = x[:, :, -1:].clone()
        if prev is not None:
            x = self.time_conv(torch.cat([prev.to(x.device), x], dim=2))
        cache.put(self, keep)
        return x


class ResidualBlock(nn.Module):
    """RMS→SiLU→CausalConv3d(3)→RMS→SiLU→Dropout→CausalConv3d(3), plus a 1×1×1 conv shortcut when
    the width changes. Keys `residual.{0,2,3,6}`, `shortcut`."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False), nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False), nn.SiLU(), nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache] = None) -> torch.Tensor:
        r = self.residual
        h = F.silu(r[0](x), inplace=True)
        h = cached_conv(r[2], h, cache)
        h = r[5](F.silu(r[3](h), inplace=True))
        h = cached_conv(r[6], h, cache)
        return h.add_(self.shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H·W positions of each frame (middle of the VAE)."""

    halo: Optional[RowHalo] = None
    """See `CausalConv3d.halo`: with a row split the block runs on the gathered whole frame."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.halo is not None:   # attention spans the frame: gather it, keep our rows after
            return self.halo.own_rows(self._frame(self.halo.gather_rows(x)))
        return self._frame(x)

    def _frame(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x = self.norm(x)
        # [bt, 1, hw, c] each, as the official (one head, head dim = c)
        q, k, v = (self.to_qkv(x).reshape(b * t, 1, c * 3, h * w)
                   .permute(0, 1, 3, 2).contiguous().chunk(3, dim=-1))
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)
        x = self.proj(x)
        x = x.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)
        return x + identity


def make_middle(dim: int, dropout: float = 0.0) -> nn.Sequential:
    """`middle.{0,1,2}`: ResidualBlock, AttentionBlock, ResidualBlock."""
    return nn.Sequential(ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout))


def run_middle(middle: nn.Sequential, x: torch.Tensor, cache: Optional[CausalCache]) -> torch.Tensor:
    x = middle[0](x, cache)
    x = middle[1](x)
    return middle[2](x, cache)


def make_head(in_dim: int, out_dim: int) -> nn.Sequential:
    """`head.{0,2}`: RMS_norm, SiLU, CausalConv3d(3)."""
    return nn.Sequential(RMS_norm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1))


def run_head(head: nn.Sequential, x: torch.Tensor, cache: Optional[CausalCache]) -> torch.Tensor:
    return cached_conv(head[2], F.silu(head[0](x), inplace=True), cache)


class CausalEncoder(nn.Module):
    """The encoder pass of both VAEs: conv1 -> downsamples -> middle -> head, every causal conv
    through the chunk cache. Subclasses (`Encoder21`, `Encoder22`) build those four modules; only
    their downsample levels differ (plain ResidualBlocks vs `Down_ResidualBlock` with shortcut)."""

    conv1: CausalConv3d
    downsamples: nn.Sequential
    middle: nn.Sequential
    head: nn.Sequential

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache]) -> torch.Tensor:
        x = cached_conv(self.conv1, x, cache)
        for layer in self.downsamples:
            x = layer(x, cache)
        x = run_middle(self.middle, x, cache)
        return run_head(self.head, x, cache)


def latent_stats(mean: tuple[float, ...], std: tuple[float, ...], like: torch.Tensor):
    """(mean, 1/std) as [1, C, 1, 1, 1] fp32 tensors on `like`'s device. The official wrapper keeps
    `scale = [mean, 1.0 / std]` and normalises `(mu - mean) * (1/std)`, unnormalises `z / (1/std) + mean`."""
    m = torch.tensor(mean, dtype=torch.float32, device=like.device).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(std, dtype=torch.float32, device=like.device).view(1, -1, 1, 1, 1)
    return m, inv_std


class CausalVideoVAE(nn.Module):
    """Encode/decode loop shared by both VAEs: official causal chunking, `mu`-only encoding and the
    latent normalisation. Subclasses set `encoder`, `decoder`, `conv1`, `conv2`, the latent
    constants and `patch` (spatial patchify factor applied outside the encoder/decoder).

    Precision: fp32 weights run fp32 math, except that on CUDA PyTorch's default
    `torch.backends.cudnn.allow_tf32 = True` (the official runs use it too) makes the convolutions
    TF32: ~1e-2 relative to fp32 on the tiny goldens. This class leaves that global flag alone."""

    latent_mean: tuple[float, ...] = ()
    latent_std: tuple[float, ...] = ()
    patch: int = 1

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.z_dim = cfg.z_dim
        levels = len(cfg.dim_mult) - 1
        self.stride = (2 ** sum(cfg.temporal_downsample), 2 ** levels * self.patch, 2 ** levels * self.patch)
        """(frames, height, width) per latent cell; F frames <-> 1 + (F - 1) / stride[0] latent frames."""
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, F, H, W] in [-1, 1], F = 1 + 4k, H/W multiples of stride ->
        normalised latent [B, z_dim, 1 + k, H/s, W/s] fp32 (on this module's device).

        The first frame is encoded alone, then 4 frames at a time; `video` may stay on the CPU (each
        chunk is moved to the device when it is encoded)."""
        self._check_video(video)
        st = self.stride[0]
        cache = CausalCache()
        bounds = [(0, 1)] + [(s, s + st) for s in range(1, video.shape[2], st)]
        chunks = []
        for start, end in bounds:
            x = video[:, :, start:end].to(device=self.device, dtype=self.dtype)
            chunks.append(self.encoder(self._patchify(x), cache))
        mu = self.conv1(torch.cat(chunks, dim=2))[:, :self.z_dim]  # (mu, log_var): only mu is used
        mean, inv_std = latent_stats(self.latent_mean, self.latent_std, mu)
        return (mu.float() - mean) * inv_std

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """normalised latent [B, z_dim, T, h, w] -> video [B, 3, 1 + 4(T-1), h·s, w·s] fp32 in [-1, 1].

        One latent frame per decoder call (the first one with `first_chunk=True`); each call's
        frames are written straight into the preallocated output."""
        self._check_latent(latent)
        z = latent.to(device=self.device, dtype=torch.float32)
        mean, inv_std = latent_stats(self.latent_mean, self.latent_std, z)
        z = z / inv_std + mean
        x = self.conv2(z.to(self.dtype))
        b, _, t, h, w = x.shape
        frames = 1 + self.stride[0] * (t - 1)
        out = torch.empty(b, 3, frames, h * self.stride[1], w * self.stride[2],
                          dtype=torch.float32, device=self.device)
        cache = CausalCache()
        pos = 0
        for i in range(t):
            y = self._unpatchify(self.decoder(x[:, :, i:i + 1], cache, first_chunk=(i == 0)))
            n = y.shape[2]
            out[:, :, pos:pos + n] = y.clamp_(-1, 1)
            pos += n
        if pos != frames:
            raise RuntimeError(f"VAE decoder produced {pos} frames for {t} latent frames, expected {frames}")
        return out

    def _check_video(self, video: torch.Tensor) -> None:
        st, sh, sw = self.stride
        if video.dim() != 5 or video.shape[1] != 3:
            raise InputError(f"VAE encode expects a video [B, 3, F, H, W]; got shape {tuple(video.shape)}")
        f, h, w = video.shape[2:]
        if (f - 1) % st or h % sh or w % sw:
            raise InputError(
                f"VAE encode: video of {f} frames {h}x{w} (HxW); the frame count must be 1 + {st}·k "
                f"and H, W multiples of {sh} and {sw}")

    def _check_latent(self, latent: torch.Tensor) -> None:
        if latent.dim() != 5 or latent.shape[1] != self.z_dim or latent.shape[2] < 1:
            raise InputError(f"VAE decode expects a latent [B, {self.z_dim}, T>=1, h, w]; "
                             f"got shape {tuple(latent.shape)}")
