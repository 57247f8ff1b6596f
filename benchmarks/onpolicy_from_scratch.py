"""Why the old configs/text/on_policy.yaml (on-policy GKD from a random student) ended writing only spaces.

Trains the recipe's 1-layer student from scratch for the recipe's 3 epochs (165 steps of 16 prompts, lr 3e-3) with
each objective on the embedded pydoc prompt set and reports, on the held-out prompts: perplexity of the references,
``agreement`` (share of positions where student and teacher pick the same next byte), ``space argmax`` (share of
positions where the student's most likely next byte is a space) and the first greedy continuation. The byte
unigram perplexity of the references (a model that ignores context) is printed as the floor of a context-free
student.

    python benchmarks/onpolicy_from_scratch.py --teacher /tmp/teacher
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import warnings

import torch
from generation_kd import STUDENT, optimizer, train_teacher, trainer
from lightning.pytorch import seed_everything

from lit_distill import CrossEntropy, DistillationModule
from lit_distill.data import PromptDataModule
from lit_distill.generation import IGNORE_INDEX, OnPolicyDistillationModule, generate, prompts_from_batch
from lit_distill.losses import TokenKD
from lit_distill.models import GPT

VARIANTS = {
    "CE (references)": None,
    "token KD forward KL, lmbda 0": ("forward_kl", 0.0),
    "token KD JSD(0.5), lmbda 0": ("jsd", 0.0),
    "on-policy JSD(0.5), lmbda 0.5 (old recipe)": ("jsd", 0.5),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=None, help="teacher folder (GPT.save_pretrained); trained and saved if absent")
    p.add_argument("--teacher-steps", type=int, default=1200)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--accelerator", default="cpu")
    return p.parse_args()


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


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*|.*LeafSpec.*|.*modules in eval mode.*")
    teacher = train_teacher(args).eval()
    val = PromptDataModule(batch_size=32, seed=0)
    val.setup()
    steps = args.epochs * math.ceil(len(val.splits["train"]) / 16)
    print(f"byte unigram perplexity of the held-out references: {unigram_ppl(val):.2f}; {steps} steps per variant")
    print(f"teacher: {inspect(teacher, teacher, val)}")
    for name, kd in VARIANTS.items():
        seed_everything(1, verbose=False)
        student = GPT(**STUDENT)
        if kd is None:
            module = DistillationModule(student=student, losses=[CrossEntropy()], optimizer=optimizer(args.lr))
        else:
            module = OnPolicyDistillationModule(
                student=student,
                teacher=teacher,
                losses=[TokenKD(divergence=kd[0], beta=0.5)],
                lmbda=kd[1],
                seed=1,
                optimizer=optimizer(args.lr),
            )
        trainer(args.accelerator, max_steps=steps).fit(module, datamodule=PromptDataModule(batch_size=16, seed=0))
        print(f"{name:45s} {inspect(student, teacher, val)}", flush=True)


if __name__ == "__main__":
    main()
