"""Does the teacher's soft signal help? The same small student on digits, with and without KD.

    python benchmarks/digits_kd_vs_scratch.py --seeds 5 [--plot benchmarks/results/digits_kd_vs_scratch.png]

Trains the teacher once (no KD), then per seed the student from scratch (hard labels) and with
Hinton KD (soft targets at temperature T plus a small hard-label term). Test accuracy on the held-out
digits split. The last printed line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lit_distill import CrossEntropy, DistillationModule, LogitKD
from lit_distill.data import DigitsDataModule
from lit_distill.models import MLP

warnings.filterwarnings("ignore")


class ValCurve(Callback):
    def __init__(self) -> None:
        self.acc: list[float] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.acc.append(float(trainer.callback_metrics["val/student_acc"]))


def fit(module: DistillationModule, data: DigitsDataModule, epochs: int, val_every: int) -> tuple[float, list[float]]:
    curve = ValCurve()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        check_val_every_n_epoch=val_every,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[curve],
    )
    trainer.fit(module, data)
    test = trainer.test(module, data, verbose=False)[0]
    return test["test/student_acc"], curve.acc


def adamw(lr: float):
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--teacher-epochs", type=int, default=40)
    parser.add_argument("--student-hidden", type=int, nargs="*", default=[32])
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9, help="weight of the KD term; 1-alpha on hard labels")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--train-samples",
        type=int,
        default=150,
        help="labelled samples the student sees (0 = the whole training split)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--val-every", type=int, default=5, help="validate every N epochs (the plotted curve)")
    parser.add_argument("--plot", default=None, help="PNG path for validation accuracy per epoch")
    args = parser.parse_args()

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

    def std(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    result = {
        "teacher_acc": teacher_acc,
        "scratch_acc_mean": statistics.mean(scratch),
        "scratch_acc_std": std(scratch),
        "kd_acc_mean": statistics.mean(kd),
        "kd_acc_std": std(kd),
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
    print(json.dumps(result))


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
