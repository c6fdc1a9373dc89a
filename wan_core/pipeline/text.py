"""Prompt -> T5 context: the official `T5EncoderModel` call.

`TextEncoder(ckpt_dir, text_len=512, device=..., dtype=...)` loads (through `loading.t5` and
`loading.tokenizer`) `<ckpt>/models_t5_umt5-xxl-enc-bf16.pth` and `<ckpt>/google/umt5-xxl/tokenizer.json`;
`encode(prompts) -> [Tensor [L_i, dim]]`, each trimmed to its real tokens (including `</s>`), in the
encoder's dtype, on its device. The DiT zero-pads the rows back to `text_len` itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..config import ParamDtype
from ..errors import InputError
from ..loading.t5 import T5_CHECKPOINT, TOKENIZER_SUBDIR, load_umt5
from ..loading.tokenizer import PromptTokenizer
from ..models.t5 import T5Encoder


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
        self.tokenizer, self.model = load_umt5(checkpoint_path, tokenizer_dir, text_len, dtype, device)

    @classmethod
    def from_parts(cls, tokenizer: PromptTokenizer, model: T5Encoder, text_len: int) -> "TextEncoder":
        """Around a tokenizer and an encoder loaded elsewhere (`loading.load_part`)."""
        obj = cls.__new__(cls)
        obj.text_len, obj.tokenizer, obj.model = text_len, tokenizer, model
        return obj

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
