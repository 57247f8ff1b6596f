"""Run by tests/test_ddp.py as a script: Lightning's DDP launcher re-executes it once per rank."""

import json
import sys

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader

from tests.helpers import digits_like, end_process_group, make_module


class Watch(Callback):
    def __init__(self):
        self.teacher_training = []
        self.wrapper = None

    def on_train_start(self, trainer, pl_module):
        self.wrapper = trainer.strategy.model

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.teacher_training.append(any(m.training for m in pl_module.teacher.modules()))


def main(out: str) -> None:
    seed_everything(0)
    module = make_module()
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    watch = Watch()
    loader = DataLoader(digits_like(64), batch_size=8, shuffle=True)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[watch],
    )
    trainer.fit(module, loader)
    ddp = watch.wrapper
    ignored = set(getattr(ddp, "parameters_to_ignore", ()))
    student = torch.cat([p.detach().flatten() for p in module.student.parameters()])
    gathered = trainer.strategy.all_gather(student)
    result = {
        "world_size": trainer.world_size,
        "wrapped": type(ddp).__name__,
        "teacher_training_any": any(watch.teacher_training),
        "steps_seen": len(watch.teacher_training),
        "teacher_unchanged": all(torch.equal(v, teacher_before[k]) for k, v in module.teacher.state_dict().items()),
        "teacher_requires_grad": any(p.requires_grad for p in module.teacher.parameters()),
        "teacher_ignored_by_ddp": all(f"teacher.{k}" in ignored for k in module.teacher.state_dict()),
        "student_in_sync": bool(torch.equal(gathered[0], gathered[1])),
    }
    result.update(parity_step(out))
    if trainer.global_rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)


def parity_batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g)


def parity_module():
    seed_everything(5)
    return make_module(optimizer=lambda p: torch.optim.SGD(p, lr=0.5))


def parity_step(out: str) -> dict:
    """One SGD step on a 16-sample global batch split over 2 ranks; the weights are saved for the test to
    compare with one single-process step on the whole batch."""
    module = parity_module()
    x, y = parity_batch()
    loader = DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=1, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, loader)
    if trainer.global_rank == 0:
        torch.save({k: v.detach().clone() for k, v in module.student.state_dict().items()}, out + ".parity.pt")
    return {"parity_steps": trainer.global_step}


if __name__ == "__main__":
    main(sys.argv[1])
    end_process_group()
