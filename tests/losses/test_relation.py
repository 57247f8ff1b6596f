"""AT, RKD and PKT strategies: published weights give the authors' loss scale; reductions; bad values refused.

The references are the direct loop implementations of the released code in ``test_functional_feature``.
"""

import pytest
import torch
from jsonargparse import ArgumentParser

from lit_distill import DistillationModule
from lit_distill.losses import PKT, RKD, AttentionTransfer
from lit_distill.outputs import ModelOutput
from tests.losses.test_functional_feature import (
    ISSUE_EMBEDDINGS,
    ISSUE_MAPS,
    make,
    ref_attention_batchmean,
    ref_attention_code,
    ref_pkt_code,
    ref_pkt_pairs,
    ref_rkd_code,
    ref_rkd_pairs,
)


def outputs(seed=0):
    """Student/teacher outputs with two map pairs (6×6 and a non-square 3×5) and one embedding pair."""
    s6, t6 = make(seed, *ISSUE_MAPS)
    s35, t35 = make(seed + 1, (8, 16, 3, 5), (8, 32, 3, 5))
    es, et = make(seed + 2, *ISSUE_EMBEDDINGS)
    student = ModelOutput(features={"a": s6, "b": s35, "e": es})
    teacher = ModelOutput(features={"a": t6, "b": t35, "e": et})
    return student, teacher


def total(losses, student, teacher):
    module = DistillationModule(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), losses=losses)
    return module.compute_losses(student, teacher, None)[0].item()


def test_published_at_beta_sums_the_code_loss_over_layer_pairs():
    student, teacher = outputs()
    pairs = [(student.features[k], teacher.features[k]) for k in ("a", "b")]
    # szagoruyko/attention-transfer: loss + β · Σ_pairs at_loss, β = 1000 (the README's --beta 1e+3).
    want = 1000.0 * sum(ref_attention_code(s, t) for s, t in pairs)
    got = total([AttentionTransfer(["a", "b"], ["a", "b"], weight=1000.0)], student, teacher)
    assert got == pytest.approx(want, rel=1e-5)
    weighted = AttentionTransfer(["a", "b"], ["a", "b"], layer_weights=[0.5, 2.0], reduction="batchmean")
    want = sum(w * ref_attention_batchmean(s, t) for w, (s, t) in zip([0.5, 2.0], pairs))
    assert total([weighted], student, teacher) == pytest.approx(want, rel=1e-5)


def test_published_rkd_weights_give_the_code_loss_and_log_each_term():
    student, teacher = outputs()
    s, t = student.features["e"], teacher.features["e"]
    loss = RKD("e", "e", distance_weight=25.0, angle_weight=50.0)
    terms = loss(student, teacher, None)
    assert terms["distance"].item() == pytest.approx(ref_rkd_code(s, t, 25.0, 0.0), rel=1e-5)
    assert terms["angle"].item() == pytest.approx(ref_rkd_code(s, t, 0.0, 50.0), rel=1e-5)
    assert total([loss], student, teacher) == pytest.approx(ref_rkd_code(s, t), rel=1e-5)
    pairs = RKD("e", "e", distance_weight=1.0, angle_weight=2.0, reduction="pairs")
    assert total([pairs], student, teacher) == pytest.approx(ref_rkd_pairs(s, t, 1.0, 2.0), rel=1e-5)


def test_published_pkt_weight_gives_the_code_loss():
    student, teacher = outputs()
    s, t = student.features["e"], teacher.features["e"]
    got = total([PKT("e", "e", weight=30000.0)], student, teacher)
    assert got == pytest.approx(30000.0 * ref_pkt_code(s, t), rel=1e-5)
    assert total([PKT("e", "e", reduction="pairs")], student, teacher) == pytest.approx(ref_pkt_pairs(s, t), rel=1e-5)


def test_unknown_reductions_are_refused_at_construction_and_in_yaml():
    with pytest.raises(
        ValueError, match=r"loss 'attention': reduction must be one of 'mean', 'batchmean', got 'pairs'"
    ):
        AttentionTransfer("a", "b", reduction="pairs")
    with pytest.raises(ValueError, match=r"loss 'rkd': reduction must be one of 'mean', 'pairs', got 'sum'"):
        RKD(reduction="sum")
    with pytest.raises(ValueError, match=r"loss 'pkt': reduction must be one of"):
        PKT(reduction="batchmean")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(RKD, "rkd")
    assert parser.parse_args(["--rkd.reduction=pairs"]).rkd.reduction == "pairs"
    with pytest.raises(Exception, match="reduction"):
        parser.parse_args(["--rkd.reduction=sum"])
