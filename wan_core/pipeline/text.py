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


def prompt_contexts(encode_text, prompt: str, neg_prompt: str, context: Optional[torch.Tensor] = None,
                    neg_context: Optional[torch.Tensor] = None, *,
                    need_negative: bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(context, negative context) of a run: given embeddings (a request's `context` /
    `neg_context`, e.g. ComfyUI's CONDITIONING) as they are, the others through `encode_text`
    in one call (both prompts batched, as the official pipeline does). Without CFG
    (`need_negative` False) the negative one is None and nothing is encoded for it."""
    if not need_negative:
        neg_prompt, neg_context = None, None
    todo = [text for text, given in ((prompt, context), (neg_prompt, neg_context))
            if given is None and text is not None]
    encoded = iter(encode_text(todo) if todo else ())
    return (context if context is not None else next(encoded),
            neg_context if neg_context is not None or not need_negative else next(encoded))


def check_context(context, text_len: int, text_dim: int, what: str) -> None:
    """A precomputed context must fit the DiT: [L, text_dim] with L <= text_len (its padding)."""
    if context is None:
        return
    if not isinstance(context, torch.Tensor) or context.dim() != 2 or context.shape[0] < 1:
        shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
        raise InputError(f"{what} must be text embeddings [tokens, {text_dim}], got {shape}")
    if context.shape[1] != text_dim:
        raise InputError(f"{what} has {context.shape[1]} channels but this model's text encoder gives "
                         f"{text_dim}: use the umT5-XXL text encoder of Wan (not another CLIP)")
    if context.shape[0] > text_len:
        raise InputError(f"{what} has {context.shape[0]} tokens but this model takes at most {text_len} "
                         "(the official pipeline cuts prompts there; ComfyUI's CLIPTextEncode does not): "
                         "shorten the prompt, or use the Wan2.2 Multi-GPU Prompt node, which cuts it")
