"""Does the teacher's soft signal help? The same small student on digits, with and without KD.

    python -m benchmarks.quality.digits_kd_vs_scratch --seeds 5 [--plot benchmarks/results/digits_kd_vs_scratch.png]
    python -m benchmarks.quality.digits_kd_vs_scratch --smoke     # 1 seed, 2 epochs, the plot drawn and dropped

Trains the teacher once (no KD), then per seed the student from scratch (hard labels) and with
Hinton KD (soft targets at temperature T plus a small hard-label term). Test accuracy on the held-out
digits split. The last printed line is JSON.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import Callback, seed_everything

from benchmarks._lib.timing import mean_std
from benchmarks._lib.trainers import adamw, parse, parser, print_json, quiet, quiet_trainer
from lit_distill import CrossEntropy, DistillationModule, LogitKD
from lit_distill.data import DigitsDataModule
from lit_distill.models import MLP


class ValCurve(Callback):
    def __init__(self) -> None:
        self.acc: list[float] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.acc.append(float(trainer.callback_metrics["val/student_acc"]))


def fit(module: DistillationModule, data: DigitsDataModule, epochs: int, val_every: int) -> tuple[float, list[float]]:
    curve = ValCurve()
    trainer = quiet_trainer(accelerator="cpu", max_epochs=epochs, check_val_every_n_epoch=val_every, callbacks=[curve])
    trainer.fit(module, data)
    test = trainer.test(module, data, verbose=False)[0]
    return test["test/student_acc"], curve.acc


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--teacher-epochs", type=int, default=40)
    p.add_argument("--student-hidden", type=int, nargs="*", default=[32])
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9, help="weight of the KD term; 1-alpha on hard labels")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--train-samples",
        type=int,
        default=150,
        help="labelled samples the student sees (0 = the whole training split)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--val-every", type=int, default=5, help="validate every N epochs (the plotted curve)")
    p.add_argument("--plot", default=None, help="PNG path for validation accuracy per epoch")
    args = parse(p, argv, seeds=1, epochs=2, teacher_epochs=1, val_every=1)
    quiet()

    start = time.time()
    seed_everything(0)
    teacher = DistillationModule(student=MLP(64, [256, 256], 10, dropout=0.1), optimizer=adamw(1e-3))
    teacher_acc, teacher_curve = fit(teacher, DigitsDataModule(batch_size=64, seed=0), args.teacher_epochs, 1)
    data = DigitsDataModule(batch_size=args.batch_size, seed=0, train_samples=args.train_samples or None)
    teacher_net = teacher.student

    scratch, kd, curves = [], [], {"scratch": [], "kd": []}
    for seed in range(args.seeds):
        seed_everything(seed)
        student = MLP(64, args.student_hidden, 10)
        acc, curve = fit(
            DistillationModule(student=student, optimizer=adamw(args.lr)), data, args.epochs, args.val_every
        )
        scratch.append(acc)
        curves["scratch"].append(curve)
        seed_everything(seed)
        student = MLP(64, args.student_hidden, 10)
        module = DistillationModule(
            student=student,
            teacher=MLP(64, [256, 256], 10, dropout=0.1),
            losses=[LogitKD(temperature=args.temperature, weight=args.alpha), CrossEntropy(weight=1 - args.alpha)],
            optimizer=adamw(args.lr),
        )
        module.teacher.load_state_dict(teacher_net.state_dict())
        acc, curve = fit(module, data, args.epochs, args.val_every)
        kd.append(acc)
        curves["kd"].append(curve)
        print(f"seed {seed}: scratch {scratch[-1]:.4f}  kd {kd[-1]:.4f}", flush=True)

    (scratch_mean, scratch_std), (kd_mean, kd_std) = mean_std(scratch), mean_std(kd)
    result = {
        "teacher_acc": teacher_acc,
        "scratch_acc_mean": scratch_mean,
        "scratch_acc_std": scratch_std,
        "kd_acc_mean": kd_mean,
        "kd_acc_std": kd_std,
        "seeds": args.seeds,
        "student_hidden": args.student_hidden,
        "student_params": sum(p.numel() for p in MLP(64, args.student_hidden, 10).parameters()),
        "teacher_params": sum(p.numel() for p in teacher_net.parameters()),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_samples": args.train_samples,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "seconds": round(time.time() - start, 1),
    }
    if args.plot:
        plot(args.plot, teacher_curve, curves, args.val_every)
    elif args.smoke:  # the plotting code runs too, into a folder that is then removed
        with tempfile.TemporaryDirectory() as tmp:
            plot(str(Path(tmp) / "curves.png"), teacher_curve, curves, args.val_every)
    print_json(result)


def plot(path: str, teacher_curve: list[float], curves: dict[str, list[list[float]]], every: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axhline(max(teacher_curve), label="teacher (best)", color="black", linestyle="--")
    for name, color in (("kd", "tab:blue"), ("scratch", "tab:orange")):
        runs = torch.tensor(curves[name])
        mean = runs.mean(0)
        x = [every * (i + 1) for i in range(len(mean))]
        ax.plot(x, mean, label=f"student {'with KD' if name == 'kd' else 'no KD'} (mean of {len(runs)})", color=color)
        ax.fill_between(x, runs.min(0).values, runs.max(0).values, color=color, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("digits: student on 150 labels, with and without KD")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
