"""The vocabulary map of cross-tokenizer distillation: which student and teacher tokens predict the same text.

Both vocabularies are described by the bytes each token stands for (and the role of special tokens: eos, bos,
unk). The map puts tokens into shared **classes**; a class holds the tokens of either side whose next-text event is
the same. ``match="token"`` (what GOLD does): one class per byte string found in both vocabularies, so a
student ``" the"`` and a teacher ``" the"`` share a class and tokens without a twin are unmatched.
``match="byte"``: one class per first byte, so every token is matched by the byte the text continues with; this
is what tokenizers of very different granularity (bytes and BPE) can still compare exactly. Specials are
matched by role (the two eos tokens share a class, so do the two pads); tokens with no text are unmatched.

Building it walks both vocabularies once in Python; :func:`vocab_map` keeps every map it built in memory, keyed by
the two tokenizers' ids, so a run builds it once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = ["VocabMap", "Match", "build_vocab_map", "vocab_map"]

Match = Literal["token", "byte"]
MATCHES = ("token", "byte")
_BUILT: dict[tuple, VocabMap] = {}


class VocabMap(NamedTuple):
    """``student[i]`` / ``teacher[j]``: the class of student token ``i`` / teacher token ``j``, -1 when unmatched.

    Example:
        >>> m = build_vocab_map([b"a", b"b", b"ab"], [b"ab", b"a", b"c"], match="token")
        >>> m.student.tolist(), m.teacher.tolist(), m.classes
        ([0, -1, 1], [1, 0, -1], 2)
    """

    student: Tensor
    teacher: Tensor
    classes: int

    def fit(self, student_width: int, teacher_width: int) -> VocabMap:
        """The map extended to the models' logits widths (padded head rows are unmatched); a head narrower than
        its tokenizer is refused."""
        parts = []
        for side, classes, width in (
            ("student", self.student, student_width),
            ("teacher", self.teacher, teacher_width),
        ):
            if width < len(classes):
                raise ValueError(
                    f"the {side}'s LM head has {width} rows but its tokenizer has {len(classes)} tokens; the model "
                    f"must produce a logit for every token id (vocab_size >= {len(classes)})."
                )
            parts.append(torch.cat([classes, classes.new_full((width - len(classes),), -1)]))
        return VocabMap(parts[0], parts[1], self.classes)

    def matched(self) -> tuple[float, float]:
        """Share of the student's and the teacher's tokens that have a class."""
        return float((self.student >= 0).float().mean()), float((self.teacher >= 0).float().mean())


def _keys(vocab: list[bytes], roles: dict[int, str], match: Match) -> list[object | None]:
    keys: list[object | None] = []
    for i, piece in enumerate(vocab):
        role = roles.get(i)
        if role is not None:
            keys.append(("role", role))
        elif not piece:
            keys.append(None)
        else:
            keys.append(piece if match == "token" else piece[0])
    return keys


def build_vocab_map(
    student_vocab: list[bytes],
    teacher_vocab: list[bytes],
    student_roles: dict[int, str] | None = None,
    teacher_roles: dict[int, str] | None = None,
    match: Match = "token",
) -> VocabMap:
    """The :class:`VocabMap` of two vocabularies given as the bytes of each token id (and special-token roles).

    Args:
        student_vocab: bytes of each student token id (``b""``: no text).
        teacher_vocab: bytes of each teacher token id.
        student_roles: ``{id: "bos" | "eos" | "pad" | "unk"}`` of the student's special tokens.
        teacher_roles: the same for the teacher.
        match: ``"token"``: equal byte strings share a class; ``"byte"``: equal first bytes do.
    """
    if match not in MATCHES:
        raise ValueError(f"match must be one of {MATCHES}, got {match!r}.")
    s_keys = _keys(student_vocab, student_roles or {}, match)
    t_keys = _keys(teacher_vocab, teacher_roles or {}, match)
    shared = sorted({k for k in s_keys if k is not None} & {k for k in t_keys if k is not None}, key=repr)
    index = {k: c for c, k in enumerate(shared)}

    def classes(keys: list[object | None]) -> Tensor:
        return torch.tensor([index.get(k, -1) if k is not None else -1 for k in keys], dtype=torch.long)

    return VocabMap(classes(s_keys), classes(t_keys), len(shared))


def vocab_map(key: tuple, build: Callable[[], VocabMap]) -> VocabMap:
    """The map stored under ``key`` (the two tokenizer ids and the match), built by ``build()`` the first time."""
    if key not in _BUILT:
        _BUILT[key] = build()
    return _BUILT[key]
