"""The S2V-14B DiT (`WanModel_S2V`): audio injection, causal audio encoder, frame-pack motion tokens,
reference-image tokens, pose condition, and the two-segment (t / t=0) modulation.

Math: official `wan/modules/s2v/*`. It reuses the Wan DiT
(models/dit.py): the embeddings, time MLP, attention modules, RoPE and head are the same modules
with the same parameter names, so the official checkpoint loads without a key map. Precision
policy as in models/layers.py: big linears/convs in the parameter dtype, time MLP, norms,
modulation, head and the causal audio encoder (an fp32 autocast region in the official code) in
float32, RoPE in float64, the residual stream in float32.

Token sequence of one sample (one self-attention sequence, no padding on one device):
    [ noisy video f*h*w | reference h*w | motion: post h*w, 2x (h/2)*(w/2), 4x 4*(h/4)*(w/4) ]
RoPE positions (frame, row, col): video (0..f-1, ., .); reference frame 30; motion tokens at
negative frames (conjugated tables): post -1, 2x -3, 4x -19/-14/-9/-4, with the coarse grids'
rows/cols stretched over the full grid (`np.linspace(...).astype(int)`, as the official
`rope_precompute`). `drop_motion_frames` removes the motion tokens.
Modulation: video tokens with the step's t, reference and motion tokens with t = 0
(`zero_timestep`). After the blocks listed in `audio_inject_layers`, the video tokens of each
latent frame cross-attend to that frame's 5 audio tokens (AdaLayerNorm on the global audio token
first) and the result is added to them.

Injection points for distributed/ (as WanModel): `block.self_attn.attn`, `model.token_sharding`
(the sequence is zero-padded to a multiple of the degree; padded keys are masked, the audio
injection gathers the video tokens first), `model.blocks`, `set_attention_kernel`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import padded_seq_len
from .dit import DiTConfig, WanAttentionBlock, WanCrossAttention, WanModel
from .layers import compute_dtype, linear
from .rope import grid_table, rope_freqs

# ---------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class S2VConfig:
    """config.json of `WanModel_S2V`: the DiT fields plus the S2V ones (official names)."""

    base: DiTConfig
    cond_dim: int = 16
    audio_dim: int = 1024
    num_audio_token: int = 4
    enable_adain: bool = True
    adain_mode: str = "attn_norm"
    audio_inject_layers: tuple[int, ...] = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)
    zero_timestep: bool = True
    enable_motioner: bool = False
    add_last_motion: bool = True
    enable_framepack: bool = True
    framepack_drop_mode: str = "padd"
    num_wav2vec_layers: int = 25            # fixed by the official class (CausalAudioEncoder)
    zip_frame_buckets: tuple[int, ...] = (1, 2, 16)

    _S2V_KEYS = ("cond_dim", "audio_dim", "num_audio_token", "enable_adain", "adain_mode",
                 "audio_inject_layers", "zero_timestep", "enable_motioner", "add_last_motion",
                 "enable_framepack", "framepack_drop_mode")

    @property
    def lat_motion_frames(self) -> int:
        return int(sum(self.zip_frame_buckets))

    @classmethod
    def from_dict(cls, d: dict) -> "S2VConfig":
        base = DiTConfig.from_dict({**d, "model_type": d.get("model_type", "s2v")})
        kw = {}
        for k in cls._S2V_KEYS:
            if k in d:
                v = d[k]
                kw[k] = tuple(v) if isinstance(v, list) else v
        cfg = cls(base=base, **kw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        b = self.base
        if b.model_type != "s2v":
            raise ValueError(f"model_type {b.model_type!r} is not 's2v'")
        if self.enable_motioner or not self.enable_framepack:
            raise ValueError("only the released S2V configuration is implemented (enable_framepack "
                             f"true, enable_motioner false); got enable_framepack={self.enable_framepack}, "
                             f"enable_motioner={self.enable_motioner}")
        if self.framepack_drop_mode != "padd":
            raise ValueError(f"framepack_drop_mode {self.framepack_drop_mode!r} is not implemented "
                             "(the released model uses 'padd')")
        if not self.enable_adain or self.adain_mode != "attn_norm":
            raise ValueError("only enable_adain=true with adain_mode='attn_norm' (the released model) "
                             f"is implemented; got {self.enable_adain}, {self.adain_mode!r}")
        if not self.zero_timestep:
            raise ValueError("zero_timestep=false is not implemented (the released model uses true)")
        if b.dim % 4 or self.cond_dim <= 0:
            raise ValueError(f"dim {b.dim} must be a multiple of 4 and cond_dim positive")
        bad = [i for i in self.audio_inject_layers if not 0 <= i < b.num_layers]
        if bad or len(set(self.audio_inject_layers)) != len(self.audio_inject_layers):
            raise ValueError(f"audio_inject_layers {list(self.audio_inject_layers)} must be distinct "
                             f"block indices in 0..{b.num_layers - 1}")


# ---------------------------------------------------------------------------------------------
# Audio: causal encoder (official CausalAudioEncoder / MotionEncoder_tc)


class CausalConv1d(nn.Module):
    """Replicate-pad k-1 frames on the left, then Conv1d (computed in float32)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.k = k
        self.conv = nn.Conv1d(cin, cout, k, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # [B, C, T] fp32
        x = F.pad(x, (self.k - 1, 0), mode="replicate")
        c = self.conv
        return F.conv1d(x, c.weight.float(), c.bias.float(), stride=c.stride)


def _ln(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=eps)


class MotionEncoderTC(nn.Module):
    """[B, T, C_audio] -> (global [B, T', 1, dim], local [B, T', num_token + 1, dim]), T' = ceil(ceil(T/2)/2)."""

    def __init__(self, in_dim: int, hidden: int, num_token: int) -> None:
        super().__init__()
        self.num_token = num_token
        self.conv1_local = CausalConv1d(in_dim, hidden // 4 * num_token, 3, 1)
        self.conv1_global = CausalConv1d(in_dim, hidden // 4, 3, 1)
        self.conv2 = CausalConv1d(hidden // 4, hidden // 2, 3, 2)
        self.conv3 = CausalConv1d(hidden // 2, hidden, 3, 2)
        self.final_linear = nn.Linear(hidden, hidden)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, hidden))

    def _tail(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, c] after conv1 -> LN, SiLU, conv2, LN, SiLU, conv3, LN, SiLU -> [N, T', hidden]."""
        x = F.silu(_ln(x))
        x = self.conv2(x.transpose(1, 2)).transpose(1, 2)
        x = F.silu(_ln(x))
        x = self.conv3(x.transpose(1, 2)).transpose(1, 2)
        return F.silu(_ln(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        xc = x.transpose(1, 2)                                   # [B, C, T]
        loc = self.conv1_local(xc)                                # [B, n*c, T]
        n = self.num_token
        loc = loc.view(b, n, -1, t).permute(0, 1, 3, 2).reshape(b * n, t, -1)   # b (n c) t -> (b n) t c
        loc = self._tail(loc)                                     # [(b n), T', hidden]
        loc = loc.view(b, n, loc.shape[1], -1).transpose(1, 2)    # (b n) t c -> b t n c
        pad = self.padding_tokens.float().expand(b, loc.shape[1], 1, -1)
        x_local = torch.cat([loc, pad], dim=2)

        glb = self.conv1_global(xc).transpose(1, 2)               # [B, T, hidden/4]
        glb = self._tail(glb)
        fl = self.final_linear
        glb = F.linear(glb, fl.weight.float(), fl.bias.float())
        return glb[:, :, None], x_local


class CausalAudioEncoder(nn.Module):
    """Mixes the wav2vec2 layers with SiLU weights, then MotionEncoderTC. Float32 throughout."""

    def __init__(self, audio_dim: int, dim: int, num_token: int, num_layers: int = 25) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.full((1, num_layers, 1, 1), 0.01))
        self.encoder = MotionEncoderTC(audio_dim, dim, num_token)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, layers, C_audio, T] -> (global [B, T', 1, dim], local [B, T', 5, dim])."""
        w = F.silu(self.weights.float())
        feat = ((features.float() * w) / w.sum(dim=1, keepdim=True)).sum(dim=1)   # [B, C, T]
        return self.encoder(feat.transpose(1, 2))


class AdaLayerNorm(nn.Module):
    """diffusers AdaLayerNorm(chunk_dim=1): LN_1e-5(x) * (1 + scale) + shift, (shift, scale) = Linear(SiLU(temb))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        emb = linear(F.silu(temb), self.linear).float()
        shift, scale = emb.chunk(2, dim=1)
        return _ln(x.float(), 1e-5) * (1 + scale[:, None]) + shift[:, None]


class AudioInjector(nn.Module):
    """`injector[k]`: cross-attention of video tokens to audio tokens after block `layers[k]`."""

    def __init__(self, dim: int, num_heads: int, layers: Sequence[int], eps: float, kernel=None) -> None:
        super().__init__()
        self.block_to_injector = {int(b): i for i, b in enumerate(layers)}
        self.injector = nn.ModuleList([WanCrossAttention(dim, num_heads, eps, True, kernel) for _ in layers])
        self.injector_adain_layers = nn.ModuleList([AdaLayerNorm(dim) for _ in layers])


# ---------------------------------------------------------------------------------------------
# Motion frames: frame pack (official FramePackMotioner, drop_mode 'padd')


class FramePacker(nn.Module):
    """Packs the newest 19 motion latents into tokens: 1 frame at full, 2 at 1/2, 16 at 1/4 resolution."""

    def __init__(self, dim: int, in_dim: int = 16, buckets: Sequence[int] = (1, 2, 16)) -> None:
        super().__init__()
        self.buckets = tuple(int(b) for b in buckets)
        self.proj = nn.Conv3d(in_dim, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.proj_2x = nn.Conv3d(in_dim, dim, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.proj_4x = nn.Conv3d(in_dim, dim, kernel_size=(4, 8, 8), stride=(4, 8, 8))

    def forward(self, motion: torch.Tensor, add_last_motion: int = 2) -> torch.Tensor:
        """motion [B, C, T_m, H, W] -> tokens [B, L_m, dim] in order post, 2x, 4x."""
        b, c, tm, hh, ww = motion.shape
        total = sum(self.buckets)
        w = self.proj.weight
        padd = motion.new_zeros(b, c, total, hh, ww, dtype=w.dtype)
        n = min(total, tm)
        if n > 0:
            padd[:, :, -n:] = motion[:, :, -n:].to(w.dtype)
        if add_last_motion < 2:      # 'padd' mode: the newest buckets are zeroed, not dropped
            zero_end = sum(self.buckets[: len(self.buckets) - add_last_motion - 1])
            if zero_end > 0:
                padd[:, :, -zero_end:] = 0
        b4, b2, b1 = padd.split(list(self.buckets)[::-1], dim=2)     # oldest 16 | 2 | newest 1
        out = []
        for conv, lat in ((self.proj, b1), (self.proj_2x, b2), (self.proj_4x, b4)):
            y = F.conv3d(lat, conv.weight, conv.bias, stride=conv.stride)
            out.append(y.flatten(2).transpose(1, 2))
        return torch.cat(out, dim=1)


def _positions(start: Sequence[int], end: Sequence[int], extent: Sequence[int]):
    """Official `rope_precompute` sampling for one grid: (f, h, w) positions per token, f signed."""
    f_o, h_o, w_o = start
    f, h, w = end
    t_f, t_h, t_w = extent
    seq_f, seq_h, seq_w = f - f_o, h - h_o, w - w_o
    if f_o >= 0:
        f_sam = np.linspace(f_o, t_f + f_o - 1, seq_f).astype(int)
    else:
        f_sam = -np.linspace(-f_o, -t_f - f_o + 1, seq_f).astype(int)   # negative: conjugated table
    h_sam = np.linspace(h_o, t_h + h_o - 1, seq_h).astype(int)
    w_sam = np.linspace(w_o, t_w + w_o - 1, seq_w).astype(int)
    ff, hh, ww = np.meshgrid(f_sam, h_sam, w_sam, indexing="ij")
    return ff.reshape(-1), hh.reshape(-1), ww.reshape(-1)


def _table(pos, head_dim: int) -> torch.Tensor:
    """complex128 [L, head_dim/2] for signed integer positions (negative frame -> conjugate)."""
    f_pos, h_pos, w_pos = (torch.from_numpy(np.asarray(p, dtype=np.int64)) for p in pos)
    tables = rope_freqs(head_dim)
    parts = []
    for tab, p in zip(tables, (f_pos, h_pos, w_pos)):
        row = tab[p.abs()]
        parts.append(torch.where((p < 0)[:, None], row.conj(), row))
    return torch.cat(parts, dim=-1)


def ref_rope(h: int, w: int, head_dim: int) -> torch.Tensor:
    """Reference tokens: frame 30, rows 0..h-1, cols 0..w-1."""
    return _table(_positions((30, 0, 0), (31, h, w), (1, h, w)), head_dim)


def motion_rope(h: int, w: int, head_dim: int, buckets: Sequence[int] = (1, 2, 16)) -> torch.Tensor:
    """Frame-pack tokens (post, 2x, 4x) for a token grid h x w (latent H/2 x W/2)."""
    b0, b1, b2 = buckets
    grids = [((-b0, 0, 0), (-b0 + b0, h, w), (b0, h, w)),
             ((-(b0 + b1), 0, 0), (-(b0 + b1) + b1 // 2, h // 2, w // 2), (b1, h, w)),
             ((-(b0 + b1 + b2), 0, 0), (-(b0 + b1 + b2) + b2 // 4, h // 4, w // 4), (b2, h, w))]
    return torch.cat([_table(_positions(*g), head_dim) for g in grids])


# ---------------------------------------------------------------------------------------------
# Block with two modulation segments


class S2VAttentionBlock(WanAttentionBlock):
    """WanAttentionBlock whose tokens [0, seg) use the step's modulation and [seg, L) the t=0 one."""

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor,  # type: ignore[override]
                rope: torch.Tensor, k_lens: torch.Tensor, seg: int = 0) -> torch.Tensor:
        """x [B, L, dim] fp32; e0 [B, 2, 6, dim] (segment 0: t, segment 1: t=0); seg = local tokens of segment 0."""

        def mod(i: int) -> torch.Tensor:                       # [B, 2, dim] fp32
            return self.modulation[:, i].float()[:, None] + e0[:, :, i]

        def affine(h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
            return torch.cat([h[:, :seg] * (1 + scale[:, :1]) + shift[:, :1],
                              h[:, seg:] * (1 + scale[:, 1:]) + shift[:, 1:]], dim=1)

        def gate(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            return torch.cat([y[:, :seg] * g[:, :1], y[:, seg:] * g[:, 1:]], dim=1)

        h = affine(self.norm1(x).float(), mod(1), mod(0))
        x = x + gate(self.self_attn(h, rope, k_lens), mod(2))
        x = x + self.cross_attn(self.norm3(x), context)
        h = affine(self.norm2(x).float(), mod(4), mod(3))
        ffn0, ffn2 = self.ffn[0], self.ffn[2]   # through `linear`: LoRA deltas apply (models/layers.py)
        y = linear(F.gelu(linear(h.to(compute_dtype(ffn0)), ffn0), approximate="tanh"), ffn2)
        return x + gate(y, mod(5))


# ---------------------------------------------------------------------------------------------
# Model


class WanModelS2V(WanModel):
    """`forward(x [B,16,F,H,W], t [B], context, ref_latents, motion_latents, cond_states, audio_input, ...)`
    -> [B, 16, F, H, W] float32. See the module docstring."""

    def __init__(self, cfg: S2VConfig, kernel=None) -> None:
        super().__init__(cfg.base, kernel)
        b = cfg.base
        self.s2v_cfg = cfg
        self.blocks = nn.ModuleList([
            S2VAttentionBlock(b.dim, b.ffn_dim, b.num_heads, b.eps, b.qk_norm, b.cross_attn_norm, kernel)
            for _ in range(b.num_layers)])
        self.cond_encoder = nn.Conv3d(cfg.cond_dim, b.dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.casual_audio_encoder = CausalAudioEncoder(cfg.audio_dim, b.dim, cfg.num_audio_token,
                                                       cfg.num_wav2vec_layers)
        self.audio_injector = AudioInjector(b.dim, b.num_heads, cfg.audio_inject_layers, b.eps, kernel)
        self.trainable_cond_mask = nn.Embedding(3, b.dim)
        self.frame_packer = FramePacker(b.dim, b.in_dim, cfg.zip_frame_buckets)
        self._s2v_rope_cache: tuple = (None, None)

    # -- pieces ---------------------------------------------------------------------------------

    def _patch(self, conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
        w = conv.weight
        return F.conv3d(x.to(device=w.device, dtype=w.dtype), w, conv.bias, stride=self.patch_size)

    def _rope(self, grid, n_motion: bool, device) -> torch.Tensor:
        key = (tuple(grid), n_motion, str(device))
        if self._s2v_rope_cache[0] != key:
            f, h, w = grid
            hd = self.cfg.head_dim
            parts = [grid_table(grid, hd), ref_rope(h, w, hd)]
            if n_motion:
                parts.append(motion_rope(h, w, hd, self.s2v_cfg.zip_frame_buckets))
            self._s2v_rope_cache = (key, torch.cat(parts).to(device))
        return self._s2v_rope_cache[1]

    def _inject_audio(self, block_idx: int, x: torch.Tensor, n_video: int, frames: int,
                      audio_local: torch.Tensor, audio_global: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim] (all tokens): add the audio cross-attention to the first n_video tokens."""
        k = self.audio_injector.block_to_injector[block_idx]
        b = x.shape[0]
        h = x[:, :n_video].reshape(b * frames, n_video // frames, -1)          # b (t n) c -> (b t) n c
        temb = audio_global.reshape(b * frames, -1)                             # [(b t), dim]
        h = self.audio_injector.injector_adain_layers[k](h, temb)
        ctx = audio_local.reshape(b * frames, audio_local.shape[2], -1)          # [(b t), 5, dim]
        res = self.audio_injector.injector[k](h, ctx)
        out = x.clone()
        out[:, :n_video] = x[:, :n_video] + res.reshape(b, n_video, -1).float()
        return out

    # -- forward --------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, context, ref_latents: torch.Tensor,  # type: ignore[override]
                motion_latents: torch.Tensor, cond_states: Optional[torch.Tensor],
                audio_input: torch.Tensor, motion_frames: Sequence[int] = (73, 19),
                add_last_motion: int = 2, drop_motion_frames: bool = False,
                seq_len: Optional[int] = None) -> torch.Tensor:
        """x [B, 16, F, H, W] noisy latent; t [B] (or a scalar); context: [B, L, 4096] or a list;
        ref_latents [B|1, 16, 1, H, W]; motion_latents [B|1, 16, T_m, H, W]; cond_states
        [B|1, 16, F, H, W] pose latents (None = zeros); audio_input [B, 25, C_audio, frames]
        (frames = 4 * F). `seq_len` is accepted for the official signature and ignored (S2V has
        no padding)."""
        cfg = self.s2v_cfg
        if x.dim() != 5 or x.shape[1] != self.cfg.in_dim:
            raise ValueError(f"x must be [B, {self.cfg.in_dim}, F, H, W]; got {list(x.shape)}")
        b = x.shape[0]
        device = self.patch_embedding.weight.device

        def batched(v: torch.Tensor, name: str) -> torch.Tensor:
            if v.dim() == 4:
                v = v[None]
            if v.shape[0] not in (1, b):
                raise ValueError(f"{name} has batch {v.shape[0]}, x has {b}")
            return v.expand(b, *v.shape[1:])

        ref_latents = batched(ref_latents, "ref_latents")
        motion_latents = batched(motion_latents, "motion_latents")

        # Audio: prepend motion_frames[0] copies of the first frame, encode, drop the motion part.
        if audio_input.dim() != 4 or audio_input.shape[0] not in (1, b):
            raise ValueError(f"audio_input must be [B, layers, C, frames]; got {list(audio_input.shape)}")
        audio = audio_input.to(device=device).expand(b, *audio_input.shape[1:])
        audio = torch.cat([audio[..., :1].expand(*audio.shape[:-1], int(motion_frames[0])), audio], dim=-1)
        audio_global, audio_local = self.casual_audio_encoder(audio)
        audio_global = audio_global[:, int(motion_frames[1]):]
        audio_local = audio_local[:, int(motion_frames[1]):]

        # Video tokens (+ pose condition), reference tokens, motion tokens.
        u = self._patch(self.patch_embedding, x)
        grid = tuple(u.shape[2:])
        f, hh, ww = grid
        if audio_local.shape[1] != f:
            raise ValueError(f"audio_input gives {audio_local.shape[1]} latent frames of audio but x has "
                             f"{f}; audio_input must have 4 * F = {4 * f} frames")
        if cond_states is None:
            u = u + self.cond_encoder.bias.view(1, -1, 1, 1, 1).to(u.dtype)   # cond_encoder(zeros)
        else:
            u = u + self._patch(self.cond_encoder, batched(cond_states, "cond_states"))
        tokens = [u.flatten(2).transpose(1, 2).float()]
        n_video = tokens[0].shape[1]
        ref = self._patch(self.patch_embedding, ref_latents)
        if tuple(ref.shape[2:]) != (1, hh, ww):
            raise ValueError(f"ref_latents must be [B, 16, 1, H, W] like x; got {list(ref_latents.shape)}")
        tokens.append(ref.flatten(2).transpose(1, 2).float())
        with_motion = not drop_motion_frames
        if with_motion:
            mot = self.frame_packer(motion_latents.to(device), int(cfg.add_last_motion) * int(add_last_motion))
            tokens.append(mot.float())
        seq = torch.cat(tokens, dim=1)
        n_tok = seq.shape[1]
        ids = torch.ones(n_tok, dtype=torch.long, device=device)
        ids[:n_video] = 0
        ids[n_video + tokens[1].shape[1]:] = 2
        emb = self.trainable_cond_mask.weight
        seq = seq + emb.float()[ids][None]

        # Time: segment 0 (video) with t, segment 1 (reference, motion) with t = 0.
        t = torch.as_tensor(t, device=device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        if t.shape[0] != b:
            raise ValueError(f"t has {t.shape[0]} values for a batch of {b}")
        e, e0 = self.embed_time(torch.cat([t, t.new_zeros(1)])[:, None])   # [B+1, 1, dim], [B+1, 1, 6, dim]
        e_video = e[:b]                                                     # head: [B, 1, dim]
        e0 = torch.stack([e0[:b, 0], e0[b:, 0].expand(b, -1, -1)], dim=1)    # [B, 2, 6, dim]

        ctx = self.embed_text(context, b)
        rope = self._rope(grid, with_motion, device)
        k_lens = torch.full((b,), n_tok, dtype=torch.int32)

        sharding = self.token_sharding
        seg = n_video
        if sharding is not None:
            total = padded_seq_len(n_tok, sharding.ulysses_size)
            if total > n_tok:
                seq = torch.cat([seq, seq.new_zeros(b, total - n_tok, seq.shape[2])], dim=1)
                rope = torch.cat([rope, torch.ones(total - n_tok, rope.shape[1], dtype=rope.dtype,
                                                   device=rope.device)])
            seg_ids = (torch.arange(total, device=device) >= n_video).to(torch.int8)
            seq = sharding.split(seq, 1)
            rope = sharding.split(rope, 0)
            seg = int((sharding.split(seg_ids, 0) == 0).sum())

        inject = self.audio_injector.block_to_injector
        for i, block in enumerate(self.blocks):
            seq = block(seq, e0, ctx, rope, k_lens, seg)
            if i in inject:
                if sharding is not None:
                    full = sharding.gather(seq, 1)
                    full = self._inject_audio(i, full, n_video, f, audio_local, audio_global)
                    seq = sharding.split(full, 1)
                else:
                    seq = self._inject_audio(i, seq, n_video, f, audio_local, audio_global)

        if sharding is not None:
            seq = sharding.gather(seq, 1)
        out = self.head(seq[:, :n_video], e_video)
        return self.unpatchify(out, grid).float()


__all__ = ["S2VConfig", "WanModelS2V", "S2VAttentionBlock", "CausalAudioEncoder", "FramePacker",
           "ref_rope", "motion_rope"]
