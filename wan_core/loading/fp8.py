"""fp8 weights (`weights` = auto on fp8 files, fp8, fp8_fast): a weight transform applied from outside.

The big linear layers keep their weight in float8_e4m3fn with one fp32 scale per tensor (ComfyUI's
fp8_scaled convention: value = fp8 * scale); norms, embeddings, modulation, the head and every
non-Linear tensor stay in the high-precision dtype. `apply_fp8(model, names, compute_dtype, fast)`
swaps those `nn.Linear` modules' class to `Fp8Linear` (same parameter name `weight`, plus a
`weight_scale` buffer), on the meta device before loading, so the model code is unchanged and
state-dict names stay official (+ `.weight_scale`). `Fp8Source` wraps the checkpoint source so
`materialize` and FSDP rank-local loading fill those modules with fp8 data and scales (quantizing
high-precision files on the fly, per tensor; an fp8_scaled file's own fp8 data and scales as they are).

Compute: `Fp8Linear` dequantizes its weight to the compute dtype in the forward (memory halves,
speed about that of bf16); `Fp8FastLinear` (fp8_fast) quantizes the activation per tensor and calls
`torch._scaled_mm` on GPUs of compute capability 8.9+ (Ada, Hopper), falling back to the
dequantizing path elsewhere and for shapes `_scaled_mm` refuses (dims not multiples of 16).
Composes with FSDP2 (the fp8 weight is the sharded parameter, all-gathered as fp8 bytes; the scalar
scale is a replicated buffer), offload (fp8 tensors move and pin like any other), Ulysses, CFG.
"""
from __future__ import annotations

import logging
import re
from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError

log = logging.getLogger("wan_core.fp8")

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0

# Layers quantized when a high-precision file is loaded with weights=fp8 (those ComfyUI's fp8_scaled
# Wan files hold in fp8): attention projections and FFN of every block; T5's likewise.
DIT_FP8_LAYERS = re.compile(r"^blocks\.\d+\.(self_attn\.(q|k|v|o)|cross_attn\.(q|k|v|o)|ffn\.(0|2))$")
T5_FP8_LAYERS = re.compile(r"^blocks\.\d+\.(attn\.(q|k|v|o)|ffn\.(gate\.0|fc1|fc2))$")


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor absmax fp8_e4m3fn: (fp8 tensor, fp32 scalar scale), w ~ q.float() * scale."""
    w = w.float()
    scale = (w.abs().max() / FP8_MAX).clamp(min=1e-12).reshape(())
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Fp8Linear(nn.Linear):
    """`nn.Linear` whose weight is fp8 with a per-tensor scale; dequantized in the forward."""

    compute_dtype: torch.dtype = torch.bfloat16

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype) * self.weight_scale.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = self.compute_dtype
        bias = self.bias.to(dt) if self.bias is not None else None
        return F.linear(x.to(dt), self.dequantized(dt), bias)


class Fp8FastLinear(Fp8Linear):
    """fp8 x fp8 matmul through `torch._scaled_mm` (activation quantized per tensor, dynamically)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.in_features, self.out_features
        if not (x.is_cuda and k % 16 == 0 and n % 16 == 0):
            return super().forward(x)
        dt = self.compute_dtype
        x2 = x.reshape(-1, k).to(dt)
        x_scale = (x2.abs().amax().float() / FP8_MAX).clamp(min=1e-12)
        xq = (x2 / x_scale.to(dt)).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        bias = self.bias.to(dt) if self.bias is not None else None
        out = torch._scaled_mm(xq, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale.float(),
                               bias=bias, out_dtype=dt)
        return out.reshape(*x.shape[:-1], n)


def fast_supported(device: torch.device) -> tuple[bool, str]:
    """Whether `torch._scaled_mm` fp8 runs on `device`, and why not."""
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"fp8_fast needs a CUDA GPU (device {device})"
    cc = torch.cuda.get_device_capability(device)
    if cc < (8, 9):
        return False, (f"fp8_fast needs compute capability 8.9+ (this GPU has {cc[0]}.{cc[1]}); the fp8 "
                       "weights are dequantized in each linear instead")
    return True, f"fp8 matmuls (torch._scaled_mm) on compute capability {cc[0]}.{cc[1]}"


def apply_fp8(model: nn.Module, names: Iterable[str], compute_dtype: torch.dtype,
              fast: bool = False) -> list[str]:
    """Swap the `nn.Linear` modules `names` to fp8 (on meta before loading, or loaded: quantized
    here). Returns the names swapped."""
    cls = Fp8FastLinear if fast else Fp8Linear
    done = []
    for name in names:
        mod = model.get_submodule(name)
        if type(mod) is not nn.Linear:
            continue
        w = mod.weight
        mod.__class__ = cls
        mod.compute_dtype = compute_dtype
        if w.is_meta:
            mod.weight = nn.Parameter(torch.empty(w.shape, dtype=FP8, device="meta"), requires_grad=False)
            mod.register_buffer("weight_scale", torch.empty((), dtype=torch.float32, device="meta"))
        else:
            q, s = quantize(w.detach())
            mod.weight = nn.Parameter(q.to(w.device), requires_grad=False)
            mod.register_buffer("weight_scale", s.to(w.device))
        done.append(name)
    return done


def fp8_layer_names(model: nn.Module, source, pattern: Optional[re.Pattern], quantize_all: bool) -> list[str]:
    """Linear layers to hold in fp8: those whose weight the file stores in fp8 (`weights=auto`), plus,
    with `quantize_all` (weights=fp8/fp8_fast), those matching `pattern`."""
    out = []
    for name, mod in model.named_modules():
        if type(mod) is not nn.Linear:
            continue
        key = name + ".weight"
        stored_fp8 = hasattr(source, "is_quantized") and key in source and source.is_quantized(key)
        if stored_fp8 or (quantize_all and pattern is not None and pattern.match(name)):
            out.append(name)
    return out


class Fp8Source:
    """A checkpoint source seen through the fp8 layers: `<layer>.weight` as fp8 data (the file's own
    when stored fp8, else quantized per tensor), `<layer>.weight_scale` as the fp32 scale;
    every other tensor as the wrapped source gives it (in the requested dtype)."""

    def __init__(self, source, layers: Iterable[str]) -> None:
        self.source = source
        self.layers = set(layers)
        self._q: dict[str, tuple[Optional[torch.Tensor], torch.Tensor]] = {}
        self.name = getattr(source, "name", "")

    def _layer(self, key: str) -> Optional[str]:
        for suffix in (".weight", ".weight_scale"):
            if key.endswith(suffix) and key[: -len(suffix)] in self.layers:
                return key[: -len(suffix)]
        return None

    def _fp8(self, layer: str) -> tuple[Optional[torch.Tensor], torch.Tensor]:
        """(full fp8 tensor or None when read by rows from the file, scale)."""
        if layer not in self._q:
            key = layer + ".weight"
            if hasattr(self.source, "is_quantized") and self.source.is_quantized(key):
                scale = self.source.scale_of(key)
                self._q[layer] = (None, scale if scale is not None else torch.ones((), dtype=torch.float32))
            else:   # quantize the whole tensor once (the scale is over all of it)
                q, s = quantize(self.source.get(key, torch.float32))
                self._q[layer] = (q, s)
        return self._q[layer]

    def keys(self) -> list[str]:
        return list(self.source.keys()) + [l + ".weight_scale" for l in self.layers]

    def __contains__(self, key: str) -> bool:
        return key in self.source or (key.endswith(".weight_scale") and self._layer(key) is not None)

    def __len__(self) -> int:
        return len(self.keys())

    def file_of(self, key: str) -> str:
        return self.source.file_of(key if not key.endswith(".weight_scale") else key[: -len("_scale")])

    def shape(self, key: str) -> tuple[int, ...]:
        if key.endswith(".weight_scale") and self._layer(key):
            return ()
        return self.source.shape(key)

    def get(self, key: str, dtype=None, device=None) -> torch.Tensor:
        layer = self._layer(key)
        if layer is None:
            return self.source.get(key, dtype, device)
        q, s = self._fp8(layer)
        if key.endswith(".weight_scale"):
            return s.clone().to(device) if device is not None else s.clone()
        t = q if q is not None else self.source.raw(key)[0].view(FP8)
        return t.to(device) if device is not None else t

    def get_slice(self, key: str, dim: int, start: int, stop: int, dtype=None, device=None) -> torch.Tensor:
        layer = self._layer(key)
        if layer is None:
            return self.source.get_slice(key, dim, start, stop, dtype, device)
        q, _ = self._fp8(layer)
        if q is None:   # the file's fp8 rows, read alone
            t = self.source._read(key, tuple([slice(None)] * (dim % 2) + [slice(start, stop)]))
        else:
            t = q.narrow(dim, start, max(0, min(stop, q.shape[dim]) - start))
        return t.to(device) if device is not None else t

    def close(self) -> None:
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fp8_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes held in fp8, bytes in other dtypes) of a model's parameters and buffers (local shards)."""
    fp8 = other = 0
    for t in list(model.parameters()) + list(model.buffers()):
        local = t.to_local() if hasattr(t, "to_local") else t
        n = local.numel() * local.element_size()
        if local.dtype == FP8:
            fp8 += n
        else:
            other += n
    return fp8, other


def check_fp8_available() -> None:
    if not hasattr(torch, "float8_e4m3fn"):
        raise CheckpointError("this torch build has no float8_e4m3fn; use weights=bf16 (torch >= 2.1 needed)")


__all__ = ["Fp8Linear", "Fp8FastLinear", "Fp8Source", "apply_fp8", "fp8_layer_names", "quantize",
           "fast_supported", "fp8_bytes", "DIT_FP8_LAYERS", "T5_FP8_LAYERS", "FP8"]
