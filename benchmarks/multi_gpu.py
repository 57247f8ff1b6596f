"""Data-parallel scaling of a distillation run: samples/s on 1 and N devices with the same per-device batch.

    python benchmarks/multi_gpu.py --sweep 1 2 --case resnet      # resnet50 -> resnet18, bf16, DDP
    python benchmarks/multi_gpu.py --sweep 1 2 --case gpt         # tiny GPT token KD, DDP
    python benchmarks/multi_gpu.py --sweep 1 2 --case digits --accelerator cpu   # CPU smoke (gloo)

Each device count runs in its own process (Lightning's DDP launcher re-executes this script per
rank); the driver prints the table, the scaling ratio samples/s(N) / samples/s(1) and a JSON last
line. The recipe is the same on every device count: only `devices`/`strategy` change.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_overhead import RepeatBatch, build_module, digits_case, gpt_case, resnet_case  # noqa: E402

warnings.filterwarnings("ignore")


class Throughput(Callback):
    """Wall time between the end of warm-up and the last step, synchronised only at those two points."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._sync(pl_module)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is not None:
            self.steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.end = time.perf_counter()


def run_one(args: argparse.Namespace) -> None:
    if args.accelerator == "gpu":
        torch.backends.cudnn.benchmark = True
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # like DDP's workers: spin-waiting threads distort a shared CPU
    case = {"resnet": lambda: resnet_case(args.batch_size), "gpt": lambda: gpt_case(device), "digits": digits_case}[
        args.case
    ]()
    module = build_module(case)
    clock = Throughput(args.warmup)
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        precision="bf16-mixed" if case["autocast"] else "32-true",
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # every rank repeats its own synthetic batch
        callbacks=[clock],
    )
    # The batch is built on this rank's device after the launcher set it.
    batch = case["batch"]
    if args.accelerator == "gpu":
        batch = tuple(t.to(trainer.strategy.root_device) for t in batch)
    trainer.fit(module, DataLoader(RepeatBatch(batch, args.warmup + args.steps + 2), batch_size=None))
    per_rank = len(batch[0]) * clock.steps / (clock.end - clock.start)
    if trainer.is_global_zero:
        print(json.dumps({"devices": args.devices, "samples_per_s": per_rank * trainer.world_size}), flush=True)


def sweep(args: argparse.Namespace) -> None:
    rows = []
    for devices in args.sweep:
        cmd = [sys.executable, __file__, "--case", args.case, "--devices", str(devices), "--accelerator",
               args.accelerator, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch-size", str(args.batch_size)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        rows.append(row)
        print(f"{args.case:<7} devices={devices:<2} {row['samples_per_s']:10.1f} samples/s", flush=True)
    base = rows[0]["samples_per_s"]
    for row in rows:
        row["scaling"] = round(row["samples_per_s"] / base, 3)
    print(json.dumps({"case": args.case, "accelerator": args.accelerator, "rows": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["resnet", "gpt", "digits"], default="resnet")
    parser.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--sweep", type=int, nargs="*", default=None, help="device counts to compare")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256, help="per-device batch (resnet case)")
    args = parser.parse_args()
    if args.sweep:
        sweep(args)
    else:
        run_one(args)


if __name__ == "__main__":
    main()
