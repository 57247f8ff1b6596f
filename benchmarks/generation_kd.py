"""Distillation through generation: off-policy KD vs. sequence-level KD vs. on-policy (GKD) students.

A tiny GPT teacher (as configs/text/teacher.yaml) is trained on CPython's pydoc topics (byte-level). The embedded
prompt set (``PromptDataModule``: paragraph openings of the same corpus, with the corpus continuation as the
reference) is split train/val. Then, for each seed, identically initialised 1-layer students are trained for the
same number of steps on the train prompts:

* ``no-KD``: cross-entropy on the reference continuations (no teacher);
* ``off-policy``: token-level KD (``--divergence``, default generalized JSD with beta 0.5) on the reference
  continuations (``lmbda=0``);
* ``seq-KD``: cross-entropy on the teacher's responses (``--seq-kd-temperature``, default 0 = greedy), written
  once through ``lit-distill predict``'s components (GenerationModule + JsonlPredictionWriter; Kim & Rush 2016);
* ``on-policy l=0.5`` / ``l=1``: the same divergence on the student's own samples (temperature 1) on half / all
  of the batches, the rest on the references (GKD, Agarwal et al. 2024; reverse KL is MiniLLM's, Gu et al. 2024).

Reported on the held-out prompts: ``val ppl``, the student's perplexity of the reference continuations (corpus
text, response tokens only), and ``teacher NLL``, the teacher's mean per-token NLL of the student's own samples
(temperature 1, up to 64 tokens, seeded): lower = the student writes more like the teacher. Mean ± std over seeds;
the teacher is trained once (seed 0), the seed varies the students' initialisation, batch order and sampling.

    python benchmarks/generation_kd.py                      # 3 seeds, ~11 min on one busy CPU thread
    python benchmarks/generation_kd.py --divergence reverse_kl --seq-kd-temperature 1.0 --teacher /tmp/teacher
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import quiet_trainer  # noqa: E402 - benchmarks/ is the script's folder
from lightning.pytorch import Trainer, seed_everything

from lit_distill import CrossEntropy, DistillationModule
from lit_distill.callbacks.generation import JsonlPredictionWriter
from lit_distill.data import PromptDataModule, TextDataModule
from lit_distill.generation import IGNORE_INDEX, completion_batch, generate, prompts_from_batch
from lit_distill.generation.onpolicy import OnPolicyDistillationModule
from lit_distill.generation.predict import GenerationModule
from lit_distill.losses import TokenKD
from lit_distill.models import GPT

TEACHER = {"n_layer": 3, "n_embd": 96, "n_head": 4, "block_size": 128, "tokenizer_id": "bytes"}
STUDENT = {"n_layer": 1, "n_embd": 48, "n_head": 2, "block_size": 128, "tokenizer_id": "bytes"}
VARIANTS = ("no-KD", "off-policy", "seq-KD", "on-policy l=0.5", "on-policy l=1")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="student seeds (each trains every variant)")
    p.add_argument("--teacher-steps", type=int, default=1200, help="teacher steps (batches of 16 x 128 bytes)")
    p.add_argument("--student-steps", type=int, default=400, help="steps per student (batches of 16 prompts)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--divergence", default="jsd", choices=["forward_kl", "reverse_kl", "jsd"], help="of the KD runs")
    p.add_argument("--seq-kd-temperature", type=float, default=0.0, help="teacher decoding for seq-KD (0 = greedy)")
    p.add_argument(
        "--teacher", default=None, help="reuse the teacher saved in this folder (trained and saved if absent)"
    )
    p.add_argument("--lr", type=float, default=3e-3)
    # One thread: on a shared, busy machine two BLAS threads fight other processes (10x slower decoding here).
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args()


def trainer(accelerator: str, **kwargs) -> Trainer:
    return quiet_trainer(accelerator=accelerator, num_sanity_val_steps=0, limit_val_batches=0, **kwargs)


def optimizer(lr: float):
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def train_teacher(args: argparse.Namespace) -> GPT:
    if args.teacher and (Path(args.teacher) / "config.json").is_file():
        return GPT.from_pretrained(args.teacher).eval()
    seed_everything(0, verbose=False)
    teacher = GPT(**TEACHER)
    module = DistillationModule(student=teacher, losses=[CrossEntropy()], optimizer=optimizer(args.lr))
    corpus = TextDataModule(seq_len=128, batch_size=16, seed=0)
    trainer(args.accelerator, max_steps=args.teacher_steps).fit(module, corpus)
    if args.teacher:
        teacher.save_pretrained(args.teacher)
    return teacher.eval()


def write_teacher_responses(teacher: GPT, path: Path, args: argparse.Namespace) -> float:
    """Greedy teacher responses to the train prompts, through the ``lit-distill predict`` components."""
    module = GenerationModule(model=teacher, max_new_tokens=args.max_new_tokens, temperature=args.seq_kd_temperature)
    data = PromptDataModule(batch_size=64, seed=0, predict_split="train")
    start = time.perf_counter()
    pred = Trainer(
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[JsonlPredictionWriter(str(path))],
    )
    pred.predict(module, datamodule=data, return_predictions=False)
    return time.perf_counter() - start


def build(variant: str, teacher: GPT, seed: int, args: argparse.Namespace) -> DistillationModule:
    seed_everything(seed, verbose=False)  # the same student initialisation for every variant of this seed
    student = GPT(**STUDENT)
    kd = [TokenKD(divergence=args.divergence, beta=0.5)]
    if variant in ("no-KD", "seq-KD"):
        return DistillationModule(student=student, losses=[CrossEntropy()], optimizer=optimizer(args.lr))
    lmbda = {"off-policy": 0.0, "on-policy l=0.5": 0.5, "on-policy l=1": 1.0}[variant]
    return OnPolicyDistillationModule(
        student=student,
        teacher=teacher,
        losses=kd,
        lmbda=lmbda,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        seed=seed,
        optimizer=optimizer(args.lr),
    )


@torch.no_grad()
def evaluate(student: GPT, teacher: GPT, val: PromptDataModule, seed: int, max_new: int) -> dict[str, float]:
    """Perplexity of the held-out references, and the teacher's NLL of the student's own samples."""
    student.eval()
    ref_nll = ref_count = sample_nll = sample_count = 0.0
    grams: list[tuple[int, ...]] = []
    for i, batch in enumerate(val.val_dataloader()):
        batch = {k: v.to(student.wte.weight.device) for k, v in batch.items()}
        ref_nll, ref_count = _add(student, batch, ref_nll, ref_count)
        ids, mask = prompts_from_batch(batch, val.tokenizer.pad_id)
        out = generate(
            student,
            ids,
            mask,
            max_new_tokens=max_new,
            temperature=1.0,
            seed=seed * 1000 + i,
            eos_token_id=val.tokenizer.eos_id,
            pad_token_id=val.tokenizer.pad_id,
        )
        samples = completion_batch(ids, mask, out, val.tokenizer.eos_id, val.tokenizer.pad_id)
        sample_nll, sample_count = _add(teacher, samples, sample_nll, sample_count)
        for row in samples["labels"].tolist():
            text = [t for t in row if t != IGNORE_INDEX]
            grams += [tuple(text[j : j + 4]) for j in range(len(text) - 3)]
    return {
        "val_ppl": float(torch.tensor(ref_nll / ref_count).exp()),
        "teacher_nll": sample_nll / sample_count,
        "sample_tokens": sample_count,
        # unique byte 4-grams over all 4-grams of the samples: falls when the samples repeat themselves
        "distinct4": len(set(grams)) / max(len(grams), 1),
    }


def _add(model: GPT, batch: dict, total: float, count: float) -> tuple[float, float]:
    logits = model(batch["input_ids"], batch["attention_mask"])[..., : model.vocab_size].float()
    targets = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total + float(nll), count + float((targets != IGNORE_INDEX).sum())


def summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def prepare(args: argparse.Namespace) -> tuple[GPT, PromptDataModule, dict[str, float]]:
    """Quiet one-thread run; the teacher, the held-out prompt set and the teacher's own scores on it."""
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*|.*LeafSpec.*|.*modules in eval mode.*")
    teacher = train_teacher(args)
    val = PromptDataModule(batch_size=32, seed=0)
    return teacher, val, evaluate(teacher, teacher, val, seed=0, max_new=args.max_new_tokens)


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    teacher, val, teacher_ref = prepare(args)
    print(
        f"teacher: val ppl {teacher_ref['val_ppl']:.3f}, NLL of its own samples {teacher_ref['teacher_nll']:.3f} "
        f"({time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        responses = Path(tmp) / "teacher_responses.jsonl"
        gen_s = write_teacher_responses(teacher, responses, args)
        print(f"seq-KD data: {sum(1 for _ in responses.open())} teacher responses in {gen_s:.1f} s", flush=True)
        for seed in range(args.seeds):
            for variant in VARIANTS:
                module = build(variant, teacher, seed, args)
                data = PromptDataModule(batch_size=16, seed=0)
                if variant == "seq-KD":
                    data = PromptDataModule(prompts=str(responses), batch_size=16, val_fraction=0.0, test_fraction=0.0)
                t0 = time.perf_counter()
                fit = trainer(args.accelerator, max_steps=args.student_steps)
                fit.fit(module, datamodule=data)
                row = evaluate(module.student, teacher, val, seed=seed, max_new=args.max_new_tokens)
                row["train_s"] = time.perf_counter() - t0
                if "train/gen_tokens_per_s" in fit.callback_metrics:
                    row["gen_tokens_per_s"] = float(fit.callback_metrics["train/gen_tokens_per_s"])
                results[variant].append(row)
                print(
                    f"seed {seed} {variant:16s} val ppl {row['val_ppl']:.3f}  teacher NLL {row['teacher_nll']:.3f}"
                    f"  ({row['train_s']:.0f} s)",
                    flush=True,
                )
    print(
        f"\nstudents: {args.seeds} seeds x {args.student_steps} steps of 16 prompts; KD divergence {args.divergence}; "
        f"seq-KD decoding T={args.seq_kd_temperature}; teacher {args.teacher_steps} steps; {args.threads} CPU "
        f"thread(s); total {time.perf_counter() - start:.0f} s"
    )
    print(f"{'student':18s} {'val ppl (refs)':>18s} {'teacher NLL of samples':>24s} {'train s':>8s}")
    print(f"{'teacher':18s} {teacher_ref['val_ppl']:>18.3f} {teacher_ref['teacher_nll']:>24.3f} {'':>8s}")
    for variant, rows in results.items():
        print(
            f"{variant:18s} {summary([r['val_ppl'] for r in rows]):>18s} "
            f"{summary([r['teacher_nll'] for r in rows]):>24s} {statistics.fmean(r['train_s'] for r in rows):>8.0f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "teacher": teacher_ref, "students": results}, indent=2)
        )


if __name__ == "__main__":
    main()
