"""Distill, then quantize: a KD student quantized after training (PTQ) against the same student distilled under
fake quantization (QAD), same steps, several seeds; and the size of each export on disk.

Per seed, on the text recipe (configs/text/qad_int4.yaml: the tiny pydoc GPT teacher, a 2-layer 64-wide GPT
student, TokenKD) and on digits (configs/digits/qad.yaml: MLP teacher, 32-wide MLP student, logit KD + CE):
* ``bf16``: the KD student (trained in fp32), evaluated in bf16;
* ``PTQ <scheme>``: that student quantized with torchao after training;
* ``QAD <scheme>``: an identically initialised student (same seed, same batches, same steps) trained with
  :class:`~lit_distill.quantization.QuantizationAwareDistillation` and converted.
Quantized students are evaluated on the CPU as torchao computes them there: int4 weights dequantized into the matmul
(bf16), which is numerically what an int4 GPU kernel computes up to accumulation order. Text: held-out bits per byte
(validation NLL per byte token / ln 2); digits: validation accuracy and NLL. Recovered share of the PTQ loss:
``(PTQ - QAD) / (PTQ - bf16)``. Sizes: safetensors files of the bf16 student and each quantized export.

    python -m benchmarks.quality.qad --task text --seeds 3 --out benchmarks/results/qad
    python -m benchmarks.quality.qad --task digits --seeds 3 --out benchmarks/results/qad
    python -m benchmarks.quality.qad --smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import seed_everything

from benchmarks._lib.timing import mean_std_text
from benchmarks._lib.trainers import adamw, parse, parser, print_json, quiet, quiet_trainer
from lit_distill import CrossEntropy, DistillationModule, LogitKD
from lit_distill.data import DigitsDataModule, TextDataModule
from lit_distill.losses import TokenKD
from lit_distill.models import GPT, MLP
from lit_distill.quantization import QuantizationAwareDistillation, quantize_model, save_quantized
from lit_distill.quantization.schemes import get_scheme

TEXT_TEACHER = {"n_layer": 3, "n_embd": 96, "n_head": 4, "tokenizer_id": "bytes"}
TEXT_STUDENT = {"n_layer": 2, "n_embd": 64, "n_head": 2, "tokenizer_id": "bytes"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--task", choices=["text", "digits"], default="text")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--schemes", default="int4_weight_only,int8_dynamic_int4_weight", help="comma-separated")
    p.add_argument("--group-size", type=int, default=None, help="default: 32 (text), 16 (digits), as the recipes")
    p.add_argument("--epochs", type=int, default=None, help="student epochs (default: the recipe's, 2 / 20)")
    p.add_argument("--teacher-epochs", type=int, default=None, help="default: the teacher recipe's, 6 / 30")
    p.add_argument("--limit-batches", type=int, default=None, help="batches per epoch and validation (all)")
    p.add_argument(
        "--qad-start",
        type=float,
        default=0.5,
        help="share of the steps trained in full precision before fake quantization switches on",
    )
    p.add_argument("--teacher-dir", default=None, help="reuse the teacher saved here (trained and saved if absent)")
    p.add_argument("--out", default=None, help="folder for the exports (sizes) and result.json")
    p.add_argument("--threads", type=int, default=1)
    return parse(p, argv, seeds=1, epochs=1, teacher_epochs=1, limit_batches=2, schemes="int4_weight_only")


def trainer(args: argparse.Namespace, **kwargs):
    limit = {"limit_train_batches": args.limit_batches, "limit_val_batches": args.limit_batches}
    return quiet_trainer(accelerator="cpu", **{**(limit if args.limit_batches else {}), **kwargs})


def fit(module: DistillationModule, data, epochs: int, seed: int, args, callbacks=()) -> None:
    seed_everything(seed, verbose=False)  # the same batch order for every run of this seed
    trainer(args, max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0, callbacks=list(callbacks)).fit(
        module, data
    )


class InDtype(torch.nn.Module):
    """``model`` fed its floating inputs in ``dtype`` (digits features are fp32; a bf16 student reads bf16)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype) if x.is_floating_point() else x)


def score(model: torch.nn.Module, data, args) -> dict[str, float]:
    """Held-out quality of ``model`` as it is (dtype, quantization): text bits per byte, digits accuracy + NLL."""
    if args.task == "digits":
        model = InDtype(model, torch.bfloat16)
    (m,) = trainer(args).validate(DistillationModule(student=model, losses=[CrossEntropy()]), data, verbose=False)
    if args.task == "text":
        return {"bpb": math.log(m["val/student_ppl"]) / math.log(2)}
    return {"acc": m["val/student_acc"], "nll": m["val/loss"]}


def setting(args: argparse.Namespace):
    """Data, a teacher factory, a student factory and the losses of the task's recipe."""
    if args.task == "text":
        data = TextDataModule(seq_len=128, batch_size=8, seed=0)
        return (
            data,
            lambda: GPT(block_size=128, **TEXT_TEACHER),
            lambda: GPT(block_size=128, **TEXT_STUDENT),
            (lambda: [TokenKD("forward_kl", temperature=1.0)]),
        )
    data = DigitsDataModule(batch_size=64, seed=0)
    teacher = lambda: MLP(64, [256, 256], 10, dropout=0.1)  # noqa: E731
    kd = lambda: [LogitKD(temperature=4.0, weight=0.9), CrossEntropy(weight=0.1)]  # noqa: E731
    return data, teacher, lambda: MLP(64, [32], 10), kd


def teacher_model(args, data, build):
    path = Path(args.teacher_dir) / "teacher.pt" if args.teacher_dir else None
    seed_everything(0, verbose=False)
    teacher = build()
    if path is not None and path.is_file():
        teacher.load_state_dict(torch.load(path, weights_only=True))
        return teacher.eval()
    run = DistillationModule(student=teacher, losses=[CrossEntropy()], optimizer=adamw(3e-3 if args.task == "text"
                                                                                        else 1e-3))  # fmt: skip
    fit(run, data, args.teacher_epochs, 0, args)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(teacher.state_dict(), path)
    return teacher.eval()


def export_size(model: torch.nn.Module, folder: Path, record: dict | None) -> int:
    """Bytes of the model's safetensors export (bf16 plain, or quantized with packed int4)."""
    if record is None:
        from lit_distill.export import save_state

        return save_state(model.state_dict(), folder / "model.safetensors", overwrite=True).stat().st_size
    return (save_quantized(model, folder, record, overwrite=True) / "model.safetensors").stat().st_size


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet(args.threads)
    text = args.task == "text"
    args.group_size = args.group_size or (32 if text else 16)
    args.epochs = args.epochs or (2 if text else 20)
    args.teacher_epochs = args.teacher_epochs or (6 if text else 30)
    schemes = [get_scheme(s) for s in args.schemes.split(",")]
    out = Path(args.out or "qad_results") / args.task
    start = time.time()
    data, build_teacher, build_student, losses = setting(args)
    teacher = teacher_model(args, data, build_teacher)
    teacher_score = score(copy.deepcopy(teacher).to(torch.bfloat16), data, args)
    print(f"{args.task} teacher (bf16): {teacher_score}", flush=True)
    lr = 3e-3
    rows, sizes = [], {}
    for seed in range(1, args.seeds + 1):
        row: dict = {"seed": seed}
        seed_everything(seed, verbose=False)
        student = build_student()
        initial = copy.deepcopy(student.state_dict())
        fit(DistillationModule(student=student, teacher=teacher, losses=losses(), optimizer=adamw(lr)), data,
            args.epochs, seed, args)  # fmt: skip
        bf16 = copy.deepcopy(student).to(torch.bfloat16)
        row["bf16"] = score(bf16, data, args)
        if seed == 1:
            sizes["bf16"] = export_size(bf16, out / "bf16", None)
        for scheme in schemes:
            ptq = copy.deepcopy(bf16)
            layers = quantize_model(ptq, scheme, args.group_size)
            row[f"PTQ {scheme.name}"] = score(ptq, data, args)
            if seed == 1:
                sizes[scheme.name] = export_size(ptq, out / scheme.name, {"scheme": scheme.name, "layers": layers})
            qad_student = build_student()
            qad_student.load_state_dict(initial)
            steps = args.epochs * (args.limit_batches or len(data.train_dataloader()))
            qad_from = int(args.qad_start * steps)
            qad = QuantizationAwareDistillation(scheme.name, args.group_size, start_step=qad_from, export=False)
            module = DistillationModule(student=qad_student, teacher=teacher, losses=losses(), optimizer=adamw(lr))
            fit(module, data, args.epochs, seed, args, callbacks=[qad])
            converted = copy.deepcopy(qad_student).to(torch.bfloat16)
            quantize_model(converted, scheme, args.group_size)  # a fake-quantized student: its conversion
            row[f"QAD {scheme.name}"] = score(converted, data, args)
        rows.append(row)
        print(f"seed {seed}: {json.dumps(row)}", flush=True)
    report(args, rows, sizes, teacher_score, schemes, time.time() - start, out)


def report(args, rows, sizes, teacher_score, schemes, seconds, out: Path) -> None:
    key = "bpb" if args.task == "text" else "nll"
    print(f"\n{args.task}: {args.seeds} seeds, {args.epochs} student epochs (QAD: fake quantization after "
          f"{args.qad_start:.0%} of the steps), group size {args.group_size}, CPU "
          f"{args.threads} thread(s), {seconds:.0f} s; teacher {teacher_score}")  # fmt: skip
    names = ["bf16"] + [f"{kind} {s.name}" for s in schemes for kind in ("PTQ", "QAD")]
    metrics = ["bpb"] if args.task == "text" else ["acc", "nll"]
    print("\n| student | " + " | ".join(f"{m} (mean ± std)" for m in metrics) + " | per seed |")
    print("|---|" + "---|" * (len(metrics) + 1))
    for name in names:
        cells = [mean_std_text([r[name][m] for r in rows], 4) for m in metrics]
        seeds = ", ".join(f"{r[name][key]:.4f}" for r in rows)
        print(f"| {name} | " + " | ".join(cells) + f" | {seeds} |")
    recovered = {}
    for s in schemes:
        shares = []
        for r in rows:
            lost = r[f"PTQ {s.name}"][key] - r["bf16"][key]
            shares.append((r[f"PTQ {s.name}"][key] - r[f"QAD {s.name}"][key]) / lost if lost > 0 else float("nan"))
        recovered[s.name] = shares
        print(f"\n{s.name}: QAD recovers (PTQ - QAD) / (PTQ - bf16) of {key} = "
              f"{', '.join(f'{x:.2f}' for x in shares)} (seeds 1..{len(rows)}); >= 0.5 in "
              f"{sum(x >= 0.5 for x in shares)}/{len(shares)}")  # fmt: skip
    print("\n| export | bytes | vs bf16 |\n|---|---|---|")
    for name, size in sizes.items():
        print(f"| {name} | {size} | {size / sizes['bf16']:.3f}x |")
    result = {"args": vars(args), "teacher": teacher_score, "rows": rows, "recovered": recovered, "sizes": sizes}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print_json(result)


if __name__ == "__main__":
    main()
