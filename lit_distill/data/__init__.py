"""LightningDataModules with embedded default data (no network)."""

from lit_distill.data.digits import DigitsDataModule
from lit_distill.data.text import TextDataModule
from lit_distill.data.tokenizers import ByteTokenizer, HFTokenizer

__all__ = ["DigitsDataModule"]
__all__ += ["TextDataModule", "ByteTokenizer", "HFTokenizer"]
