"""Why the old configs/text/on_policy.yaml (on-policy GKD from a random student) ended writing only spaces.

Trains the recipe's 1-layer student from scratch for the recipe's 3 epochs (165 steps of 16 prompts, lr 3e-3) with
each objective on the embedded pydoc prompt set and reports, on the held-out prompts: perplexity of the references,
``agreement`` (share of positions where student and teacher pick the same next byte), ``space argmax`` (share of
positions where the student's most likely next byte is a space) and the first greedy continuation. The byte
unigram perplexity of the references (a model that ignores context) is printed as the floor of a context-free
student.

    python -m benchmarks.quality.onpolicy_from_scratch --teacher /tmp/teacher
    python -m benchmarks.quality.onpolicy_from_scratch --smoke      # a few steps per variant: seconds
"""

from __future__ import annotations

import argparse
import collections
import math
from collections.abc import Sequence

import torch
from lightning.pytorch import seed_everything

from benchmarks._lib.pydoc_gpt import STUDENT, train_teacher, trainer
from benchmarks._lib.trainers import adamw, parse, parser, print_json, quiet
from lit_distill import CrossEntropy, DistillationModule
from lit_distill.data import PromptDataModule
from lit_distill.generation import OnPolicyDistillationModule, generate
from lit_distill.generation.sampling import IGNORE_INDEX, prompts_from_batch
from lit_distill.losses import TokenKD
from lit_distill.models import GPT

VARIANTS = {
    "CE (references)": None,
    "token KD forward KL, lmbda 0": ("forward_kl", 0.0),
    "token KD JSD(0.5), lmbda 0": ("jsd", 0.0),
    "on-policy JSD(0.5), lmbda 0.5 (old recipe)": ("jsd", 0.5),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--teacher", default=None, help="teacher folder (GPT.save_pretrained); trained and saved if absent")
    p.add_argument("--teacher-steps", type=int, default=1200)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="steps per variant (default: --epochs over the prompts)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--accelerator", default="cpu")
    return parse(p, argv, teacher_steps=2, steps=2)


@torch.no_grad()
def inspect(student: GPT, teacher: GPT, val: PromptDataModule) -> dict[str, float | str]:
    student.eval()
    nll = count = agree = space = 0.0
    for batch in val.val_dataloader():
        logits = student(batch["input_ids"], batch["attention_mask"])[:, :-1, : student.vocab_size].float()
        t_pick = teacher(batch["input_ids"], batch["attention_mask"])[:, :-1, : student.vocab_size].argmax(-1)
        targets = batch["labels"][:, 1:]
        counted = targets != IGNORE_INDEX
        nll += float(torch.nn.functional.cross_entropy(logits[counted], targets[counted], reduction="sum"))
        pick = logits.argmax(-1)[counted]
        count += float(counted.sum())
        agree += float((pick == t_pick[counted]).sum())
        space += float((pick == ord(" ")).sum())
    batch = next(iter(val.val_dataloader()))
    ids, mask = prompts_from_batch(batch, val.tokenizer.pad_id)
    out = generate(student, ids[:1], mask[:1], max_new_tokens=40, temperature=0.0, eos_token_id=val.tokenizer.eos_id)
    return {
        "val_ppl": math.exp(nll / count),
        "agreement": agree / count,
        "space_argmax": space / count,
        "greedy": val.tokenizer.decode(out[0, ids.shape[1] :].tolist()),
    }


def unigram_ppl(val: PromptDataModule) -> float:
    """Perplexity of the val references under the byte frequencies of the train references (add-one smoothed)."""
    train = collections.Counter(b for p, r in val.splits["train"] for b in r.encode("utf-8"))
    total = sum(train.values()) + 256
    test = [b for p, r in val.splits["val"] for b in r.encode("utf-8")]
    return math.exp(-sum(math.log((train[b] + 1) / total) for b in test) / len(test))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet(threads=1)
    teacher = train_teacher(args).eval()
    val = PromptDataModule(batch_size=32, seed=0)
    val.setup()
    steps = args.steps or args.epochs * math.ceil(len(val.splits["train"]) / 16)
    print(f"byte unigram perplexity of the held-out references: {unigram_ppl(val):.2f}; {steps} steps per variant")
    results = {"unigram_ppl": unigram_ppl(val), "steps": steps, "teacher": inspect(teacher, teacher, val)}
    print(f"teacher: {results['teacher']}")
    for name, kd in VARIANTS.items():
        seed_everything(1, verbose=False)
        student = GPT(**STUDENT)
        if kd is None:
            module = DistillationModule(student=student, losses=[CrossEntropy()], optimizer=adamw(args.lr))
        else:
            module = OnPolicyDistillationModule(
                student=student,
                teacher=teacher,
                losses=[TokenKD(divergence=kd[0], beta=0.5)],
                lmbda=kd[1],
                seed=1,
                optimizer=adamw(args.lr),
            )
        trainer(args.accelerator, max_steps=steps).fit(module, datamodule=PromptDataModule(batch_size=16, seed=0))
        results[name] = inspect(student, teacher, val)
        print(f"{name:45s} {results[name]}", flush=True)
    print_json(results)


if __name__ == "__main__":
    main()
