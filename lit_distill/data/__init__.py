"""LightningDataModules with embedded default data (no network)."""

from lit_distill.data.digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
