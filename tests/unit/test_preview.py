"""Latent previews (issue 5): the latent -> RGB projection of `wan_core.pipeline.preview`."""
from __future__ import annotations

import pytest
import torch

from wan_core.pipeline.preview import (PREVIEW_MAX_SIDE, WAN21_RGB, WAN22_RGB, LatentPreviewer,
                                       x0_middle_frame)


def _expected_pixel(table, channel: int, value: float) -> list[int]:
    """One latent channel set to `value`, the others 0: rgb = value * row + bias, then ComfyUI's
    [-1, 1] -> [0, 255] truncation."""
    out = []
    for k in range(3):
        rgb = value * table.factors[channel][k] + table.bias[k]
        out.append(int(min(max((rgb + 1.0) / 2.0, 0.0), 1.0) * 255))
    return out


@pytest.mark.parametrize("table", [WAN21_RGB, WAN22_RGB], ids=["wan21_16ch", "wan22_48ch"])
def test_projection_shape_dtype_and_values(table):
    c = table.channels
    assert c == (16 if table is WAN21_RGB else 48) and all(len(r) == 3 for r in table.factors)
    latent = torch.zeros(c, 3, 6, 8)                 # [C, F, h, w]
    previewer = LatentPreviewer.for_latent(latent)
    assert previewer is not None
    frame = torch.zeros(c, 6, 8)
    frame[c - 1, 2, 3] = 4.0                          # one pixel driven by the last channel
    img = previewer(frame)
    assert img.dtype == torch.uint8 and img.device.type == "cpu" and img.shape == (6, 8, 3)
    assert img.is_contiguous()
    # Row c-1 of the table is that channel's (r, g, b): catches a transposed table or a lost bias.
    # A pixel may differ by 1 level: float32 here vs float64 in _expected_pixel can straddle an integer.
    got, want = img[2, 3].tolist(), _expected_pixel(table, c - 1, 4.0)
    assert all(abs(a - b) <= 1 for a, b in zip(got, want)), (got, want)
    assert img[0, 0].tolist() == _expected_pixel(table, 0, 0.0)   # bias only (exact: no product)


@pytest.mark.parametrize("channels", [16, 48])
def test_size_cap_keeps_the_aspect(channels):
    previewer = LatentPreviewer.for_latent(torch.zeros(channels, 1, 1, 1))
    img = previewer(torch.randn(channels, 90, 600))
    assert img.shape == (round(90 * PREVIEW_MAX_SIDE / 600), PREVIEW_MAX_SIDE, 3)
    small = previewer(torch.randn(channels, 90, 160))   # 720p Wan2.1 latent: below the cap, as is
    assert small.shape == (90, 160, 3)
    assert small.numel() < 64 * 1024                      # a few KB per step


def test_unknown_channel_count_has_no_preview():
    assert LatentPreviewer.for_latent(torch.zeros(4, 1, 2, 2)) is None


def test_x0_middle_frame_is_the_flow_matching_estimate():
    torch.manual_seed(0)
    x_t, v = torch.randn(16, 5, 4, 4), torch.randn(16, 5, 4, 4)
    sigma = torch.tensor(0.25)
    # Same formula and order as FlowScheduler._to_x0 on the whole latent: bit-identical on a slice.
    assert torch.equal(x0_middle_frame(x_t, v, sigma), (x_t - sigma * v)[:, 2])
