"""Prompt -> T5 context: the official `T5EncoderModel` call, from files in a checkpoint folder.

`TextEncoder(ckpt_dir, text_len=512, device=..., dtype=...)` loads
`<ckpt>/models_t5_umt5-xxl-enc-bf16.pth` and `<ckpt>/google/umt5-xxl/tokenizer.json`;
`encode(prompts) -> [Tensor [L_i, dim]]`, each trimmed to its real tokens (including `</s>`), in the
encoder's dtype, on its device. The DiT zero-pads the rows back to `text_len` itself.

Loading never holds two full copies of the weights: the module is built on the meta device, the
file is memory-mapped, each tensor is converted to the target dtype/device in turn (dropping its
mapped source), and the results are assigned to the module without a further copy. At real size
(5.7 B parameters) that is 11.4 GB in bf16 or 22.7 GB in fp32. Measured on an H200 with a real-size
random checkpoint: bf16 or fp32 to CUDA in 5-6 s with 0.4 GB of anonymous host memory at peak and
GPU memory equal to the weights (11.4 / 22.8 GB); bf16 on the CPU stays memory-mapped (no copy).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..config import ParamDtype
from ..errors import CheckpointError, InputError
from ..loading.checkpoint import load_pth
from ..models.t5 import T5Config, T5Encoder
from ..models.tokenizer import PromptTokenizer

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
        # Move first, then convert: a combined .to() converts on the CPU, which for fp32 on CUDA
        # would make a 4 GB host temporary of the real embedding.
        sd[key] = sd[key].to(device=device).to(dtype=dtype)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as exc:  # shape mismatch inside an otherwise complete file
        raise CheckpointError(f"T5 checkpoint {path}: {exc}") from exc
    return model.eval().requires_grad_(False)


class TextEncoder:
    """umT5 tokenizer + encoder. One instance per device; not thread-safe."""

    def __init__(self, ckpt_dir: Optional[str | Path] = None, *, text_len: int = 512,
                 device: str | torch.device = "cpu",
                 dtype: torch.dtype | ParamDtype = torch.bfloat16,
                 checkpoint_path: Optional[str | Path] = None,
                 tokenizer_dir: Optional[str | Path] = None) -> None:
        if ckpt_dir is None and (checkpoint_path is None or tokenizer_dir is None):
            raise ValueError("give ckpt_dir, or both checkpoint_path and tokenizer_dir")
        if isinstance(dtype, ParamDtype):
            dtype = dtype.torch_dtype
        ckpt = Path(ckpt_dir) if ckpt_dir is not None else None
        checkpoint_path = Path(checkpoint_path) if checkpoint_path else ckpt / T5_CHECKPOINT
        tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else ckpt / TOKENIZER_SUBDIR
        self.text_len = text_len
        self.tokenizer = PromptTokenizer(tokenizer_dir, text_len)
        self.model = load_t5_encoder(checkpoint_path, dtype=dtype, device=device)
        vocab = self.model.cfg.vocab_size
        if self.tokenizer.vocab_size > vocab:
            raise CheckpointError(f"tokenizer in {tokenizer_dir} has {self.tokenizer.vocab_size} pieces "
                                  f"but the T5 embedding in {checkpoint_path} has only {vocab} rows")

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.token_embedding.weight.dtype

    def to(self, device: str | torch.device) -> "TextEncoder":
        """Move the weights (for offloading between prompts)."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """-> one `[L_i, dim]` tensor per prompt (real tokens incl. `</s>`), encoder dtype/device."""
        if isinstance(prompts, str) or not prompts:
            raise InputError("TextEncoder.encode takes a non-empty list of prompts")
        ids, mask = self.tokenizer(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        out = self.model(ids, mask)
        lengths = mask.sum(dim=1).tolist()
        # Copies, not views: a view would keep (and pickle) the padded rows of the whole batch.
        return [row[:n].clone() for row, n in zip(out, lengths)]
