"""Run by tests/test_ddp_ranks.py as a script, one case per call: Lightning's DDP launcher re-executes it per rank.

- ``nan_skip OUT``: rank 1 alone gets a NaN batch at its second step; with ``nan_policy: skip`` every rank skips
  that update together and training goes on in sync.
- ``rank0_fails``: a rank-0-only section (:func:`lit_distill.export.run_together`) raises on rank 0 at the end of
  fit; every rank must fail (not wait for the process-group timeout).
"""

import json
import sys

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader, Dataset

from lit_distill.export import run_together
from tests.helpers import digits_like, end_process_group, make_module


class NanOnRankOne(Dataset):
    """Digits-like samples; the samples rank 1 reads at its second step are NaN."""

    def __init__(self, n: int = 64) -> None:
        self.base = digits_like(n)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        x, y = self.base[index]
        return x, y, index


class Poison(Callback):
    """Makes the batch NaN on rank 1 at step 1 (after the sampler: the rank is known here)."""

    def __init__(self) -> None:
        self.skipped_before_update = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 1 and batch_idx == 1:
            batch[0].fill_(float("nan"))


class FailOnRankZero(Callback):
    def on_train_end(self, trainer, pl_module):
        def write():
            raise OSError("disk full while merging the per-rank parts (injected)")

        run_together(write, "merging the per-rank parts", rank_zero_only=True)


def trainer(**kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, **kwargs,
    )  # fmt: skip


def nan_skip(out: str) -> None:
    seed_everything(0)
    module = make_module(nan_policy="skip")
    loader = DataLoader(
        NanOnRankOne(), batch_size=8, collate_fn=lambda rows: tuple(torch.utils.data.default_collate(rows)[:2])
    )
    run = trainer(callbacks=[Poison()])
    run.fit(module, loader)
    student = torch.cat([p.detach().flatten() for p in module.student.parameters()])
    gathered = run.strategy.all_gather(student)
    result = {
        "global_step": run.global_step,
        "batches": run.fit_loop.epoch_loop.batch_progress.total.completed,
        "finite": bool(torch.isfinite(student).all()),
        "in_sync": bool(torch.equal(gathered[0], gathered[1])),
        "skipped": float(run.callback_metrics.get("train/skipped_batches", torch.tensor(-1.0))),
    }
    if run.global_rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    end_process_group()


def rank0_fails() -> None:
    seed_everything(0)
    trainer(callbacks=[FailOnRankZero()], max_steps=2).fit(make_module(), DataLoader(digits_like(64), batch_size=8))
    end_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "nan_skip":
        nan_skip(sys.argv[2])
    else:
        rank0_fails()
