"""A plain multilayer perceptron classifier."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """``Linear -> ReLU -> (Dropout)`` blocks, then a linear classifier.

    Args:
        in_features: input size (64 for the 8x8 digits).
        hidden: sizes of the hidden layers; ``[]`` is logistic regression.
        num_classes: number of output logits.
        dropout: dropout after each hidden layer.

    Example:
        >>> import torch
        >>> MLP(64, [32], 10)(torch.randn(2, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, in_features: int = 64, hidden: Sequence[int] = (128,), num_classes: int = 10, dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = in_features
        for width in hidden:
            layers += [nn.Linear(size, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            size = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x.flatten(1)))
