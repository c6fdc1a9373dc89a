"""Image preprocessing of the image-conditioned tasks, exactly as the official pipelines do it.

* I2V-A14B (`wan/image2video.py`): the picture as a tensor in [-1, 1]; the output size follows the
  picture's aspect ratio within `max_area`:
  `lat_h = round(sqrt(max_area * h/w) // 8 // 2 * 2)`, `lat_w = round(sqrt(max_area * w/h) // 8 // 2 * 2)`;
  the picture is resized with `F.interpolate(mode='bicubic')` (align_corners False, no antialias,
  on the CPU in float32) to (8 lat_h, 8 lat_w).
* TI2V-5B image mode (`wan/textimage2video.py::i2v`): `best_output_size(w, h, 32, 32, max_area)`,
  PIL LANCZOS resize by `max(ow/w, oh/h)`, centre crop to (ow, oh), then to [-1, 1].

These are pure functions of the picture and the sizes, so they run before any model is loaded and
their errors reach the user before any heavy work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..io.images import pil_to_tensor, tensor_to_pil


def _check_image(image) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise InputError(f"the image must be a float tensor [3, H, W] in [0, 1], got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise InputError(f"the image tensor must be [3, H, W] (RGB), got shape {tuple(image.shape)}")
    if image.shape[1] < 2 or image.shape[2] < 2:
        raise InputError(f"the image is {image.shape[2]}x{image.shape[1]} pixels; it is too small to use")
    return image.detach().float().cpu()


@dataclass(frozen=True)
class I2VImage:
    """The resized first frame of an I2V run, in [-1, 1]: [3, height, width]."""

    pixels: torch.Tensor
    width: int
    height: int

    @property
    def lat_h(self) -> int:
        return self.height // 8

    @property
    def lat_w(self) -> int:
        return self.width // 8


def i2v_size(img_w: int, img_h: int, max_area: int, vae_stride: int = 8, patch: int = 2) -> tuple[int, int]:
    """(lat_w, lat_h) of the official I2V sizing (numpy float sqrt and floor divisions, then round)."""
    aspect = img_h / img_w
    lat_h = round(np.sqrt(max_area * aspect) // vae_stride // patch * patch)
    lat_w = round(np.sqrt(max_area / aspect) // vae_stride // patch * patch)
    return int(lat_w), int(lat_h)


def prepare_i2v_image(image: torch.Tensor, max_area: int) -> I2VImage:
    """image [3, H, W] in [0, 1] -> the bicubic-resized picture in [-1, 1] at the official I2V size."""
    img = _check_image(image).sub(0.5).div(0.5)
    h, w = img.shape[1:]
    lat_w, lat_h = i2v_size(w, h, max_area)
    if lat_w < 2 or lat_h < 2:
        raise InputError(f"the image is {w}x{h} pixels: its aspect ratio is too extreme for an output "
                         f"area of {max_area} pixels (output would be {lat_w * 8}x{lat_h * 8}); "
                         "crop it or pick a larger size")
    out_h, out_w = 8 * lat_h, 8 * lat_w
    resized = F.interpolate(img[None], size=(out_h, out_w), mode="bicubic")[0]
    return I2VImage(pixels=resized, width=out_w, height=out_h)


def i2v_mask(frame_num: int, lat_h: int, lat_w: int) -> torch.Tensor:
    """The official 4-channel I2V mask [4, (F-1)//4+1, lat_h, lat_w]: ones in latent frame 0, else 0."""
    msk = torch.ones(1, frame_num, lat_h, lat_w)
    msk[:, 1:] = 0
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w)
    return msk.transpose(1, 2)[0].contiguous()


def i2v_vae_input(img: I2VImage, frame_num: int) -> torch.Tensor:
    """[3, F, H, W]: the picture followed by F-1 black (zero) frames, the clip the VAE encodes."""
    return torch.concat([img.pixels[:, None], torch.zeros(3, frame_num - 1, img.height, img.width)], dim=1)


def best_output_size(w: int, h: int, dw: int, dh: int, expected_area: int) -> tuple[int, int]:
    """The official TI2V output size (`wan/utils/utils.py::best_output_size`): the multiple-of-(dw,dh)
    size within `expected_area` whose aspect ratio is closest to w/h (width-first vs height-first)."""
    ratio = w / h
    ow = (expected_area * ratio) ** 0.5
    oh = expected_area / ow
    ow1 = int(ow // dw * dw)
    oh1 = int(expected_area / ow1 // dh * dh) if ow1 > 0 else 0
    oh2 = int(oh // dh * dh)
    ow2 = int(expected_area / oh2 // dw * dw) if oh2 > 0 else 0
    if min(ow1, oh1) <= 0 and min(ow2, oh2) <= 0:
        raise InputError(f"the image is {w}x{h} pixels: its aspect ratio is too extreme for an output area "
                         f"of {expected_area} pixels in steps of {dw}x{dh}; crop it or pick a larger size")
    if min(ow1, oh1) <= 0:
        return ow2, oh2
    if min(ow2, oh2) <= 0:
        return ow1, oh1
    ratio1 = ow1 / oh1
    ratio2 = ow2 / oh2
    if max(ratio / ratio1, ratio1 / ratio) < max(ratio / ratio2, ratio2 / ratio):
        return ow1, oh1
    return ow2, oh2


@dataclass(frozen=True)
class TI2VImage:
    """The cropped first frame of a TI2V image-mode run, in [-1, 1]: [3, height, width]."""

    pixels: torch.Tensor
    width: int
    height: int


def prepare_ti2v_image(image: torch.Tensor, max_area: int, multiple: int = 32) -> TI2VImage:
    """image [3, H, W] in [0, 1] -> LANCZOS-resized, centre-cropped picture in [-1, 1]."""
    from PIL import Image

    img = tensor_to_pil(_check_image(image))
    iw, ih = img.width, img.height
    ow, oh = best_output_size(iw, ih, multiple, multiple, max_area)
    scale = max(ow / iw, oh / ih)
    img = img.resize((round(iw * scale), round(ih * scale)), Image.LANCZOS)
    x1 = (img.width - ow) // 2
    y1 = (img.height - oh) // 2
    img = img.crop((x1, y1, x1 + ow, y1 + oh))
    if (img.width, img.height) != (ow, oh):   # cannot happen for scale >= the ratios; guard anyway
        raise InputError(f"the image could not be cropped to {ow}x{oh} (got {img.width}x{img.height})")
    return TI2VImage(pixels=pil_to_tensor(img).sub(0.5).div(0.5), width=ow, height=oh)


def token_timesteps(t: int, lat_f: int, lat_h: int, lat_w: int, seq_len: int, patch: int = 2,
                    first_frame_clean: bool = False) -> torch.Tensor:
    """Per-token timesteps of TI2V, float32 [1, seq_len]: `t` everywhere (padding included), 0 on
    the tokens of latent frame 0 when that frame is the clean image latent (image mode)."""
    grid = torch.full((lat_f, math.ceil(lat_h / patch), math.ceil(lat_w / patch)), float(t))
    if first_frame_clean:
        grid[0] = 0.0
    flat = grid.flatten()
    pad = torch.full((seq_len - flat.numel(),), float(t))
    return torch.cat([flat, pad])[None]
