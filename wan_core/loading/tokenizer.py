"""umT5 prompt cleaning and tokenization, as the official text path does it.

Official path (wan/modules/tokenizers.py, `clean='whitespace'`):
`ftfy.fix_text` -> `html.unescape` twice -> strip -> every run of whitespace to one space -> strip,
then the umT5 tokenizer with special tokens (`</s>` appended), truncation and padding to `text_len`.
Truncation keeps room for `</s>`, so `</s>` is the last real token even for long prompts.

The Hugging Face `tokenizers` library reads `google/umt5-xxl/tokenizer.json` directly and gives the
same ids and mask as the official `AutoTokenizer` call (checked against the tiny goldens).
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer

from ..errors import CheckpointError, InputError

_WHITESPACE = re.compile(r"\s+")
TOKENIZER_FILE = "tokenizer.json"
PAD_TOKEN = "<pad>"


def clean_prompt(text: str) -> str:
    """Fix mojibake, unescape HTML entities (twice), and collapse whitespace."""
    import ftfy  # imported here: only text encoding needs it

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = text.strip()
    return _WHITESPACE.sub(" ", text).strip()


class PromptTokenizer:
    """`PromptTokenizer(dir, text_len)(prompts) -> (ids, mask)`, both int64 `[B, text_len]`.

    `tokenizer_dir` is the folder holding `tokenizer.json` (`<ckpt>/google/umt5-xxl`). The mask is 1
    for real tokens including `</s>` and 0 for padding (`<pad>`, id 0 in umT5).
    """

    def __init__(self, tokenizer_dir: str | Path, text_len: int, clean: bool = True) -> None:
        path = Path(tokenizer_dir) / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(
                f"tokenizer file {path} not found; the checkpoint folder needs "
                f"google/umt5-xxl/{TOKENIZER_FILE} (from the official Wan2.2 download)")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception on malformed JSON
            raise CheckpointError(f"tokenizer file {path} cannot be read: {exc}") from exc
        self._setup(tok, text_len, clean, f"tokenizer file {path}")

    @classmethod
    def wrap(cls, tok: "Tokenizer", text_len: int, where: str, clean: bool = True) -> "PromptTokenizer":
        """Around an already built `tokenizers.Tokenizer` (e.g. from a single file's spiece_model)."""
        obj = cls.__new__(cls)
        obj._setup(tok, text_len, clean, f"tokenizer of {where}")
        return obj

    def _setup(self, tok: "Tokenizer", text_len: int, clean: bool, where: str) -> None:
        if text_len < 2:
            raise ValueError(f"text_len={text_len}: need room for at least one token and </s>")
        pad_id = tok.token_to_id(PAD_TOKEN)
        if pad_id is None:
            raise CheckpointError(f"{where} has no {PAD_TOKEN} token; is it a umT5 tokenizer?")
        tok.enable_truncation(max_length=text_len)
        tok.enable_padding(length=text_len, pad_id=pad_id, pad_token=PAD_TOKEN)
        self.text_len = text_len
        self.clean = clean
        self.pad_id = pad_id
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self._tok = tok

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            raise InputError("PromptTokenizer takes a list of prompts, not a single string")
        texts = [clean_prompt(p) if self.clean else p for p in prompts]
        encodings = self._tok.encode_batch(texts, add_special_tokens=True)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
        return ids.reshape(len(texts), self.text_len), mask.reshape(len(texts), self.text_len)
