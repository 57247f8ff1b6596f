"""What each token of a tokenizer is in bytes, and byte spans of the tokens of an encoded text.

Cross-tokenizer distillation aligns two tokenizations of one text by byte offsets. Character offsets (what
Hugging Face tokenizers report) are not enough: a byte-level BPE may split one character into several tokens,
which then all report that character's span. Here each token's span is found by walking the text with the
token's own bytes, falling back to the character span where they differ (normalised text, a SentencePiece ``▁``
added in front of the first word). Special tokens that are not in the text (an appended EOS) are zero-width.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["token_bytes", "special_roles", "encode_with_offsets", "char_to_byte"]

Span = tuple[int, int]
ROLES = ("bos", "eos", "pad", "unk")


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (a printable character per byte) reversed: character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def _hf(tokenizer: Any) -> Any | None:
    hf = getattr(tokenizer, "tokenizer", None)
    return hf if hf is not None and hasattr(hf, "get_vocab") else None


def _decoder_types(hf: Any) -> set[str]:
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"tokenizer {getattr(hf, 'name_or_path', type(hf).__name__)!r} is a slow (Python) tokenizer without "
            "offsets; cross-tokenizer data needs a fast one (AutoTokenizer.from_pretrained(..., use_fast=True))."
        )
    found: set[str] = set()

    def walk(spec: Any) -> None:
        if isinstance(spec, dict):
            found.add(str(spec.get("type")))
            for inner in spec.get("decoders") or []:
                walk(inner)

    walk(json.loads(backend.to_str()).get("decoder"))
    return found


def _piece_bytes(piece: str, kinds: set[str], hf: Any) -> bytes:
    table = _byte_level_decoder()
    if "ByteLevel" in kinds and all(c in table for c in piece):
        return bytes(table[c] for c in piece)
    if "ByteFallback" in kinds and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    if "Metaspace" in kinds:
        return piece.replace("▁", " ").encode("utf-8")
    if "WordPiece" in kinds:
        return piece.removeprefix("##").encode("utf-8")
    return hf.convert_tokens_to_string([piece]).encode("utf-8")


def token_bytes(tokenizer: Any) -> list[bytes]:
    """The bytes each token id stands for (its text in the input); tokens without text (the byte tokenizer's
    eos and pad) are ``b""``. Added tokens of a Hugging Face tokenizer are their literal content.

    Example:
        >>> from lit_distill.data.tokenizers import ByteTokenizer
        >>> vocab = token_bytes(ByteTokenizer())
        >>> vocab[104], vocab[256]
        (b'h', b'')
    """
    own = getattr(tokenizer, "token_bytes", None)
    if callable(own):
        return list(own())
    hf = _hf(tokenizer)
    if hf is None:
        if getattr(tokenizer, "tokenizer_id", None) == "bytes":
            return [bytes([i]) for i in range(256)] + [b""] * (tokenizer.vocab_size - 256)
        raise TypeError(
            f"cannot read the vocabulary of tokenizer {type(tokenizer).__name__}: give it a `token_bytes()` method "
            "(the bytes of each id) and an `encode_with_offsets(text)` method, or use a Hugging Face tokenizer."
        )
    kinds = _decoder_types(hf)
    added = {int(i): token.content for i, token in hf.added_tokens_decoder.items()}
    out = [b""] * len(hf)
    for piece, i in hf.get_vocab().items():
        if i < len(out):
            out[i] = added[i].encode("utf-8") if i in added else _piece_bytes(piece, kinds, hf)
    return out


def special_roles(tokenizer: Any) -> dict[int, str]:
    """``{token id: "bos" | "eos" | "pad" | "unk"}``: special tokens matched by what they do, not by their text.

    Example:
        >>> from lit_distill.data.tokenizers import ByteTokenizer
        >>> special_roles(ByteTokenizer())
        {256: 'eos', 257: 'pad'}
    """
    hf = _hf(tokenizer)
    roles: dict[int, str] = {}
    for role in ROLES:  # the adapter's own ids first (its pad falls back to eos when the tokenizer has none)
        i = getattr(tokenizer, f"{role}_id", None)
        i = getattr(hf, f"{role}_token_id", None) if i is None and hf is not None else i
        if isinstance(i, int) and i not in roles:
            roles[i] = role
    return roles


def char_to_byte(text: str) -> np.ndarray:
    """``[len(text) + 1]`` byte position of each character index in ``text.encode("utf-8")``.

    Example:
        >>> char_to_byte("aé日").tolist()
        [0, 1, 3, 6]
    """
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    sizes = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def encode_with_offsets(tokenizer: Any, text: str, vocab: list[bytes] | None = None) -> tuple[list[int], list[Span]]:
    """``(ids, byte spans)`` of ``text`` without special tokens added; spans index ``text.encode("utf-8")``.

    Args:
        tokenizer: :class:`~lit_distill.data.ByteTokenizer`, :class:`~lit_distill.data.HFTokenizer` (a fast
            tokenizer), or an object with ``encode_with_offsets(text)``.
        text: the text.
        vocab: :func:`token_bytes` of ``tokenizer`` (computed when not given; pass it when encoding many texts).

    Example:
        >>> from lit_distill.data.tokenizers import ByteTokenizer
        >>> encode_with_offsets(ByteTokenizer(), "hé")
        ([104, 195, 169], [(0, 1), (1, 2), (2, 3)])
    """
    own = getattr(tokenizer, "encode_with_offsets", None)
    if callable(own):
        ids, spans = own(text)
        return list(ids), [(int(a), int(b)) for a, b in spans]
    hf = _hf(tokenizer)
    if hf is None:
        ids = tokenizer.encode(text)
        if getattr(tokenizer, "tokenizer_id", None) != "bytes":
            raise TypeError(f"tokenizer {type(tokenizer).__name__} has no `encode_with_offsets(text)` method.")
        return ids, [(i, i + 1) for i in range(len(ids))]
    vocab = token_bytes(tokenizer) if vocab is None else vocab
    enc = hf(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    data, to_byte = text.encode("utf-8"), char_to_byte(text)
    spans, pos = [], 0
    for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
        piece, start, end = vocab[i] if i < len(vocab) else b"", int(to_byte[a]), int(to_byte[b])
        if piece and data.startswith(piece, pos):
            start, end = pos, pos + len(piece)  # the text continues with exactly this token
        elif piece and data.startswith(piece, start):
            end = start + len(piece)
        spans.append((start, end))
        pos = max(pos, end)
    return list(enc["input_ids"]), spans
