"""Image loading for the image-conditioned tasks (I2V, TI2V image mode, S2V reference)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch

from ..errors import InputError


def load_image(path: Union[str, os.PathLike]):
    """Open an image file as an RGB PIL image; raise InputError naming the file when it cannot."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise InputError(f"image file {str(p)!r} does not exist")
    if not p.is_file():
        raise InputError(f"image path {str(p)!r} is not a file")
    try:
        with Image.open(p) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read image file {str(p)!r}: {exc}; give a PNG, JPEG or WebP "
                         "picture") from None


def pil_to_tensor(img) -> torch.Tensor:
    """PIL RGB image -> float32 tensor [3, H, W] in [0, 1] (torchvision's `to_tensor`: uint8 / 255)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255.0)


def tensor_to_pil(image: torch.Tensor):
    """float tensor [3, H, W] in [0, 1] -> PIL RGB image (rounded, as ComfyUI's and PIL's converters do).

    Exact for tensors made by `pil_to_tensor` (k/255 round-trips to k).
    """
    from PIL import Image

    if image.dim() != 3 or image.shape[0] != 3:
        raise InputError(f"image tensor must be [3, H, W] RGB in [0, 1], got shape {tuple(image.shape)}")
    arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr))


def load_image_tensor(path: Union[str, os.PathLike]) -> torch.Tensor:
    """Image file -> float32 [3, H, W] in [0, 1]."""
    return pil_to_tensor(load_image(path))
