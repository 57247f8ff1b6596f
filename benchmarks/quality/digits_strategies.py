"""Every distillation strategy on digits, each beside the no-KD baseline of the same student.

    python -m benchmarks.quality.digits_strategies --seeds 5 [--group mlp|cnn] [--lr 0.01] [--rows RKD PKT]
    python -m benchmarks.quality.digits_strategies --smoke     # both groups, 2 rows each, 1 epoch of 2 batches

Runs the bundled recipes themselves (``configs/digits/*.yaml``, built through the ``lit-distill`` CLI),
so the numbers describe what the YAMLs do. Each teacher recipe is trained once (into a temporary folder,
best validation checkpoint as in the recipe); then, per seed, the same small student is trained with
each strategy and with hard labels only, all with the same optimizer (``--lr``). Two groups:

* ``mlp``: MLP teacher (teacher.yaml) -> MLP [16] student; no KD, logit KD (quickstart), DKD, DIST,
  hidden-state cosine + KD.
* ``cnn``: SmallCNN teacher (cnn_teacher.yaml) -> SmallCNN [8, 16] student; no KD, logit KD, DKD, DIST
  (the logit recipes' losses on this pair), FitNets, AT, RKD, PKT, logit KD + hint (combined).

``--rows`` keeps only the named rows (and "no KD", which every Δ needs). Reports the last student's held-out
test accuracy (mean ± sample std over seeds); the last line is JSON.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from benchmarks._lib.timing import mean_std
from benchmarks._lib.trainers import parse, parser, print_json, quiet, quiet_trainer
from lit_distill.cli import DistillCLI
from lit_distill.module import DistillationModule

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "configs" / "digits"


def losses(*items: tuple[str, dict]) -> list[dict]:
    """A ``losses:`` list; the CNN group runs the logit strategies on its own teacher/student pair."""
    return [{"class_path": f"lit_distill.losses.{cls}", "init_args": args} for cls, args in items]


CE = ("CrossEntropy", {})
KD = ("LogitKD", {"temperature": 4.0, "weight": 0.9})
#: group -> (teacher recipe, [(row name, recipe, replacement losses or None)])
GROUPS: dict[str, tuple[str, list[tuple[str, str, list[dict] | None]]]] = {
    "mlp": (
        "teacher",
        [
            ("no KD", "no_kd", None),
            ("logit KD", "quickstart", None),
            ("DKD", "dkd", None),
            ("DIST", "dist", None),
            ("hidden cosine + KD", "hidden", None),
        ],
    ),
    "cnn": (
        "cnn_teacher",
        [
            ("no KD", "cnn_no_kd", None),
            ("logit KD", "combined", losses(KD, ("CrossEntropy", {"weight": 0.1}))),
            ("DKD", "combined", losses(("DKD", {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}), CE)),
            ("DIST", "combined", losses(("DIST", {"beta": 1.0, "gamma": 1.0, "temperature": 4.0}), CE)),
            ("FitNets hint", "fitnets", None),
            ("attention transfer", "attention", None),
            ("RKD", "rkd", None),
            ("PKT", "pkt", None),
            ("logit KD + hint", "combined", None),
        ],
    ),
}


def variant(name: str, folder: Path, seed: int, limit: int | None = None, **init_args: object) -> Path:
    """``configs/digits/<name>.yaml`` (or ``configs/<name>.yaml``) with seed and model arguments replaced.

    Written as a new file rather than passed as CLI overrides: jsonargparse merges an overriding list of
    losses with the file's one item by item, which would carry one strategy's weight into another.
    """
    path = DIGITS / f"{name}.yaml" if (DIGITS / f"{name}.yaml").exists() else ROOT / "configs" / f"{name}.yaml"
    config = yaml.safe_load(path.read_text())
    config["seed_everything"] = seed
    if limit:  # smoke runs: one epoch of a few batches
        config["trainer"].update(max_epochs=1, limit_train_batches=limit, limit_val_batches=limit)
    config["model"]["init_args"].update({k: v for k, v in init_args.items() if v is not None})
    out = folder / f"{name}-{seed}-{len(list(folder.iterdir()))}.yaml"
    out.write_text(yaml.safe_dump(config))
    return out


def recipe(config: Path) -> tuple[DistillationModule, LightningDataModule, dict]:
    """Build the model and data of a recipe through the CLI, without running it."""
    cli = DistillCLI(
        DistillationModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        save_config_callback=None,
        auto_configure_optimizers=False,
        args=["--config", str(config), "--trainer.logger=false"],
    )
    keys = ("max_epochs", "limit_train_batches", "limit_val_batches")
    return cli.model, cli.datamodule, {k: cli.config.trainer[k] for k in keys if cli.config.trainer.get(k) is not None}


def trainer(settings: dict, **kwargs) -> Trainer:
    """A quiet CPU Trainer with the recipe's epochs (and batch limits, if it sets any)."""
    return quiet_trainer(accelerator="cpu", **{**settings, **kwargs})


def train_teacher(name: str, folder: Path, limit: int | None) -> tuple[Path, float]:
    model, data, settings = recipe(variant(name, folder, seed=0, limit=limit))
    saver = ModelCheckpoint(dirpath=folder, filename=name, monitor="val/student_acc", mode="max", save_top_k=1)
    run = trainer(settings, callbacks=[saver], enable_checkpointing=True)
    run.fit(model, data)
    acc = run.test(model, data, ckpt_path=saver.best_model_path, verbose=False)[0]["test/student_acc"]
    return Path(saver.best_model_path), acc


def train_student(config: Path) -> tuple[float, float]:
    """Test accuracy of the last student (what the recipes export) and the run's seconds."""
    start = time.time()
    model, data, settings = recipe(config)
    run = trainer(settings, limit_val_batches=0)  # no checkpoint selection, so validation would change nothing
    run.fit(model, data)
    return run.test(model, data, verbose=False)[0]["test/student_acc"], time.time() - start


def summarize(name: str, accs: list[float], base: list[float] | None) -> dict:
    mean, std = mean_std(accs)
    row = {"strategy": name, "mean": mean, "std": std, "accs": accs}
    if base is not None:
        row["delta_vs_no_kd"] = mean - statistics.mean(base)
    return row


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--group", choices=[*GROUPS, "all"], default="all")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the models are tiny)")
    p.add_argument(
        "--lr",
        type=float,
        default=0.01,
        help="AdamW learning rate of every student run (the feature/DKD/DIST recipes' value); 0 keeps each "
        "recipe's own. no_kd.yaml and quickstart.yaml default to 1e-3, which leaves 30 epochs underfit.",
    )
    p.add_argument("--rows", nargs="+", default=None, help='only these rows (and "no KD"), e.g. RKD PKT')
    p.add_argument("--limit-batches", type=int, default=None, help="one epoch of this many batches (smoke runs)")
    args = parse(p, argv, seeds=1, rows=["logit KD", "RKD"], limit_batches=2)
    known = {name for _, rows in GROUPS.values() for name, _, _ in rows}
    if args.rows and not set(args.rows) <= known:
        p.error(f"unknown --rows {sorted(set(args.rows) - known)}; choose from {sorted(known)}")
    quiet(args.threads)

    start = time.time()
    optimizer = (
        None if not args.lr else {"class_path": "torch.optim.AdamW", "init_args": {"lr": args.lr, "weight_decay": 0.01}}
    )
    result: dict = {
        "seeds": args.seeds,
        "lr": args.lr or None,
        "threads": args.threads,
        "rows": args.rows,
        "groups": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for group, (teacher_recipe, rows) in GROUPS.items():
            rows = [row for row in rows if not args.rows or row[0] == "no KD" or row[0] in args.rows]
            if args.group not in ("all", group) or len(rows) == 1:
                continue
            teacher, teacher_acc = train_teacher(teacher_recipe, folder, args.limit_batches)
            print(f"[{group}] teacher ({teacher_recipe}.yaml) test acc {teacher_acc:.4f}", flush=True)
            accs: dict[str, list[float]] = {name: [] for name, _, _ in rows}
            seconds: dict[str, float] = dict.fromkeys(accs, 0.0)
            for seed in range(args.seeds):
                for name, config, loss_list in rows:
                    ckpt = None if "no_kd" in config else str(teacher)
                    path = variant(config, folder, seed, args.limit_batches, teacher_checkpoint=ckpt, losses=loss_list,
                                   optimizer=optimizer)  # fmt: skip
                    acc, took = train_student(path)
                    accs[name].append(acc)
                    seconds[name] += took
                print(f"[{group}] seed {seed}: " + "  ".join(f"{n} {a[-1]:.4f}" for n, a in accs.items()), flush=True)
            base = accs["no KD"]
            table = [summarize(name, accs[name], None if name == "no KD" else base) for name, _, _ in rows]
            for row in table:
                row["seconds_per_run"] = round(seconds[row["strategy"]] / args.seeds, 2)
            result["groups"][group] = {"teacher_recipe": teacher_recipe, "teacher_acc": teacher_acc, "rows": table}
            print(f"\n[{group}] test accuracy over {args.seeds} seeds (teacher {teacher_acc:.4f})")
            print("| strategy | recipe | accuracy (mean ± std) | Δ vs no KD | s/run |\n|---|---|---|---|---|")
            for row, (_, config, loss_list) in zip(table, rows):
                delta = f"{row['delta_vs_no_kd'] * 100:+.2f} pt" if "delta_vs_no_kd" in row else "—"
                where = f"{config}.yaml" + (" (losses replaced)" if loss_list else "")
                acc = f"{row['mean']:.4f} ± {row['std']:.4f}"
                print(f"| {row['strategy']} | {where} | {acc} | {delta} | {row['seconds_per_run']} |")
            print(flush=True)
    result["seconds"] = round(time.time() - start, 1)
    print_json(result)


if __name__ == "__main__":
    main()
