"""Loss strategies: thin ``nn.Module`` wrappers around :mod:`lit_distill.losses.functional`."""

from lit_distill.losses.base import DistillationLoss
from lit_distill.losses.cross_tokenizer import ULD, AlignedSpanKD
from lit_distill.losses.embedding import InBatchContrastive
from lit_distill.losses.feature import FeaturePairLoss, HiddenCosine, HiddenMSE, HintLoss
from lit_distill.losses.logit import DIST, DKD, CrossEntropy, LogitKD
from lit_distill.losses.relation import PKT, RKD, AttentionTransfer
from lit_distill.losses.sequence import TokenKD

__all__ = ["DistillationLoss", "LogitKD", "CrossEntropy"]
__all__ += [
    "DKD",
    "DIST",
    "FeaturePairLoss",
    "HintLoss",
    "HiddenMSE",
    "HiddenCosine",
    "AttentionTransfer",
    "RKD",
    "PKT",
]
__all__ += ["TokenKD"]
__all__ += ["InBatchContrastive"]
__all__ += ["ULD", "AlignedSpanKD"]
