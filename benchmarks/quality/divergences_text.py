"""Every TokenKD divergence on the text recipe, several seeds: held-out perplexity and the teacher's NLL of the
student's own samples.

The tiny GPT teacher of configs/text/teacher.yaml (trained once, or read from ``--teacher-dir``); for each seed, one
student per divergence, all starting from the same weights and seeing the same batches (configs/text/token_kd.yaml:
1 layer x 48, AdamW 3e-3, T=1). Reported per divergence, mean ± std over seeds: perplexity per byte on the corpus's
held-out split (a forward-KL-like measure), and on the held-out pydoc prompts the teacher's mean NLL per byte of
the student's own samples (T=1, up to ``--max-new`` bytes; what mode-seeking divergences aim for) with their
distinct 4-grams (a student that games the NLL by repeating itself shows), and the perplexity of the prompts'
reference answers. Nothing is downloaded.

    python -m benchmarks.quality.divergences_text --teacher-dir /tmp/teacher --seeds 3
    python -m benchmarks.quality.divergences_text --smoke       # 1 seed, a few batches: seconds
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from benchmarks._lib.pydoc_gpt import evaluate
from benchmarks._lib.text_recipe import add_recipe_args, fit_then_validate, text_data, text_student, text_teacher
from benchmarks._lib.timing import mean_std_text
from benchmarks._lib.trainers import adamw, parse, parser, print_json, quiet
from lit_distill import DistillationModule
from lit_distill.data import PromptDataModule
from lit_distill.losses import TokenKD

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "adaptive_kl"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__)
    add_recipe_args(p)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--divergences", default=",".join(DIVERGENCES), help="comma-separated TokenKD divergences")
    p.add_argument("--beta", type=float, default=0.5, help="JSD's beta")
    p.add_argument("--alpha", type=float, default=0.1, help="the skew divergences' alpha (DistiLLM)")
    p.add_argument("--head-mass", type=float, default=0.5, help="adaptive KL's mu (Wu et al. 2024)")
    p.add_argument("--max-new", type=int, default=64, help="bytes per student sample")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parse(p, argv, seeds=1, teacher_epochs=1, student_epochs=1, limit_batches=2, limit_val_batches=2, max_new=4)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet(args.threads)
    start = time.time()
    data = text_data(args)
    prompts = PromptDataModule(batch_size=32, seed=0)
    teacher, teacher_ppl = text_teacher(args, data)
    names = args.divergences.split(",")
    own = evaluate(teacher, teacher, prompts, 0, args.max_new)  # the teacher's own samples, for scale
    print(f"teacher val ppl {teacher_ppl:.3f}, NLL of its own samples {own['teacher_nll']:.3f}", flush=True)
    rows = []
    for seed in range(1, args.seeds + 1):
        for name in names:
            kd = TokenKD(name, beta=args.beta, alpha=args.alpha, head_mass=args.head_mass)
            student = text_student(seed, args)
            module = DistillationModule(student=student, teacher=teacher, losses=[kd], optimizer=adamw(args.lr))
            ppl = fit_then_validate(module, data, args.student_epochs, seed, args)["val/student_ppl"]
            scores = evaluate(student, teacher, prompts, seed, args.max_new)
            scores["prompt_ppl"] = scores.pop("val_ppl")  # of the prompts' reference answers
            rows.append({"seed": seed, "divergence": name, "heldout_ppl": ppl, **scores})
            print(f"seed {seed} {name}: val ppl {ppl:.3f}, teacher NLL of samples {scores['teacher_nll']:.3f}, "
                  f"distinct-4 {scores['distinct4']:.3f}", flush=True)  # fmt: skip
    print(
        f"\n{args.seeds} seeds; student epochs {args.student_epochs} of "
        f"{args.limit_batches or len(data.train_dataloader())} batches of {args.batch_size}x{args.seq_len} bytes; "
        f"beta={args.beta} alpha={args.alpha} head_mass={args.head_mass}; {args.accelerator}, {args.threads} "
        f"threads; {time.time() - start:.0f} s in all\n"
    )
    print("| divergence | held-out ppl | reference ppl (prompts) | teacher NLL of samples | distinct-4 |")
    print("|---|---|---|---|---|")
    print(
        f"| (teacher) | {teacher_ppl:.3f} | {own['val_ppl']:.3f} | {own['teacher_nll']:.3f} | {own['distinct4']:.3f} |"
    )
    for name in names:
        mine = [r for r in rows if r["divergence"] == name]
        keys = ("heldout_ppl", "prompt_ppl", "teacher_nll", "distinct4")
        cells = [mean_std_text([r[key] for r in mine]) for key in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    result = {"args": vars(args), "teacher_ppl": teacher_ppl, "teacher_own": own, "runs": rows}
    print_json(result, to=args.json)


if __name__ == "__main__":
    main()
