"""Cross-tokenizer KD: a teacher and a student that do not share a tokenizer, compared where they read the same text.

The data module tokenizes every example twice (``teacher_tokenizer`` on any text DataModule,
:mod:`lit_distill.data.cross_tokenizer`); the module runs the teacher on its own tokens. At every pair of positions
where both models have read exactly the same bytes (:mod:`lit_distill.losses.functional.alignment`), whose next
tokens are learned on both sides, the two next-token distributions are compared (:mod:`lit_distill.losses.aligned`):
by :class:`ULD` (sorted probabilities, no vocabulary map) or :class:`AlignedSpanKD` (KL on the tokens the vocabulary
map matches, ULD on the rest).
"""

from __future__ import annotations

from torch import Tensor

from lit_distill.losses.aligned import AlignedKD
from lit_distill.losses.vocab_map import Match, VocabMap, build_vocab_map, vocab_map

__all__ = ["ULD", "AlignedSpanKD"]


class ULD(AlignedKD):
    """Universal Logit Distillation (Boizard et al. 2024) across tokenizers, at byte-aligned positions.

    ``ULD = mean_aligned Σ_i |sort↓(p_s)_i − sort↓(p_t)_i|``: the Wasserstein-1 distance between the two
    next-token distributions, which needs no vocabulary map (:func:`lit_distill.losses.functional.uld`). Positions
    are compared where both models have read the same bytes and both next tokens are learned. ``lm_weight > 0``
    adds the student's own next-token cross-entropy (ULD alone carries no token identity; the paper adds it).

    Args:
        temperature: softening temperature of both sides.
        uld_top_k: sort only the ``k`` largest probabilities per side, the rest compared as one mass (much faster
            on LLM vocabularies; a lower bound of ULD); None: sort whole vocabularies, as the paper.
        lm_weight: weight of the student's hard-label cross-entropy (logged as ``<name>/lm``).
        ignore_index: label value that is not counted.
        fused: accept hidden states + LM heads and compute in chunks (no ``[tokens, vocab]`` logits).
        chunk_size: aligned positions per chunk on the fused path (None: a memory budget).
        weight: multiplier in the total loss.
        name: log name (default ``uld``).

    Example (YAML)::

        losses:
          - class_path: lit_distill.losses.ULD
            init_args: {lm_weight: 1.0}
    """

    def __init__(
        self,
        temperature: float = 1.0,
        uld_top_k: int | None = None,
        lm_weight: float = 1.0,
        ignore_index: int = -100,
        fused: bool = True,
        chunk_size: int | None = None,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        args = (temperature, 1.0, uld_top_k, lm_weight, ignore_index, fused, chunk_size, weight, name or "uld")
        super().__init__(*args)

    def _terms(self, total: Tensor, uld: Tensor, lm: Tensor | None) -> Tensor | dict[str, Tensor]:
        return total if lm is None else {"uld": total, "lm": self.lm_weight * lm}


class AlignedSpanKD(AlignedKD):
    """Aligned-span KD across tokenizers: KL where the two vocabularies match, ULD on the rest (GOLD's hybrid).

    At every pair of byte-aligned positions (both models read the same text, both next tokens learned), the
    vocabulary map (:mod:`lit_distill.losses.vocab_map`, built once from the two tokenizers) sums each side's
    probabilities per shared class; ``T²·KL(P‖Q)`` compares them (unmatched tokens pooled into one class) and
    ``uld_weight · ULD`` the unmatched probabilities (:func:`lit_distill.losses.functional.span_kd`). With one
    tokenizer on both sides it equals :class:`~lit_distill.losses.TokenKD` (forward KL).

    ``match: token`` pairs tokens with the same text (``" the"`` and ``" the"``), for vocabularies of similar
    granularity (two BPEs); ``match: byte`` pairs tokens by the byte the text continues with, so it compares the
    next-byte distributions exactly whatever the granularity (a byte-level model and a BPE one).

    Args:
        match: ``"token"`` or ``"byte"`` (see above).
        temperature: softening temperature ``T`` of both sides.
        uld_weight: weight of ULD on the unmatched tokens (0: the class KL alone).
        uld_top_k: sort only the ``k`` largest unmatched probabilities per side; None: all.
        lm_weight: weight of the student's hard-label cross-entropy (logged as ``<name>/lm``).
        ignore_index: label value that is not counted.
        fused: accept hidden states + LM heads and compute in chunks (no ``[tokens, vocab]`` logits).
        chunk_size: aligned positions per chunk on the fused path (None: a memory budget).
        weight: multiplier in the total loss.
        name: log name (default ``span_kd``).

    Example (YAML)::

        losses:
          - class_path: lit_distill.losses.AlignedSpanKD
            init_args: {match: byte, lm_weight: 1.0}
    """

    def __init__(
        self,
        match: Match = "token",
        temperature: float = 1.0,
        uld_weight: float = 1.0,
        uld_top_k: int | None = None,
        lm_weight: float = 0.0,
        ignore_index: int = -100,
        fused: bool = True,
        chunk_size: int | None = None,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        if match not in ("token", "byte"):
            raise ValueError(f"match must be 'token' or 'byte', got {match!r}.")
        args = (temperature, uld_weight, uld_top_k, lm_weight, ignore_index, fused, chunk_size, weight)
        super().__init__(*args, name or "span_kd")
        self.match = match

    def _vocab_map(self) -> VocabMap:
        v = self.vocabularies
        if self._map is not None or v is None:
            return self._map or self._no_vocabularies()
        s, t = v["student"], v["teacher"]
        key = (s["id"], len(s["bytes"]), t["id"], len(t["bytes"]), self.match)
        return vocab_map(key, lambda: build_vocab_map(s["bytes"], t["bytes"], s["roles"], t["roles"], self.match))

    def _no_vocabularies(self) -> VocabMap:
        raise ValueError(
            f"loss {self.name!r} needs the two tokenizers' vocabularies for its vocabulary map: train with a data "
            "module that has `teacher_tokenizer:` (it hands them over at setup), or call "
            "loss.use_vocabularies(datamodule.vocabularies()) (or loss.use_vocab_map(...))."
        )

    def _terms(self, total: Tensor, uld: Tensor, lm: Tensor | None) -> Tensor | dict[str, Tensor]:
        # The gradient of both terms rides on the KL term; the sum of the logged terms is the loss.
        terms = {"kl": total - uld, "uld": uld}
        if self.uld_weight == 0:
            terms = {"kl": total}
        if lm is not None:
            terms["lm"] = self.lm_weight * lm
        return terms if len(terms) > 1 else next(iter(terms.values()))
