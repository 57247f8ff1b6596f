"""How close a student sentence encoder is to its teacher: embedding cosine, nearest-neighbour agreement, CPU
encode speed and model size; int8 quantization (torchao); and a callback that logs them during ``fit``.

Neighbour agreement: for each sentence of a set, its ``k`` nearest other sentences (cosine) under the teacher's
embeddings and under the student's; the score is the mean share of the teacher's ``k`` neighbours that the
student also returns (``k = 1``: the fraction whose nearest neighbour is the same sentence).
"""

from __future__ import annotations

import copy
import io
import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn


def mean_cosine(student: Tensor, teacher: Tensor) -> float:
    """Mean over rows of ``cos(student_i, teacher_i)`` for ``[N, D]`` embeddings.

    Example:
        >>> mean_cosine(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0, 0.0], [1.0, 0.0]]))
        0.5
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student embeddings {tuple(student.shape)} and teacher's {tuple(teacher.shape)} differ.")
    return float(F.cosine_similarity(student.float(), teacher.float(), dim=-1).mean())


def nearest_neighbours(embeddings: Tensor, k: int) -> Tensor:
    """``[N, k]`` indices of each row's ``k`` most cosine-similar other rows, most similar first.

    Example:
        >>> nearest_neighbours(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), k=1).flatten().tolist()
        [1, 0, 1]
    """
    if not 1 <= k < len(embeddings):
        raise ValueError(f"k must lie in [1, {len(embeddings) - 1}] for {len(embeddings)} sentences, got {k}.")
    unit = F.normalize(embeddings.float(), dim=-1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(float("-inf"))  # a sentence is not its own neighbour
    return similarity.topk(k, dim=-1).indices


def neighbour_agreement(student: Tensor, teacher: Tensor, k: int = 1) -> float:
    """Mean share of each sentence's teacher top-``k`` neighbours that are also in its student top-``k``.

    Example:
        >>> e = torch.randn(20, 8)
        >>> neighbour_agreement(2 * e, e, k=5)
        1.0
    """
    s, t = nearest_neighbours(student, k), nearest_neighbours(teacher, k)
    shared = (s[:, :, None] == t[:, None, :]).any(-1).sum(-1)
    return float(shared.float().mean() / k)


def quantize_int8(encoder: nn.Module, scheme: str = "int8_dynamic_int8_weight", compile: bool = False) -> nn.Module:
    """A copy of ``encoder`` on the CPU whose ``nn.Linear`` layers are int8, with torchao.

    ``int8_dynamic_int8_weight``: weights int8 per output row, activations quantized per token on the fly (dynamic
    int8); ``int8_weight_only``: weights only. Embeddings and LayerNorms stay float. ``compile``: the copy runs
    under ``torch.compile`` (dynamic shapes): on the CPU eager torchao int8 is barely faster than fp32, compiled
    it matches the former ``torch.ao`` dynamic int8 (BENCHMARKS.md); the first calls compile. Needs torchao
    (``pip install 'lit-distill[quant]'``).

    Example:
        >>> type(quantize_int8(nn.Sequential(nn.Linear(4, 4)))[0].weight).__name__
        'Int8Tensor'
    """
    from lit_distill.quantization import quantize_model
    from lit_distill.quantization.schemes import get_scheme

    chosen = get_scheme(scheme)
    if chosen.weight_bits != 8:
        raise ValueError(f"quantize_int8 takes an int8 scheme, got {scheme!r}; use lit_distill.quantization for int4.")
    model = copy.deepcopy(encoder).cpu().eval()
    quantize_model(model, chosen)
    if compile:
        model.compile(dynamic=True)
    return model


def size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what the weights take on disk (int8 ones included).

    Example:
        >>> size_bytes(nn.Linear(1000, 1000)) > 4_000_000
        True
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def count_parameters(model: nn.Module) -> int:
    """Weights of ``model``; a quantized weight counts its values (not its bytes), packed ones included.

    Example:
        >>> count_parameters(quantize_int8(nn.Sequential(nn.Linear(4, 3))))
        15
    """
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if callable(getattr(module, "weight", None)):  # packed weights behind a method (torch.ao's dynamic Linear)
            total += module.weight().numel() + (module.bias().numel() if module.bias() is not None else 0)
    return total


def encode_times(
    encoders: Mapping[str, nn.Module], sentences: list[str], rounds: int = 3, batch_size: int = 32
) -> dict[str, list[tuple[float, float]]]:
    """Seconds of each encoder's ``encode`` over ``sentences`` (tokenization included), per round: ``(wall, cpu)``,
    the CPU time being this process's (all threads). Rounds are interleaved (a, b, c, a, b, c, ...) so background
    load on a shared CPU hits every encoder alike; compare encoders within a round.

    Example:
        >>> encode_times({"teacher": teacher, "student": student}, sentences, rounds=2)  # doctest: +SKIP
        {'teacher': [(6.2, 6.1), (6.3, 6.2)], 'student': [(3.1, 3.0), (3.0, 3.0)]}
    """
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in encoders}
    for encoder in encoders.values():
        encoder.encode(sentences[:batch_size], batch_size=batch_size)  # warm-up: allocator, thread pool
    for _ in range(rounds):
        for name, encoder in encoders.items():
            wall, cpu = time.perf_counter(), time.process_time()
            encoder.encode(sentences, batch_size=batch_size)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def encode_rates(encoders: Mapping[str, nn.Module], sentences: list[str], rounds: int = 3, batch_size: int = 32):
    """Sentences per second of each encoder's ``encode`` (tokenization included), median of ``rounds`` interleaved
    passes (see :func:`encode_times`).

    Example:
        >>> encode_rates({"teacher": teacher, "student": student}, sentences)  # doctest: +SKIP
        {'teacher': 41.2, 'student': 83.6}
    """
    times = encode_times(encoders, sentences, rounds, batch_size)
    return {name: len(sentences) / statistics.median(w for w, _ in values) for name, values in times.items()}


def compare_encoders(
    teacher: nn.Module,
    students: Mapping[str, nn.Module],
    sentences: list[str],
    k: int = 10,
    rounds: int = 3,
    timed: int | None = 256,
) -> list[dict[str, Any]]:
    """One row per model (teacher first): parameters, size, mean cosine, top-1/top-``k`` agreement, speed.

    Quality is measured on all ``sentences``, speed on the first ``timed`` of them (None: all). Every model
    needs ``encode(sentences, batch_size)`` (:class:`~lit_distill.models.encoder.SentenceEncoder`). Speed-ups
    over the teacher are taken within each round (interleaved passes), by the wall clock (``speedup``: median,
    ``speedup_range``: lowest and highest round) and by this process's CPU time (``cpu_speedup``: median), which
    other jobs on a shared CPU do not inflate.

    Args:
        teacher: the reference encoder.
        students: name -> encoder to compare with it.
        sentences: held-out texts.
        k: the wider neighbourhood of the agreement score.
        rounds: timed passes per model.
        timed: how many of ``sentences`` each timed pass encodes.

    Example:
        >>> print(format_table(compare_encoders(teacher, {"student": student}, sentences)))  # doctest: +SKIP
    """
    models = {"teacher": teacher, **students}
    times = encode_times(models, sentences[:timed], rounds=rounds)
    n_timed = len(sentences[:timed])
    reference = teacher.encode(sentences)
    rows = []
    for name, model in models.items():
        emb = reference if name == "teacher" else model.encode(sentences)
        wall = [t[0] / m[0] for t, m in zip(times["teacher"], times[name])]
        cpu = [t[1] / m[1] for t, m in zip(times["teacher"], times[name])]
        rows.append(
            {
                "model": name,
                "params_M": count_parameters(model) / 1e6,
                "size_MB": size_bytes(model) / 2**20,
                "cosine": mean_cosine(emb, reference),
                "top1": neighbour_agreement(emb, reference, 1),
                f"top{k}": neighbour_agreement(emb, reference, k),
                "sent_per_s": n_timed / statistics.median(w for w, _ in times[name]),
                "speedup": statistics.median(wall),
                "speedup_range": f"{min(wall):.2f}-{max(wall):.2f}",
                "cpu_speedup": statistics.median(cpu),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`compare_encoders` rows (floats below 10 with 3 decimals, others with 1).

    Example:
        >>> print(format_table([{"model": "a", "cosine": 0.91234}]))
        | model | cosine |
        |---|---|
        | a | 0.912 |
    """
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else f"{v:.1f}" if isinstance(v, float) else str(v)
                 for v in row.values()]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class EmbeddingEval(Callback):
    """Logs ``val/embed_cosine``, ``val/nn_top1`` and ``val/nn_top<k>`` (student vs teacher) after each validation,
    and prints the same on the data module's held-out split, with the CPU encode speed-up, at the end of ``fit``.

    Needs a data module with ``sentences(split)`` (:class:`~lit_distill.data.sentences.SentencesDataModule`) and
    student/teacher with ``encode`` (:class:`~lit_distill.models.encoder.SentenceEncoder`).

    Args:
        max_sentences: sentences compared per evaluation (the first N of the split).
        k: the wider neighbourhood (top-1 is always reported).
        speed_rounds: timed passes per model at the end of fit (0 skips timing). ``fast_dev_run`` compares 64
            sentences and skips timing.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: lit_distill.callbacks.EmbeddingEval
              init_args: {max_sentences: 512, k: 10}
    """

    def __init__(self, max_sentences: int = 512, k: int = 10, speed_rounds: int = 3) -> None:
        if max_sentences < 2 or k < 1 or speed_rounds < 0:
            raise ValueError(
                f"need max_sentences >= 2, k >= 1, speed_rounds >= 0; got {max_sentences}, {k}, {speed_rounds}."
            )
        self.max_sentences, self.k, self.speed_rounds = max_sentences, k, speed_rounds
        self.report: dict[str, float] = {}

    def _scores(self, trainer: Trainer, pl_module: LightningModule, split: str) -> dict[str, float] | None:
        sentences_of = getattr(trainer.datamodule, "sentences", None)
        if pl_module.teacher is None or sentences_of is None:
            return None
        # A smoke run (fast_dev_run) only checks that the evaluation works.
        sentences = sentences_of(split)[: 64 if trainer.fast_dev_run else self.max_sentences]
        k = min(self.k, len(sentences) - 1)
        teacher, student = pl_module.teacher.encode(sentences), pl_module.student.encode(sentences)
        return {
            "embed_cosine": mean_cosine(student, teacher),
            "nn_top1": neighbour_agreement(student, teacher, 1),
            f"nn_top{self.k}": neighbour_agreement(student, teacher, k),
        }

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        scores = self._scores(trainer, pl_module, "val")
        for name, value in (scores or {}).items():
            pl_module.log(f"val/{name}", value, prog_bar=name == "embed_cosine")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scores = self._scores(trainer, pl_module, "heldout")
        if scores is None or not trainer.is_global_zero:
            return
        if self.speed_rounds and not trainer.fast_dev_run:
            sentences = trainer.datamodule.sentences("heldout")[: self.max_sentences]
            models = {"teacher": pl_module.teacher, "student": pl_module.student}
            rates = encode_rates(models, sentences, rounds=self.speed_rounds)
            scores["speedup"] = rates["student"] / rates["teacher"]
        self.report = scores
        rank_zero_info("[lit-distill] held-out: " + "  ".join(f"{k}={v:.4f}" for k, v in scores.items()))
