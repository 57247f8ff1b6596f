import torch

from lit_distill.data import DigitsDataModule


def test_splits_are_seeded_disjoint_and_complete():
    a, b, c = DigitsDataModule(seed=1), DigitsDataModule(seed=1), DigitsDataModule(seed=2)
    for dm in (a, b, c):
        dm.setup("fit")
    sizes = {k: len(v) for k, v in a.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["test"] == 269 and sizes["val"] == 269
    assert torch.equal(a.splits["test"].tensors[0], b.splits["test"].tensors[0])
    assert not torch.equal(a.splits["test"].tensors[0], c.splits["test"].tensors[0])
    rows = {tuple(r.tolist()) for r in a.splits["test"].tensors[0]}
    overlap = sum(tuple(r.tolist()) in rows for r in a.splits["train"].tensors[0])
    assert overlap < 5  # only exact duplicate images in the raw data can coincide


def test_batches_and_image_mode():
    dm = DigitsDataModule(batch_size=8, as_images=True)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 8, 8) and y.dtype == torch.long and 0.0 <= x.min() and x.max() <= 1.0


def test_bad_arguments():
    import pytest

    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        DigitsDataModule(batch_size=0)
    with pytest.raises(ValueError, match="val_fraction=0.6 and test_fraction=0.5"):
        DigitsDataModule(val_fraction=0.6, test_fraction=0.5)
