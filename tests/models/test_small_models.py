import torch

from lit_distill.models import MLP, SmallCNN


def test_shapes_and_named_stages():
    assert MLP(64, [], 10)(torch.randn(3, 64)).shape == (3, 10)
    cnn = SmallCNN(1, [4, 8, 16], 10)
    assert cnn(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert cnn(torch.randn(2, 64)).shape == (2, 10)  # flat digits are reshaped
    names = dict(cnn.named_modules())
    assert {"stage1", "stage2", "stage3", "head"} <= set(names)
