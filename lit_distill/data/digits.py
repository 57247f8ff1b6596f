"""scikit-learn's bundled 8x8 handwritten digits (1,797 images) as a LightningDataModule."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from lit_distill.data.resumable import ResumableTrainData


class DigitsDataModule(ResumableTrainData, LightningDataModule):
    """Digits with a seeded train/val/test split; pixels scaled to [0, 1]; no network needed.

    Batches are ``(inputs, targets)``: inputs ``[B, 64]`` floats (or ``[B, 1, 8, 8]`` with
    ``as_images=True``), targets ``[B]`` class ids.

    Args:
        batch_size: samples per batch.
        val_fraction: share of the data held out for validation.
        test_fraction: share held out for testing (never seen in training or validation).
        seed: split seed; the same seed always gives the same split.
        as_images: shape inputs as images for conv nets.
        num_workers: DataLoader workers.
        train_samples: use only this many (seeded) training samples, e.g. to see how far a
            teacher's soft targets carry a student trained on few labels (Hinton et al. 2015, sec. 5).

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape)
        ((32, 64), (32,))
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        as_images: bool = False,
        num_workers: int = 0,
        train_samples: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum below 1."
            )
        if train_samples is not None and train_samples < 1:
            raise ValueError(f"train_samples must be >= 1 or None, got {train_samples}.")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32) / 16.0
        y = torch.tensor(data.target, dtype=torch.long)
        if self.hparams.as_images:
            x = x.view(-1, 1, 8, 8)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.hparams.seed))
        n_test = int(len(x) * self.hparams.test_fraction)
        n_val = int(len(x) * self.hparams.val_fraction)
        parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        if self.hparams.train_samples is not None:
            if self.hparams.train_samples > len(parts["train"]):
                raise ValueError(
                    f"train_samples={self.hparams.train_samples} exceeds the {len(parts['train'])} training samples."
                )
            parts["train"] = parts["train"][: self.hparams.train_samples]
        self.splits = {name: TensorDataset(x[idx], y[idx]) for name, idx in parts.items()}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.resumable_train_loader(self.splits["train"], self.batch_size, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
