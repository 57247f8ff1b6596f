"""The training-step cases of the step-overhead and multi-GPU benchmarks: a teacher/student pair, one synthetic
batch already on the device, the optimizer and precision, and the same pair as a ``DistillationModule``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset

from lit_distill import CrossEntropy, DistillationModule, LogitKD


class RepeatBatch(IterableDataset):
    """The same batch ``steps`` times (the loader adds nothing to a step)."""

    def __init__(self, batch: Any, steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __iter__(self) -> Iterator[Any]:
        for _ in range(self.steps):
            yield self.batch


def build_module(case: dict, compiled: dict | None = None) -> DistillationModule:
    """The case's models, dtype and optimizer as a DistillationModule with the benchmark's loss
    (0.9 * KD at T=4 + 0.1 * hard-label CE)."""
    return DistillationModule(
        student=case["student"](),
        teacher=case["teacher"](),
        losses=[LogitKD(temperature=4.0, weight=0.9), CrossEntropy(weight=0.1)],
        teacher_dtype=None if case["teacher_dtype"] is None else str(case["teacher_dtype"]).removeprefix("torch."),
        channels_last=case["channels_last"],
        compile=False if compiled is None else (compiled or True),
        optimizer=case["opt"],
    )


def resnet_case(batch_size: int) -> dict:
    import torchvision

    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch_size, 3, 224, 224, device=device, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), device=device, generator=g)
    return {
        "name": f"resnet50->resnet18 b{batch_size} 224² bf16 channels_last",
        "device": device,
        "student": lambda: torchvision.models.resnet18().to(device),
        "teacher": lambda: torchvision.models.resnet50().to(device),
        "batch": (x, y),
        "opt": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        "teacher_dtype": torch.bfloat16,
        "channels_last": True,
        "autocast": True,
    }


def gpt_case(device: torch.device, rows: int = 8, seq: int = 256) -> dict:
    from lit_distill.models.gpt import GPT

    ids = torch.randint(0, 258, (rows, seq), device=device, generator=torch.Generator(device=device).manual_seed(0))
    return {
        "name": f"tiny GPT 6x384 -> 2x128, batch {rows}x{seq} tokens, {device.type}",
        "device": device,
        "student": lambda: GPT(block_size=256, n_layer=2, n_head=2, n_embd=128).to(device),
        "teacher": lambda: GPT(block_size=256, n_layer=6, n_head=6, n_embd=384).to(device),
        "batch": (ids, ids),
        "opt": lambda p: torch.optim.AdamW(p, lr=1e-3),
        "teacher_dtype": torch.bfloat16 if device.type == "cuda" else None,
        "channels_last": False,
        "autocast": device.type == "cuda",
    }


def digits_case() -> dict:
    from lit_distill.models import MLP

    g = torch.Generator().manual_seed(0)
    return {
        "name": "digits MLP 64-256-256-10 -> 64-8-10, batch 64, cpu",
        "device": torch.device("cpu"),
        "student": lambda: MLP(64, [8], 10),
        "teacher": lambda: MLP(64, [256, 256], 10),
        "batch": (torch.rand(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)),
        "opt": lambda p: torch.optim.AdamW(p, lr=1e-3),
        "teacher_dtype": None,
        "channels_last": False,
        "autocast": False,
    }
