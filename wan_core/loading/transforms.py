"""Weight transforms: functions that change a model's weights, applied from outside the model.

The one home for every change of stored weights on their way to (or once in) a model: dtype casts
now; fp8 (de)quantisation and LoRA deltas belong here too. Two shapes, both plain functions:
- per tensor, while a checkpoint is materialised (`cast_tensor`: called by
  `loading.checkpoint.materialize` and `TensorSource.get` for each tensor, so no second full copy
  of the weights ever exists);
- per module, on a model already built (`cast_module`): `fn(module, ...) -> module`, in place.
Models never import this module; loaders and the engine call it.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn

Device = Union[str, torch.device, None]


def cast_tensor(t: torch.Tensor, dtype: Optional[torch.dtype], device: Device = None) -> torch.Tensor:
    """`t` on `device` with floating values in `dtype` (None: keep). Integer tensors keep their dtype.

    On an accelerator the tensor moves first and converts there (faster than converting on the
    CPU, and no host temporary of the converted size)."""
    if dtype is not None and not t.is_floating_point():
        dtype = None
    if device is not None and torch.device(device).type != "cpu":
        return t.to(device=device).to(dtype=dtype or t.dtype)
    return t.to(dtype=dtype) if dtype is not None else t


@torch.no_grad()
def cast_module(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Floating parameters and buffers of `module` to `dtype`, in place; returns the module."""
    for sub in module.modules():
        for name, p in sub._parameters.items():
            if p is not None and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
        for name, b in sub._buffers.items():
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                sub._buffers[name] = b.to(dtype)
    return module


__all__ = ["cast_tensor", "cast_module"]
