"""Cross-tokenizer KD vs. cross-entropy alone: a BPE teacher, a byte-level student, the same steps, several seeds.

A 1024-token byte-level BPE is trained on CPython's pydoc topics (offline, scripts/make_xtok_models.py). Every block
of the corpus is tokenized both ways (TextDataModule with ``teacher_tokenizer``), cut where both read the same text.
A BPE GPT teacher and, for the same-tokenizer reference, a byte-level GPT teacher of the same shape learn the train
blocks (the ones the students see; no teacher sees the held-out blocks). Then, per seed, identically initialised
byte-level students train for the same steps on the same batches with: cross-entropy alone; ULD + CE;
AlignedSpanKD (match=token, GOLD's hybrid) + CE; AlignedSpanKD (match=byte) + CE, all from the BPE teacher; and
TokenKD + CE from the byte-level teacher.

Reported per run, on held-out blocks: bits per byte of the text (both tokenizers cover the same bytes, so it
compares students, teachers and tokenizers) and the BPE teacher's NLL per byte of the student's own samples
(continuations of held-out prompts at temperature 1, tokenized for the teacher: lower means text the teacher finds
likelier), with the share of distinct byte 4-grams of those samples (a repetitive student would look good on NLL).

    python -m benchmarks.quality.cross_tokenizer --seeds 3 --json benchmarks/results/cross_tokenizer_cpu.json
    python -m benchmarks.quality.cross_tokenizer --smoke     # 1 seed, a few steps: seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import seed_everything

from benchmarks._lib.timing import mean_std_text
from benchmarks._lib.trainers import adamw, parse, parser, print_json, quiet, quiet_trainer
from lit_distill import CrossEntropy, DistillationModule
from lit_distill.batch import teacher_view
from lit_distill.data import TextDataModule
from lit_distill.data.cross_tokenizer import EOS, tokenize
from lit_distill.generation import generate
from lit_distill.losses import ULD, AlignedSpanKD, TokenKD
from lit_distill.models import GPT

ROOT = Path(__file__).resolve().parents[2]
TEACHER = {"n_layer": 3, "n_embd": 96, "n_head": 4}
STUDENT = {"n_layer": 1, "n_embd": 48, "n_head": 2}
RUNS = ("ce", "uld", "span_token", "span_byte", "token_kd")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--teacher-steps", type=int, default=3000)
    p.add_argument("--student-steps", type=int, default=800)
    p.add_argument("--seq-len", type=int, default=256, help="student bytes per block at most")
    p.add_argument("--teacher-seq-len", type=int, default=128, help="teacher (BPE) tokens per block at most")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary size")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--prompt-bytes", type=int, default=64, help="bytes of a held-out block given as the prompt")
    p.add_argument("--sample-bytes", type=int, default=128, help="bytes the student samples after each prompt")
    p.add_argument("--eval-blocks", type=int, default=None, help="held-out blocks scored (all)")
    p.add_argument("--work", default="artifacts/xtok_bench", help="tokenizer and teachers are kept (and reused) here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    smoke = {"seeds": 1, "teacher_steps": 3, "student_steps": 3, "eval_blocks": 8, "vocab": 300, "work": None}
    return parse(p, argv, **smoke)


class OneSide(TextDataModule):
    """The two-sided blocks (same splits), each batch reduced to one side: ``student`` or ``teacher`` tokens."""

    def __init__(self, side: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.side = side

    @property
    def vocab_size(self) -> int:  # what the models reading this side must embed (student and teacher alike)
        return (self.teacher_tokenizer if self.side == "teacher" else self.tokenizer).vocab_size

    @property
    def tokenizer_id(self) -> str:
        return (self.teacher_tokenizer if self.side == "teacher" else self.tokenizer).tokenizer_id

    teacher_vocab_size = vocab_size  # one tokenization per batch: a teacher reads what the student reads
    teacher_tokenizer_id = tokenizer_id

    def collate_both(self, rows):
        batch = super().collate_both(rows)
        return teacher_view(batch) if self.side == "teacher" else {k: v for k, v in batch.items() if "teacher" not in k}


def bpe_tokenizer(work: Path, vocab: int, smoke: bool) -> str:
    folder = work / f"bpe{vocab}"
    if not (folder / "tokenizer.json").is_file():
        spec = importlib.util.spec_from_file_location("make_xtok", ROOT / "scripts" / "make_xtok_models.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        script.byte_level_bpe(vocab, script._texts(40 if smoke else None)).save_pretrained(str(folder))
    return str(folder)


def fit(module: DistillationModule, data: TextDataModule, steps: int, seed: int) -> None:
    seed_everything(seed, verbose=False)  # the same batches for every run of one seed
    quiet_trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0).fit(module, data)


def teacher(kind: str, data: TextDataModule, vocab: int, block: int, args: argparse.Namespace, work: Path | None):
    """A ``TEACHER``-shaped GPT trained with cross-entropy on one side of the blocks (reused from ``work``)."""
    folder = None if work is None else work / f"teacher_{kind}_{args.teacher_steps}"
    if folder is not None and (folder / "config.json").is_file():
        return GPT.from_pretrained(folder).eval()
    seed_everything(0, verbose=False)
    model = GPT(vocab_size=vocab, block_size=block, **TEACHER, tokenizer_id="bytes" if kind == "bytes" else None)
    fit(
        DistillationModule(student=model, losses=[CrossEntropy()], optimizer=adamw(args.lr)),
        data,
        args.teacher_steps,
        0,
    )
    if folder is not None:
        model.save_pretrained(folder, overwrite=True)
    return model.eval()


@torch.no_grad()
def bits_per_byte(model: GPT, data: TextDataModule, prefix: str, limit: int | None) -> float:
    """Held-out next-token NLL in bits over the bytes the predicted tokens hold (one side of the two-sided blocks)."""
    nll = size = 0.0
    for batch in data.val_dataloader():
        ids, labels, offsets = (batch[f"{prefix}{k}"] for k in ("input_ids", "labels", "offsets"))
        logits = model(ids, batch[f"{prefix}attention_mask"])[..., : model.vocab_size].float()
        targets = labels[:, 1:]
        nll += float(torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="sum"))
        size += float(((offsets[:, 1:, 1] - offsets[:, 1:, 0]) * (targets != -100)).sum())
        limit = None if limit is None else limit - len(ids)
        if limit is not None and limit <= 0:
            break
    return nll / math.log(2) / size


@torch.no_grad()
def sample_scores(student: GPT, teacher: GPT, data: TextDataModule, seed: int, args) -> dict:
    """The BPE teacher's NLL per byte of the student's continuations of held-out prompts; their distinct 4-grams."""
    nll = size = 0.0
    grams: list[bytes] = []
    eos, t_tok = data.tokenizer.eos_id, data.teacher_tokenizer
    for i, batch in enumerate(data.val_dataloader()):
        if args.eval_blocks is not None and i * args.batch_size >= args.eval_blocks:
            break
        prompts = batch["input_ids"][:, : args.prompt_bytes]
        out = generate(student, prompts, max_new_tokens=args.sample_bytes, temperature=1.0, seed=seed * 1000 + i,
                       eos_token_id=eos, pad_token_id=eos)  # fmt: skip
        for row, prompt in zip(out.tolist(), prompts.tolist()):
            new = row[len(prompt) :]
            tail = bytes(new[: next((j for j, t in enumerate(new) if t >= 256), len(new))])  # up to eos (or pad)
            text = tail.decode("utf-8", "replace")
            if not text or data.tokenizer.pad_id in prompt:
                continue
            side = tokenize(t_tok, [*_pieces(prompt, eos), (text, True)])
            ids, labels = (
                torch.tensor([side.ids[-teacher.block_size :]]),
                torch.tensor(side.labels[-teacher.block_size :]),
            )
            logits = teacher(ids)[0, :-1, : teacher.vocab_size].float()
            nll += float(torch.nn.functional.cross_entropy(logits, labels[1:], reduction="sum"))
            size += len(text.encode("utf-8"))
            grams += [tail[j : j + 4] for j in range(len(tail) - 3)]
    return {"teacher_nll_per_byte": nll / max(size, 1), "distinct4": len(set(grams)) / max(len(grams), 1)}


def _pieces(ids: list[int], eos: int) -> list[tuple[str | None, bool]]:
    """A byte prompt as the pieces of :func:`lit_distill.data.cross_tokenizer.tokenize`: its text, and its eos tokens
    (documents end inside blocks) as each tokenizer's own eos; nothing of it is scored."""
    pieces, run = [], []
    for t in [*ids, None]:
        if t is None or t == eos:
            pieces += [(bytes(run).decode("utf-8", "replace"), False)] if run else []
            pieces += [(EOS, False)] if t == eos else []
            run = []
        else:
            run.append(t)
    return pieces


def losses(name: str):
    return {
        "ce": [CrossEntropy()],
        "uld": [ULD(lm_weight=1.0)],
        "span_token": [AlignedSpanKD(match="token", lm_weight=1.0)],
        "span_byte": [AlignedSpanKD(match="byte", lm_weight=1.0)],
        "token_kd": [TokenKD(lm_weight=1.0)],
    }[name]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet(args.threads)
    start = time.time()
    scratch = tempfile.TemporaryDirectory()
    work = Path(args.work) if args.work else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    bpe = bpe_tokenizer(work or Path(scratch.name), args.vocab, args.smoke)
    shape = dict(tokenizer="bytes", teacher_tokenizer=bpe, seq_len=args.seq_len, teacher_seq_len=args.teacher_seq_len,
                 batch_size=args.batch_size, seed=0)  # fmt: skip
    both = TextDataModule(**shape)
    bytes_only, bpe_only = OneSide("student", **shape), OneSide("teacher", **shape)
    for dm in (both, bytes_only, bpe_only):
        dm.setup()
    bpe_teacher = teacher(f"bpe{args.vocab}", bpe_only, args.vocab, args.teacher_seq_len, args, work)
    byte_teacher = teacher("bytes", bytes_only, 258, args.seq_len, args, work)
    teachers = {
        "bpe": bits_per_byte(bpe_teacher, both, "teacher_", args.eval_blocks),
        "bytes": bits_per_byte(byte_teacher, both, "", args.eval_blocks),
    }
    print(f"teachers {TEACHER}, {args.teacher_steps} steps: held-out bits/byte {teachers}", flush=True)

    rows = []
    for seed in range(1, args.seeds + 1):
        for name in RUNS:
            seed_everything(seed, verbose=False)
            student = GPT(vocab_size=258, block_size=args.seq_len, **STUDENT, tokenizer_id="bytes")  # same start
            t = {"ce": None, "token_kd": byte_teacher}.get(name, bpe_teacher)
            data = bytes_only if name in ("ce", "token_kd") else both
            module = DistillationModule(student=student, teacher=t, losses=losses(name), optimizer=adamw(args.lr))
            fit(module, data, args.student_steps, seed)
            student.eval()
            row = {"seed": seed, "run": name, "bits_per_byte": bits_per_byte(student, both, "", args.eval_blocks)}
            row.update(sample_scores(student, bpe_teacher, both, seed, args))
            rows.append(row)
            scores = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("seed", "run"))
            print(f"seed {seed} {name:>10}: {scores}", flush=True)

    print(
        f"\nbyte-level student {STUDENT}, {args.student_steps} steps of {args.batch_size} blocks (<= {args.seq_len} "
        f"bytes, <= {args.teacher_seq_len} teacher tokens of a {args.vocab}-token BPE), lr {args.lr}; "
        f"{len(both.splits['val'])} held-out blocks; CPU, {args.threads} thread(s); {time.time() - start:.0f} s in all"
    )
    print("\n| run | held-out bits/byte | BPE teacher's NLL/byte of samples | distinct 4-grams | beats CE (bpb, NLL) |")
    print("|---|---|---|---|---|")
    ce = {r["seed"]: r for r in rows if r["run"] == "ce"}
    for name in RUNS:
        mine = [r for r in rows if r["run"] == name]
        wins = [sum(r[k] < ce[r["seed"]][k] for r in mine) for k in ("bits_per_byte", "teacher_nll_per_byte")]
        cells = [mean_std_text([r[k] for r in mine]) for k in ("bits_per_byte", "teacher_nll_per_byte", "distinct4")]
        print(f"| {name} | {' | '.join(cells)} | {wins[0]}/{len(mine)}, {wins[1]}/{len(mine)} |")
    print(f"| teacher (BPE / bytes) | {teachers['bpe']:.3f} / {teachers['bytes']:.3f} | | | |")
    result = {"args": vars(args), "teachers_bits_per_byte": teachers, "runs": rows}
    scratch.cleanup()
    print_json(result, to=args.json)


if __name__ == "__main__":
    main()
