"""Prompt cleaning (official `whitespace_clean(basic_clean(text))`) and the umT5 tokenizer call."""
from __future__ import annotations

import pytest
import torch

from wan_core.loading.tokenizer import PromptTokenizer, clean_prompt


@pytest.mark.parametrize("raw,clean", [
    # prompt 1 of the t5 golden (README: cleaned to this exact string)
    ("  a   white cat &amp; sunglasses\n on a surfboard  ", "a white cat & sunglasses on a surfboard"),
    ("a &amp;amp; b", "a & b"),                              # html.unescape runs twice
    ("&lt;b&gt;bold&lt;/b&gt;", "<b>bold</b>"),
    ("sch\u00c3\u00b6n", "sch\u00f6n"),                       # ftfy repairs UTF-8 read as Latin-1
    ("\u201cquoted\u201d it\u2019s", "\"quoted\" it's"),     # ftfy straightens curly quotes
    ("a\u00a0b\t\tc\r\n d", "a b c d"),                       # any whitespace run -> one space
    ("   \n\t ", ""),
    ("already clean", "already clean"),
])
def test_clean_prompt(raw, clean):
    assert clean_prompt(raw) == clean


def test_clean_prompt_is_idempotent():
    text = "  Two cats &amp;amp; a \u201cdog\u201d\n\n on   a stage  "
    assert clean_prompt(clean_prompt(text)) == clean_prompt(text)


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_dir):
    return tiny_dir / "ckpt" / "shared" / "google" / "umt5-xxl"


def test_padding_truncation_and_eos(tokenizer_dir):
    tok = PromptTokenizer(tokenizer_dir, text_len=16)
    long = "two anthropomorphic cats in comfy boxing gear fight on a stage " * 4
    ids, mask = tok(["a cat", long, ""])
    assert ids.shape == mask.shape == (3, 16) and ids.dtype == mask.dtype == torch.int64
    n_short = int(mask[0].sum())
    assert 1 < n_short < 16
    assert ids[0, n_short - 1] == 1 and (ids[0, n_short:] == 0).all()      # </s>, then <pad> = 0
    assert mask[0, :n_short].all() and not mask[0, n_short:].any()
    assert mask[1].all() and ids[1, -1] == 1 and (ids[1, :-1] != 1).all()  # truncated, </s> kept last
    assert int(mask[2].sum()) == 1 and ids[2, 0] == 1                       # empty prompt: just </s>


def test_cleaning_happens_inside(tokenizer_dir):
    tok = PromptTokenizer(tokenizer_dir, text_len=32)
    a, _ = tok(["  a   white cat &amp; sunglasses\n on a surfboard  "])
    b, _ = tok(["a white cat & sunglasses on a surfboard"])
    assert torch.equal(a, b)
    raw = PromptTokenizer(tokenizer_dir, text_len=32, clean=False)
    c, _ = raw(["  a   white cat &amp; sunglasses\n on a surfboard  "])
    assert not torch.equal(a, c)


def test_errors(tmp_path, tokenizer_dir):
    from wan_core.errors import CheckpointError, InputError

    with pytest.raises(CheckpointError, match="tokenizer.json"):
        PromptTokenizer(tmp_path, text_len=32)
    with pytest.raises(InputError, match="list"):
        PromptTokenizer(tokenizer_dir, text_len=32)("a single string")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be read"):
        PromptTokenizer(tmp_path, text_len=32)
