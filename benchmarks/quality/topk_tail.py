"""A top-k teacher cache with and without its tail bucket, against the full-logit loss, on the text recipe.

Writes one teacher cache per k (``lit-distill predict``'s TeacherCacheWriter: fp16 values, int32 ids and the
teacher's mass outside the k) for the train and held-out splits of configs/text's corpus; each cache is then read
two ways, with the tail (k+1 outcomes, exact) and renormalised over the k (TokenKD(topk_tail=False)). Reported:

* the gap between the cached loss and the full-logit loss, ``(cached - full) / full``, and the cosine between the
  cached loss's gradient (the student's parameters) and the full-logit one, per held-out batch and averaged, for a
  freshly initialised student and for the full-logit KD student at the end of its training (seed 1);
* held-out perplexity of a student trained from each cache, and from the live teacher (full logits), mean ± std
  over seeds (same initial weights and batches per seed).

The text recipe's loss: forward KL at T=1 (``--divergence`` to change it).

    python -m benchmarks.quality.topk_tail --teacher-dir /tmp/teacher --work /tmp/topk_tail --seeds 3
    python -m benchmarks.quality.topk_tail --smoke       # k = 4, 1 seed, a few batches: seconds
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks._lib.text_recipe import (
    add_recipe_args,
    fit_then_validate,
    recipe_trainer,
    text_data,
    text_student,
    text_teacher,
)
from benchmarks._lib.timing import mean_std_text
from benchmarks._lib.trainers import adamw, parse, parser, print_json, quiet
from lit_distill import DistillationModule
from lit_distill.batch import cached_teacher_output
from lit_distill.cache import CachedTeacher, TeacherCacheWriter
from lit_distill.data import CachedTeacherDataModule, TextDataModule
from lit_distill.losses import TokenKD
from lit_distill.outputs import ModelOutput


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__)
    add_recipe_args(p)
    p.add_argument("--work", default="topk_tail_work", help="folder for the caches (one per k)")
    p.add_argument("--ks", default="8,32,128", help="comma-separated k")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--divergence", default="forward_kl")
    p.add_argument("--gap-batches", type=int, default=20, help="held-out batches for the gap and the cosine")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parse(
        p, argv, ks="4", seeds=1, teacher_epochs=1, student_epochs=1, max_blocks=48, gap_batches=2,
    )  # fmt: skip


def write_cache(teacher, data: TextDataModule, folder: Path, k: int, args: argparse.Namespace) -> None:
    """The teacher's top-k with its tail, for the train and held-out splits (kept if already written)."""
    cached = CachedTeacherDataModule(data, str(folder), splits=["train", "val"])
    module = DistillationModule(student=text_student(0, args), teacher=teacher, losses=[TokenKD()])
    writer = TeacherCacheWriter(top_k=k, tail_temperature=1.0)
    recipe_trainer(args, callbacks=[writer]).predict(module, cached)


def gap_and_cosine(student, teacher, cached: CachedTeacherDataModule, args: argparse.Namespace) -> dict:
    """Per held-out batch: relative gap of the cached loss to the full-logit loss, and their gradients' cosine."""
    full_kd = TokenKD(args.divergence, fused=False)
    student.eval()  # one student output per batch, differentiated for both losses
    out = {}
    for tail in (True, False):
        cached_kd = TokenKD(args.divergence, fused=False, topk_tail=tail)
        gaps, cosines = [], []
        for i, batch in enumerate(cached.val_dataloader()):
            if i == args.gap_batches:
                break
            with torch.no_grad():
                live = ModelOutput(logits=teacher(batch["input_ids"]))
            values, grads = [], []
            logits = student(batch["input_ids"])
            for kd, teacher_out in ((full_kd, live), (cached_kd, cached_teacher_output(batch))):
                student.zero_grad()
                loss = kd(ModelOutput(logits=logits), teacher_out, batch)
                loss.backward(retain_graph=True)
                values.append(float(loss.detach()))
                grads.append(torch.cat([p.grad.flatten() for p in student.parameters()]))
            gaps.append((values[1] - values[0]) / values[0])
            cosines.append(float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)))
        out["tail" if tail else "renormalised"] = {
            "gap": sum(gaps) / len(gaps),
            "cosine": sum(cosines) / len(cosines),
            "cosine_min": min(cosines),
        }
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet(args.threads)
    start = time.time()
    data = text_data(args)
    teacher, teacher_ppl = text_teacher(args, data)
    ks = [int(k) for k in args.ks.split(",")]
    caches = {k: Path(args.work) / f"top{k}" for k in ks}
    for k, folder in caches.items():
        write_cache(teacher, data, folder, k, args)
    print(f"teacher val ppl {teacher_ppl:.3f}; caches written in {time.time() - start:.0f} s", flush=True)

    modes = ("tail", "renormalised")
    variants = [("full logits", None, None)] + [(f"top-{k} {m}", k, m == "tail") for k in ks for m in modes]
    fresh = text_student(1, args)  # seed 1's student before training, for the gap table
    runs, gaps = [], {}
    for seed in range(1, args.seeds + 1):
        for name, k, tail in variants:
            kd = TokenKD(args.divergence, topk_tail=bool(tail))
            live = k is None
            run_data = data if live else CachedTeacherDataModule(data, str(caches[k]), splits=["train", "val"])
            module = DistillationModule(
                student=text_student(seed, args), teacher=teacher if live else CachedTeacher(), losses=[kd],
                optimizer=adamw(args.lr),
            )  # fmt: skip
            ppl = fit_then_validate(module, run_data, args.student_epochs, seed, args)["val/student_ppl"]
            runs.append({"seed": seed, "variant": name, "val_ppl": ppl})
            print(f"seed {seed} {name}: val ppl {ppl:.3f}", flush=True)
            if seed == 1 and k is None:
                for k2, folder in caches.items():
                    cached = CachedTeacherDataModule(data, str(folder), splits=["train", "val"])
                    cached.setup("validate")
                    gaps[k2] = {
                        "fresh": gap_and_cosine(fresh, teacher, cached, args),
                        "trained": gap_and_cosine(module.student, teacher, cached, args),
                    }

    print(f"\n{args.divergence}, {args.seeds} seeds, student epochs {args.student_epochs}; {args.accelerator}, "
          f"{args.threads} threads; {time.time() - start:.0f} s in all\n")  # fmt: skip
    print("| k | teacher side | loss gap, fresh student | loss gap, trained | grad cosine, fresh | grad cosine, "
          "trained (min) | student val ppl |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    full = [r["val_ppl"] for r in runs if r["variant"] == "full logits"]
    print(f"| all | full logits | 0 | 0 | 1 | 1 | {mean_std_text(full)} |")
    for k in ks:
        for mode in ("tail", "renormalised"):
            f, t = gaps[k]["fresh"][mode], gaps[k]["trained"][mode]
            ppl = mean_std_text([r["val_ppl"] for r in runs if r["variant"] == f"top-{k} {mode}"])
            print(f"| {k} | {mode} | {f['gap']:+.2%} | {t['gap']:+.2%} | {f['cosine']:.4f} | "
                  f"{t['cosine']:.4f} ({t['cosine_min']:.4f}) | {ppl} |")  # fmt: skip
    result = {"args": vars(args), "teacher_ppl": teacher_ppl, "gaps": gaps, "runs": runs}
    print_json(result, to=args.json)


if __name__ == "__main__":
    main()
