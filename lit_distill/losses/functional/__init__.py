"""Pure loss functions: the single source of every distillation formula in lit-distill.

Conventions shared by every function here:

* the last dimension holds the logits of one distribution ("a row");
* ``mask`` is optional, boolean, shaped like the logits without their last dimension, ``True`` = counted;
* the result is a scalar, the mean over counted rows, computed in float32 (or float64 if the inputs are);
* ``student`` always comes first, ``teacher`` second.
"""

# The strategies read the argument checks, reductions and masked mean as ``LF.check_beta`` and the like: imported here
# for them, not part of the public list below.
from lit_distill.losses.arguments import (  # noqa: F401
    DIVERGENCES,
    check_alpha,
    check_beta,
    check_divergence,
    check_head_mass,
    check_nonnegative,
    check_temperature,
    temperature_factor,
)
from lit_distill.losses.functional._common import masked_mean  # noqa: F401
from lit_distill.losses.functional.alignment import aligned_pairs, alignment_groups
from lit_distill.losses.functional.cross_tokenizer import sorted_l1, span_kd, span_kd_terms, uld
from lit_distill.losses.functional.decoupled import dist, dist_terms, dkd, dkd_terms
from lit_distill.losses.functional.divergences import (
    adaptive_kl,
    divergence,
    jensen_shannon,
    kl_divergence,
    skew_kl_divergence,
    total_variation,
)
from lit_distill.losses.functional.features import (  # noqa: F401
    AT_REDUCTIONS,
    RELATION_REDUCTIONS,
    attention_map,
    attention_transfer,
    check_reduction,
    feature_cosine,
    hint_mse,
    pkt,
    rkd,
    rkd_terms,
)
from lit_distill.losses.fused import fused_linear_kd, fused_span_kd

__all__ = [
    "kl_divergence",
    "jensen_shannon",
    "total_variation",
    "skew_kl_divergence",
    "adaptive_kl",
    "divergence",
    "dkd",
    "dkd_terms",
    "dist",
    "dist_terms",
    "attention_transfer",
    "rkd",
    "rkd_terms",
    "pkt",
    "hint_mse",
    "feature_cosine",
    "fused_linear_kd",
    "uld",
    "span_kd",
    "span_kd_terms",
    "sorted_l1",
    "aligned_pairs",
    "alignment_groups",
    "fused_span_kd",
]
