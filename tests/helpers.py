"""Small builders shared by tests."""

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lit_distill import CrossEntropy, DistillationModule, LogitKD
from lit_distill.models import MLP


def digits_like(n=96, features=64, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorDataset(x, y)


def loaders(n=96, batch_size=16, seed=0):
    ds = digits_like(n, seed=seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=True), DataLoader(ds, batch_size=batch_size)


def make_module(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("student", MLP(64, [16], 10))
    kwargs.setdefault("teacher", MLP(64, [64], 10))
    kwargs.setdefault("losses", [LogitKD(temperature=2.0), CrossEntropy(weight=0.5)])
    # The tests' teachers are random on purpose (behaviour, not accuracy): they opt in explicitly.
    kwargs.setdefault("allow_untrained_teacher", "teacher_checkpoint" not in kwargs)
    return DistillationModule(**kwargs)


def trainer(tmp_path, **kwargs):
    defaults = dict(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


def end_process_group() -> None:
    """End a multi-process test script: every rank waits for the others, then the process group is torn down.

    Left to interpreter exit, gloo's threads can be destroyed while another rank still talks to them, and the
    process aborts ("terminate called without an active exception") after its work is done.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
