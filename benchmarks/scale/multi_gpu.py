"""Data-parallel scaling of a distillation run: samples/s on 1 and N devices with the same per-device batch.

    python -m benchmarks.scale.multi_gpu --sweep 1 2 --case resnet    # resnet50 -> resnet18, bf16, DDP
    python -m benchmarks.scale.multi_gpu --sweep 1 2 --case gpt       # tiny GPT token KD, DDP
    python -m benchmarks.scale.multi_gpu --smoke                      # digits on 1 and 2 CPU processes (gloo)

Each device count runs in its own process (Lightning's DDP launcher re-executes this module per rank); the driver
prints the table, the scaling ratio samples/s(N) / samples/s(1) and a JSON last line. The recipe is the same on
every device count: only `devices`/`strategy` change.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks._lib.step_cases import RepeatBatch, build_module, digits_case, gpt_case, resnet_case
from benchmarks._lib.timing import FitClock
from benchmarks._lib.trainers import parse, parser, print_json, quiet, quiet_trainer

ROOT = Path(__file__).resolve().parents[2]


def run_one(args: argparse.Namespace) -> dict:
    if args.accelerator == "gpu":
        torch.backends.cudnn.benchmark = True
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # like DDP's workers: spin-waiting threads distort a shared CPU
    make = {"resnet": lambda: resnet_case(args.batch_size), "gpt": lambda: gpt_case(device), "digits": digits_case}
    case = make[args.case]()
    module = build_module(case)
    clock = FitClock(args.warmup)
    trainer = quiet_trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        precision="bf16-mixed" if case["autocast"] else "32-true",
        max_steps=args.warmup + args.steps,
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
    row = {
        "devices": args.devices,
        "samples_per_s": len(batch[0]) * clock.timed_steps / clock.seconds * trainer.world_size,
    }
    if trainer.is_global_zero:
        print(json.dumps(row), flush=True)
    return row


def sweep(args: argparse.Namespace) -> None:
    rows = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for devices in args.sweep:
        if args.smoke and devices == 1:  # one CPU process: this one (saves an interpreter start in the test suite)
            rows.append(run_one(argparse.Namespace(**{**vars(args), "devices": 1})))
            continue
        cmd = [sys.executable, "-m", __spec__.name, "--case", args.case, "--devices", str(devices), "--accelerator",
               args.accelerator, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch-size", str(args.batch_size)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        row = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        rows.append(row)
    for row in rows:
        row["scaling"] = round(row["samples_per_s"] / rows[0]["samples_per_s"], 3)
        print(f"{args.case:<7} devices={row['devices']:<2} {row['samples_per_s']:10.1f} samples/s", flush=True)
    print_json({"case": args.case, "accelerator": args.accelerator, "rows": rows})


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--case", choices=["resnet", "gpt", "digits"], default="resnet")
    p.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--sweep", type=int, nargs="*", default=None, help="device counts to compare")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256, help="per-device batch (resnet case)")
    args = parse(p, argv, case="digits", accelerator="cpu", sweep=[1, 2], steps=4, warmup=1)
    quiet()
    if args.sweep:
        sweep(args)
    else:
        run_one(args)


if __name__ == "__main__":
    main()
