"""The umT5 text encoder file (`models_t5_umt5-xxl-enc-bf16.pth`) -> `models.t5.T5Encoder`.

Loading never holds two full copies of the weights: the module is built on the meta device, the
file is memory-mapped, each tensor is converted to the target dtype/device in turn (dropping its
mapped source), and the results are assigned to the module without a further copy. At real size
(5.7 B parameters) that is 11.4 GB in bf16 or 22.7 GB in fp32. Measured on an H200 with a real-size
random checkpoint: bf16 or fp32 to CUDA in 5-6 s with 0.4 GB of anonymous host memory at peak and
GPU memory equal to the weights (11.4 / 22.8 GB); bf16 on the CPU stays memory-mapped (no copy).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.t5 import T5Config, T5Encoder
from .checkpoint import load_pth
from .tokenizer import PromptTokenizer
from .transforms import cast_tensor

T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_SUBDIR = Path("google") / "umt5-xxl"


def _read_pth(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(
            f"T5 checkpoint {path} not found; the checkpoint folder needs {T5_CHECKPOINT} "
            "(from the official Wan2.2 download)")
    size = path.stat().st_size
    if size < 1024:
        # A symbolic link copied by a tool without link support becomes a file holding its target.
        text = path.read_bytes().decode("utf-8", "replace").strip()
        raise CheckpointError(
            f"T5 checkpoint {path} is a {size}-byte file containing {text!r}, not weights: probably a "
            "symbolic link flattened by a copy; copy the folder keeping links (cp -a) or put the real file there")
    return load_pth(path)


def load_t5_encoder(path: str | Path, dtype: torch.dtype = torch.bfloat16,
                    device: str | torch.device = "cpu") -> T5Encoder:
    """Build a `T5Encoder` sized from the file, with weights in `dtype` on `device` (eval mode)."""
    path = Path(path)
    sd = _read_pth(path)
    try:
        cfg = T5Config.from_state_dict(sd)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"T5 checkpoint {path} is not a umT5 encoder state dict "
                              f"(missing or malformed {exc})") from exc
    with torch.device("meta"):
        model = T5Encoder(cfg)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointError(f"T5 checkpoint {path} does not match the umT5 encoder layout: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key in list(sd):  # one tensor at a time: the mapped source is dropped as we go
        # Moved first, then converted (cast_tensor): a combined .to() converts on the CPU, which
        # for fp32 on CUDA would make a 4 GB host temporary of the real embedding.
        sd[key] = cast_tensor(sd[key], dtype, device)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as exc:  # shape mismatch inside an otherwise complete file
        raise CheckpointError(f"T5 checkpoint {path}: {exc}") from exc
    return model.eval().requires_grad_(False)


def load_umt5(checkpoint_path: str | Path, tokenizer_dir: str | Path, text_len: int,
              dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"):
    """The official folder's tokenizer and encoder -> (PromptTokenizer, T5Encoder), checked to
    belong together (every token id has an embedding row)."""
    tokenizer = PromptTokenizer(tokenizer_dir, text_len)
    model = load_t5_encoder(checkpoint_path, dtype=dtype, device=device)
    vocab = model.cfg.vocab_size
    if tokenizer.vocab_size > vocab:
        raise CheckpointError(f"tokenizer in {tokenizer_dir} has {tokenizer.vocab_size} pieces "
                              f"but the T5 embedding in {checkpoint_path} has only {vocab} rows")
    return tokenizer, model


__all__ = ["T5_CHECKPOINT", "TOKENIZER_SUBDIR", "load_t5_encoder", "load_umt5"]
