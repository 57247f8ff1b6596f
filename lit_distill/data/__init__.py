"""LightningDataModules with embedded default data (no network)."""

from lit_distill.data.digits import DigitsDataModule
from lit_distill.data.text import TextDataModule
from lit_distill.data.tokenizers import ByteTokenizer, HFTokenizer

__all__ = ["DigitsDataModule"]
__all__ += ["TextDataModule", "ByteTokenizer", "HFTokenizer"]

from lit_distill.data.cached import CachedTeacherDataModule  # noqa: E402 - appended by the teacher-cache work

__all__ += ["CachedTeacherDataModule"]

from lit_distill.data.prompts import PromptDataModule  # noqa: E402 - appended by the generation work

__all__ += ["PromptDataModule"]

from lit_distill.data.chat import ChatDataModule  # noqa: E402 - appended by the chat-data work

__all__ += ["ChatDataModule"]

from lit_distill.data.sentences import SentencesDataModule  # noqa: E402

__all__ += ["SentencesDataModule"]
