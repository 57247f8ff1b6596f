"""A small convolutional classifier for 8x8 (or larger) single-channel images."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class SmallCNN(nn.Module):
    """``conv3x3 -> BN -> ReLU`` stages (named ``stage1``, ``stage2``, ...), global pooling, linear head.

    Stage names are stable module paths, so feature taps can name them (``"stage2"``).

    Args:
        in_channels: image channels.
        channels: width of each stage; every stage after the first halves the resolution.
        num_classes: number of output logits.

    Example:
        >>> import torch
        >>> SmallCNN(1, [16, 32], 10)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64), num_classes: int = 10) -> None:
        super().__init__()
        stages = []
        prev = in_channels
        for i, width in enumerate(channels):
            stages.append(
                nn.Sequential(
                    nn.Conv2d(prev, width, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                )
            )
            prev = width
        for i, stage in enumerate(stages, start=1):
            self.add_module(f"stage{i}", stage)
        self.num_stages = len(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:  # flat 8x8 digits
            side = int(x.shape[1] ** 0.5)
            x = x.view(x.shape[0], 1, side, side)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"stage{i}")(x)
        return self.head(self.pool(x).flatten(1))
