"""Run by tests/test_ddp.py as a script: Lightning's DDP launcher re-executes it once per rank."""

import json
import sys

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader

from tests.helpers import digits_like, make_module


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
    if trainer.global_rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
