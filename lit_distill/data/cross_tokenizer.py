"""One text, two tokenizations: examples for a teacher and a student that do not share a tokenizer.

Every text DataModule (:class:`~lit_distill.data.TextDataModule`, :class:`~lit_distill.data.PromptDataModule`,
:class:`~lit_distill.data.ChatDataModule`) takes ``teacher_tokenizer``; its batches then hold the student's
``input_ids``/``labels``/``attention_mask``/``offsets`` and the teacher's ``teacher_input_ids``/``teacher_labels``/
``teacher_attention_mask``/``teacher_offsets`` for the same text. ``offsets`` are ``[B, T, 2]`` byte spans of each
token in the example's UTF-8 text (special tokens that are not text are zero-width), which the cross-tokenizer
losses align (:mod:`lit_distill.losses.functional.alignment`).

An example is a list of pieces ``(text, learned)``: each side tokenizes each piece on its own (so the learned and
prompt tokens are the same text on both sides), ``EOS`` stands for each tokenizer's own eos. A cut (``seq_len``,
``teacher_seq_len``) happens where both sides have read the same text, so neither side is ever cut shorter.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from lit_distill.batch import TEACHER_TOKENS as TEACHER
from lit_distill.data.byte_offsets import encode_with_offsets, special_roles, token_bytes
from lit_distill.data.tokenizers import Tokenizer, load_tokenizer
from lit_distill.losses.functional.alignment import aligned_pairs

IGNORE_INDEX = -100
#: A piece that is the tokenizer's own end-of-text token (zero-width, not text).
EOS = None
Piece = tuple[str | None, bool]


class Side(NamedTuple):
    """One tokenization of an example: token ids, labels (-100 where nothing is learned) and byte spans."""

    ids: list[int]
    labels: list[int]
    offsets: list[tuple[int, int]]

    def cut(self, stop: int, start: int = 0) -> Side:
        base = self.offsets[start - 1][1] if start > 0 else 0  # bytes before the piece: offsets restart at 0
        spans = [(a - base, b - base) for a, b in self.offsets[start:stop]]
        return Side(self.ids[start:stop], self.labels[start:stop], spans)

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        return {
            f"{prefix}input_ids": torch.tensor(self.ids, dtype=torch.long),
            f"{prefix}labels": torch.tensor(self.labels, dtype=torch.long),
            f"{prefix}offsets": torch.tensor(self.offsets, dtype=torch.long).view(-1, 2),
        }


def tokenize(tokenizer: Tokenizer, pieces: list[Piece], vocab: list[bytes] | None = None) -> Side:
    """Each piece tokenized on its own, byte spans continuing across pieces; ``EOS`` pieces add the eos."""
    ids: list[int] = []
    labels: list[int] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for text, learned in pieces:
        if text is EOS:
            piece_ids, piece_spans = [tokenizer.eos_id], [(0, 0)]
        else:
            piece_ids, piece_spans = encode_with_offsets(tokenizer, text, vocab)
        ids += piece_ids
        labels += piece_ids if learned else [IGNORE_INDEX] * len(piece_ids)
        spans += [(pos + a, pos + b) for a, b in piece_spans]
        pos += 0 if text is EOS else len(text.encode("utf-8"))
    return Side(ids, labels, spans)


def _pairs(student: Side, teacher: Side) -> tuple[Tensor, Tensor]:
    s = torch.tensor(student.offsets, dtype=torch.long).view(1, -1, 2)
    t = torch.tensor(teacher.offsets, dtype=torch.long).view(1, -1, 2)
    _, s_pos, t_pos = aligned_pairs(s, t)
    return s_pos, t_pos


def _last_fitting(s_pos: Tensor, t_pos: Tensor, s_stop: int, t_stop: int) -> int:
    """Index of the last aligned pair with both positions below their stops (pairs rise on both sides), or -1."""
    bound = torch.tensor([s_stop, t_stop])
    return int(min(torch.searchsorted(s_pos, bound[:1]), torch.searchsorted(t_pos, bound[1:]))) - 1


def cut_both(student: Side, teacher: Side, max_student: int, max_teacher: int) -> tuple[Side, Side] | None:
    """Both sides cut to their limits where they have read the same text; None when no common cut fits."""
    if len(student.ids) <= max_student and len(teacher.ids) <= max_teacher:
        return student, teacher
    s_pos, t_pos = _pairs(student, teacher)
    k = _last_fitting(s_pos, t_pos, max_student, max_teacher)
    if k < 0:
        return None
    return student.cut(int(s_pos[k]) + 1), teacher.cut(int(t_pos[k]) + 1)


def blocks(student: Side, teacher: Side, max_student: int, max_teacher: int) -> list[tuple[Side, Side]]:
    """A long two-sided stream cut into consecutive blocks, each as long as both limits allow, every cut where
    both sides have read the same text. Text where no cut fits a block (a token longer than a block) is skipped."""
    s_pos, t_pos = _pairs(student, teacher)
    out, s0, t0 = [], 0, 0
    while True:
        k = _last_fitting(s_pos, t_pos, s0 + max_student, t0 + max_teacher)
        if k < 0 or int(s_pos[k]) < s0:
            nxt = int(torch.searchsorted(s_pos, torch.tensor([s0])))
            if nxt >= len(s_pos):
                return out
            s0, t0 = int(s_pos[nxt]) + 1, int(t_pos[nxt]) + 1
            continue
        s1, t1 = int(s_pos[k]) + 1, int(t_pos[k]) + 1
        if s1 - s0 >= 2:  # one student token predicts nothing
            out.append((student.cut(s1, s0), teacher.cut(t1, t0)))
        s0, t0 = s1, t1


def collate_side(rows: list[dict[str, Tensor]], pad_id: int, prefix: str = "") -> dict[str, Tensor]:
    """Right-pad one side: ``pad_id`` ids, -100 labels, ``attention_mask`` 0, zero spans."""
    ids = [r[f"{prefix}input_ids"] for r in rows]
    width = max(len(x) for x in ids)
    batch = {
        f"{prefix}input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        f"{prefix}labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
        f"{prefix}attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
        f"{prefix}offsets": torch.zeros(len(rows), width, 2, dtype=torch.long),
    }
    for i, row in enumerate(rows):
        n = len(ids[i])
        for key in ("input_ids", "labels", "offsets"):
            batch[prefix + key][i, :n] = row[prefix + key]
        batch[f"{prefix}attention_mask"][i, :n] = 1
    return batch


class TeacherTokenizer:
    """Mixin for text DataModules: a second tokenizer for the teacher, and examples tokenized by both.

    Set ``teacher_tokenizer_spec`` (``"bytes"`` or a Hugging Face tokenizer folder / hub id) and
    ``teacher_seq_len`` (None: ``seq_len``) in ``__init__``; without a teacher tokenizer nothing changes.
    """

    tokenizer: Tokenizer
    seq_len: int
    teacher_tokenizer_spec: Any = None
    teacher_seq_len: int | None = None
    _teacher_tokenizer: Tokenizer | None = None
    _vocabs: tuple[list[bytes], list[bytes]] | None = None

    @property
    def teacher_tokenizer(self) -> Tokenizer | None:
        """The teacher's tokenizer, or None when the teacher reads the student's tokens."""
        if self.teacher_tokenizer_spec is None:
            return None
        if self._teacher_tokenizer is None:
            self._teacher_tokenizer = load_tokenizer(self.teacher_tokenizer_spec)
        return self._teacher_tokenizer

    @property
    def teacher_vocab_size(self) -> int | None:
        return None if self.teacher_tokenizer is None else self.teacher_tokenizer.vocab_size

    @property
    def teacher_tokenizer_id(self) -> str | None:
        return None if self.teacher_tokenizer is None else self.teacher_tokenizer.tokenizer_id

    def vocabularies(self) -> dict[str, Any]:
        """What a cross-tokenizer loss builds its vocabulary map from: each side's token bytes, special-token
        roles and tokenizer id (``{"student": {...}, "teacher": {...}}``); the teacher's is the student's when
        there is no teacher tokenizer."""
        teacher = self.teacher_tokenizer or self.tokenizer
        return {
            side: {"bytes": self._token_bytes()[i], "roles": special_roles(tok), "id": tok.tokenizer_id}
            for i, (side, tok) in enumerate((("student", self.tokenizer), ("teacher", teacher)))
        }

    def _token_bytes(self) -> tuple[list[bytes], list[bytes]]:
        if self._vocabs is None:
            student = token_bytes(self.tokenizer)
            teacher = student if self.teacher_tokenizer is None else token_bytes(self.teacher_tokenizer)
            self._vocabs = (student, teacher)
        return self._vocabs

    def _limits(self) -> tuple[int, int]:
        return self.seq_len, self.teacher_seq_len or self.seq_len

    def encode_both(self, pieces: list[Piece]) -> dict[str, Tensor] | None:
        """One example for both tokenizers, cut where both read the same text; None if nothing learned is left."""
        s_vocab, t_vocab = self._token_bytes()
        student = tokenize(self.tokenizer, pieces, s_vocab)
        teacher = tokenize(self.teacher_tokenizer, pieces, t_vocab)
        cut = cut_both(student, teacher, *self._limits())
        if (
            cut is None
            or all(x == IGNORE_INDEX for x in cut[0].labels)
            or all(x == IGNORE_INDEX for x in cut[1].labels)
        ):
            return None
        return {**cut[0].tensors(), **cut[1].tensors(TEACHER)}

    def blocks_both(self, documents: list[str]) -> list[dict[str, Tensor]]:
        """A corpus as blocks for both tokenizers: documents joined by each side's eos, every token learned."""
        pieces: list[Piece] = [p for doc in documents for p in ((doc, True), (EOS, True))]
        s_vocab, t_vocab = self._token_bytes()
        student = tokenize(self.tokenizer, pieces, s_vocab)
        teacher = tokenize(self.teacher_tokenizer, pieces, t_vocab)
        return [{**s.tensors(), **t.tensors(TEACHER)} for s, t in blocks(student, teacher, *self._limits())]

    def collate_both(self, rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """A batch of two-sided examples, each side right-padded with its own pad id."""
        return {
            **collate_side(rows, self.tokenizer.pad_id),
            **collate_side(rows, self.teacher_tokenizer.pad_id, TEACHER),
        }
