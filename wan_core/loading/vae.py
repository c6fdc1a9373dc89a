"""Load a Wan VAE checkpoint (`Wan2.1_VAE.pth` / `Wan2.2_VAE.pth`, or a .safetensors file with the
same keys) into `WanVAE21` / `WanVAE22`.

The widths (dim, z_dim, dec_dim) are read from tensor shapes, so the real checkpoints and the tiny
test ones load through the same code. The model is built on the meta device and the checkpoint's
tensors are assigned to it (strict: every key must match), each converted once to the target
dtype and device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from wan_core.errors import CheckpointError, ConfigError
from wan_core.loading.checkpoint import load_pth
from wan_core.loading.paths import describe_missing
from wan_core.loading.transforms import cast_tensor
from wan_core.models.vae21 import WanVAE21
from wan_core.models.vae22 import WanVAE22
from wan_core.models.vae_common import config_from_state_dict

_VERSIONS = {"2.1": (WanVAE21, 3), "2.2": (WanVAE22, 12)}
"""version -> (class, input channels of encoder.conv1: RGB, or RGB patchified 2×2)."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.pth` (`load_pth`: weights-only, memory-mapped) or `.safetensors` file, on CPU.
    Raises CheckpointError naming the file when it is missing, unreadable or not a dict of tensors."""
    if path.suffix != ".safetensors":
        sd = load_pth(path)
    else:
        if not path.is_file():
            raise CheckpointError(describe_missing(path))
        try:
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        except Exception as e:  # header/JSON/size errors all mean a corrupt or truncated file
            raise CheckpointError(f"{path} could not be read as safetensors ({type(e).__name__}: {e}); "
                                  "it is corrupt/truncated: download it again") from None
    if not sd:
        raise CheckpointError(f"{path} holds no tensors")
    return sd


def load_vae(path: Union[str, Path], version: str, device: Union[str, torch.device] = "cpu",
             dtype: torch.dtype = torch.float32) -> Union[WanVAE21, WanVAE22]:
    """Build the Wan `version` ("2.1" or "2.2") VAE from the checkpoint at `path`, in eval mode,
    without gradients, with its parameters in `dtype` on `device` (fp32 is the official precision)."""
    if version not in _VERSIONS:
        raise ConfigError(f"unknown VAE version {version!r}; expected one of {sorted(_VERSIONS)}")
    cls, in_ch = _VERSIONS[version]
    path = Path(path)
    sd = read_state_dict(path)

    conv_in = sd.get("encoder.conv1.weight")
    if conv_in is None or conv_in.dim() != 5 or "conv2.weight" not in sd or "decoder.head.0.gamma" not in sd:
        raise CheckpointError(
            f"{path} is not a Wan VAE state dict: it lacks encoder.conv1.weight, conv2.weight or "
            f"decoder.head.0.gamma (first keys: {list(sd)[:5]})")
    if conv_in.shape[1] != in_ch:
        guess = {c: v for v, (_, c) in _VERSIONS.items()}.get(conv_in.shape[1])
        hint = f" (it looks like a Wan{guess} VAE: pass version={guess!r})" if guess else ""
        raise CheckpointError(
            f"{path}: encoder.conv1.weight takes {conv_in.shape[1]} input channels, a Wan{version} "
            f"VAE takes {in_ch}{hint}")

    cfg = config_from_state_dict(sd)
    with torch.device("meta"):
        model = cls(cfg)
    _check_keys(path, version, model, sd)
    sd = {k: cast_tensor(v, dtype, device) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _check_keys(path: Path, version: str, model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """CheckpointError naming the file and the missing, unexpected and wrongly shaped tensors."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {expected[k]})"
             for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    if not (missing or unexpected or wrong):
        return
    parts = [f"{label} ({len(keys)}): {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}"
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
             if keys]
    cfg = model.cfg
    raise CheckpointError(
        f"{path} does not match a Wan{version} VAE of the widths it implies (dim {cfg.dim}, z_dim "
        f"{cfg.z_dim}, decoder dim {cfg.dec_dim}): " + "; ".join(parts)
        + ". Use the official Wan{0}_VAE.pth.".format(version))
