"""The umT5 tokenizer a ComfyUI text encoder file carries, as a Hugging Face `tokenizers.Tokenizer`.

ComfyUI's umT5 files (`umt5_xxl_fp16.safetensors`, `umt5_xxl_fp8_e4m3fn_scaled.safetensors`) hold
the sentencepiece model as a uint8 tensor named `spiece_model` (ComfyUI's `comfy/sd.py` hands it to
its `SPieceTokenizer`). The official pipeline uses `google/umt5-xxl/tokenizer.json`, which Hugging
Face made from that same sentencepiece model. Rather than depend on the sentencepiece library, this
module reads the model's protobuf (pieces, scores, special ids, normalizer) with a few lines of
wire-format parsing and builds the equivalent `tokenizers` pipeline, the way `transformers`'
T5 converter does: the sentencepiece normalizer (its precompiled charsmap, or NFKC), a Metaspace
pre-tokenizer with the dummy prefix, the Unigram model, and `</s>` appended.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import CheckpointError


@dataclass
class SpmModel:
    pieces: list[tuple[str, float, int]] = field(default_factory=list)   # (piece, score, type)
    unk_id: int = 0
    eos_id: int = 1
    pad_id: int = 0
    byte_fallback: bool = False
    normalizer_name: str = "nmt_nfkc"
    charsmap: bytes = b""
    add_dummy_prefix: bool = True


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message (value: int or bytes)."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 2:
            ln, i = _varint(buf, i)
            v, i = buf[i:i + ln], i + ln
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, v


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def parse_spm(data: bytes) -> SpmModel:
    """The parts of a sentencepiece `ModelProto` a Unigram tokenizer needs."""
    m = SpmModel()
    model_type = 1
    for num, _, v in _fields(data):
        if num == 1:                                  # SentencePiece
            piece, score, ptype = "", 0.0, 1
            for n2, _, v2 in _fields(v):
                if n2 == 1:
                    piece = v2.decode("utf-8")
                elif n2 == 2:
                    score = struct.unpack("<f", v2)[0]
                elif n2 == 3:
                    ptype = v2
            m.pieces.append((piece, score, ptype))
        elif num == 2:                                # TrainerSpec
            for n2, _, v2 in _fields(v):
                if n2 == 3:
                    model_type = v2
                elif n2 == 35:
                    m.byte_fallback = bool(v2)
                elif n2 == 40:
                    m.unk_id = v2
                elif n2 == 42:
                    m.eos_id = _signed(v2)
                elif n2 == 43:
                    m.pad_id = _signed(v2)
        elif num == 3:                                # NormalizerSpec
            for n2, _, v2 in _fields(v):
                if n2 == 1:
                    m.normalizer_name = v2.decode("utf-8")
                elif n2 == 2:
                    m.charsmap = bytes(v2)
                elif n2 == 3:
                    m.add_dummy_prefix = bool(v2)
    if model_type != 1:
        raise ValueError(f"sentencepiece model type {model_type} is not Unigram (1)")
    if not m.pieces:
        raise ValueError("no pieces")
    return m


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def tokenizer_from_spm(data: bytes, where: str = "spiece_model"):
    """A `tokenizers.Tokenizer` equivalent to the sentencepiece model `data` (umT5: `</s>` appended)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    try:
        m = parse_spm(bytes(data))
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
        raise CheckpointError(f"{where} is not a readable sentencepiece model ({exc})") from None
    vocab = [(p, s) for p, s, _ in m.pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=m.unk_id, byte_fallback=m.byte_fallback))
    norms = []
    if m.charsmap:
        norms.append(normalizers.Precompiled(m.charsmap))
    elif m.normalizer_name.startswith("nmt_nfkc") or m.normalizer_name == "nfkc":
        norms.append(normalizers.NFKC())
    norms.append(normalizers.Replace(Regex(" {2,}"), " "))
    tok.normalizer = normalizers.Sequence(norms)
    scheme = "always" if m.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    eos = m.pieces[m.eos_id][0] if 0 <= m.eos_id < len(m.pieces) else "</s>"
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
                                                       special_tokens=[(eos, m.eos_id)])
    return tok


__all__ = ["SpmModel", "parse_spm", "tokenizer_from_spm"]
