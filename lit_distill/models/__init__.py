"""Small reference models used by the default recipes."""

from lit_distill.models.cnn import SmallCNN
from lit_distill.models.mlp import MLP

__all__ = ["MLP", "SmallCNN"]
