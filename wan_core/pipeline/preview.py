"""Low-cost latent previews (issue 5): one small RGB image of the current denoised estimate per step.

The latent channels are projected to RGB with a fixed linear map (no VAE decode), the way
ComfyUI's own "latent2rgb" previewer does. The factors are the published least-squares fits of
ComfyUI's `comfy/latent_formats.py` (classes `Wan21` and `Wan22`, ComfyUI v0.33.0); they apply to
the *normalised* latent ((mu - mean) / std), which is what the official VAEs' `encode` returns and
what our denoise loop works on (ComfyUI's `process_in` gives the same space).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

PREVIEW_MAX_SIDE = 256
"""Long side cap of a preview in pixels: a 720p Wan2.1 latent is 160x90, so most previews are
latent-sized; only unusually large videos get shrunk. ComfyUI scales it up for display."""


@dataclass(frozen=True)
class LatentRGB:
    """`rgb[k] = sum_c factors[c][k] * latent[c] + bias[k]`, rgb in about [-1, 1]."""

    factors: tuple[tuple[float, float, float], ...]   # one (r, g, b) row per latent channel
    bias: tuple[float, float, float]

    @property
    def channels(self) -> int:
        return len(self.factors)


WAN21_RGB = LatentRGB(
    factors=(
        (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747),
        (0.0372, 0.2344, 0.1420), (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665),
        (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975), (-0.0412, 0.0267, -0.1364),
        (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
        (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950),
        (0.1984, 0.0913, 0.1861),
    ),
    bias=(-0.1835, -0.0868, -0.3360),
)
"""Wan2.1 VAE (z_dim 16): T2V-A14B, I2V-A14B, S2V-14B."""

WAN22_RGB = LatentRGB(
    factors=(
        (0.0119, 0.0103, 0.0046), (-0.1062, -0.0504, 0.0165), (0.0140, 0.0409, 0.0491),
        (-0.0813, -0.0677, 0.0607), (0.0656, 0.0851, 0.0808), (0.0264, 0.0463, 0.0912),
        (0.0295, 0.0326, 0.0590), (-0.0244, -0.0270, 0.0025), (0.0443, -0.0102, 0.0288),
        (-0.0465, -0.0090, -0.0205), (0.0359, 0.0236, 0.0082), (-0.0776, 0.0854, 0.1048),
        (0.0564, 0.0264, 0.0561), (0.0006, 0.0594, 0.0418), (-0.0319, -0.0542, -0.0637),
        (-0.0268, 0.0024, 0.0260), (0.0539, 0.0265, 0.0358), (-0.0359, -0.0312, -0.0287),
        (-0.0285, -0.1032, -0.1237), (0.1041, 0.0537, 0.0622), (-0.0086, -0.0374, -0.0051),
        (0.0390, 0.0670, 0.2863), (0.0069, 0.0144, 0.0082), (0.0006, -0.0167, 0.0079),
        (0.0313, -0.0574, -0.0232), (-0.1454, -0.0902, -0.0481), (0.0714, 0.0827, 0.0447),
        (-0.0304, -0.0574, -0.0196), (0.0401, 0.0384, 0.0204), (-0.0758, -0.0297, -0.0014),
        (0.0568, 0.1307, 0.1372), (-0.0055, -0.0310, -0.0380), (0.0239, -0.0305, 0.0325),
        (-0.0663, -0.0673, -0.0140), (-0.0416, -0.0047, -0.0023), (0.0166, 0.0112, -0.0093),
        (-0.0211, 0.0011, 0.0331), (0.1833, 0.1466, 0.2250), (-0.0368, 0.0370, 0.0295),
        (-0.3441, -0.3543, -0.2008), (-0.0479, -0.0489, -0.0420), (-0.0660, -0.0153, 0.0800),
        (-0.0101, 0.0068, 0.0156), (-0.0690, -0.0452, -0.0927), (-0.0145, 0.0041, 0.0015),
        (0.0421, 0.0451, 0.0373), (0.0504, -0.0483, -0.0356), (-0.0837, 0.0168, 0.0055),
    ),
    bias=(0.0317, -0.0878, -0.1388),
)
"""Wan2.2 VAE (z_dim 48): TI2V-5B."""

# The latent's channel count is its VAE's z_dim, so it names the table (the two VAEs differ in it).
_BY_CHANNELS = {WAN21_RGB.channels: WAN21_RGB, WAN22_RGB.channels: WAN22_RGB}


class LatentPreviewer:
    """Turns a latent frame into a small uint8 image. Built once per run on the latent's device,
    so the factor table is copied to the GPU once, not at every step."""

    def __init__(self, table: LatentRGB, device, max_side: int = PREVIEW_MAX_SIDE) -> None:
        self.weight = torch.tensor(table.factors, dtype=torch.float32, device=device)   # [C, 3]
        self.bias = torch.tensor(table.bias, dtype=torch.float32, device=device)        # [3]
        self.max_side = max_side

    @classmethod
    def for_latent(cls, latent: Tensor, max_side: int = PREVIEW_MAX_SIDE) -> Optional["LatentPreviewer"]:
        """For a latent [C, F, H, W]; None when no table fits its channel count (no preview)."""
        table = _BY_CHANNELS.get(int(latent.shape[0]))
        return None if table is None else cls(table, latent.device, max_side)

    def __call__(self, frame: Tensor) -> Tensor:
        """frame [C, h, w] (any float dtype, on the previewer's device) -> uint8 CPU [H, W, 3],
        H, W = h, w shrunk (aspect kept) so that the long side is at most `max_side`."""
        rgb = torch.einsum("chw,ck->khw", frame.float(), self.weight) + self.bias[:, None, None]
        h, w = rgb.shape[-2:]
        if max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            rgb = F.interpolate(rgb[None], size=size, mode="area")[0]   # mean of the pixels it covers
        # [-1, 1] -> [0, 255], truncated like ComfyUI's preview_to_image.
        img = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).to(torch.uint8)
        # The one device -> host copy of a step: [3, H, W] uint8, a few KB.
        return img.cpu().permute(1, 2, 0).contiguous()


def x0_middle_frame(latent: Tensor, velocity: Tensor, sigma: Tensor) -> Tensor:
    """The flow-matching estimate of the clean latent, `x0 = x_t - sigma * v`, of the middle latent
    frame only: latent and velocity [C, F, H, W] (the step's input and guided prediction) -> [C, H, W].
    Computed the way the schedulers do (`FlowScheduler._to_x0`), on a slice, reading only."""
    mid = latent.shape[1] // 2
    return latent[:, mid].float() - sigma * velocity[:, mid].float()
