"""InfoNCE and the teacher-free in-batch contrastive strategy; embedding cosine through HiddenCosine on taps."""

import math

import pytest
import torch
import torch.nn.functional as F

from lit_distill import DistillationModule
from lit_distill.losses import HiddenCosine
from lit_distill.losses.embedding import InBatchContrastive, info_nce
from lit_distill.outputs import ModelOutput


def direct_info_nce(a, p, tau):
    total = 0.0
    for i in range(len(a)):
        sims = [float(F.cosine_similarity(a[i], p[j], dim=0)) / tau for j in range(len(p))]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    return total / len(a)


def test_info_nce_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    a, p = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    for tau in (0.05, 0.5, 2.0):
        assert float(info_nce(a, p, tau)) == pytest.approx(direct_info_nce(a, p, tau), rel=1e-9)


def test_info_nce_rewards_matching_pairs_and_has_gradients():
    a = torch.randn(8, 4, requires_grad=True)
    matched = info_nce(a, a.detach() * 3.0, 0.1)
    shuffled = info_nce(a, a.detach().roll(1, 0), 0.1)
    assert matched.item() < shuffled.item()
    matched.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_info_nce_rejects_bad_inputs():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        info_nce(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match=r"anchor \(2, 3\) and positive \(3, 3\)"):
        info_nce(torch.zeros(2, 3), torch.zeros(3, 3))


def test_strategy_pairs_consecutive_views():
    emb = torch.randn(12, 4)
    two = InBatchContrastive(views=2, temperature=0.1)
    out = ModelOutput(features={"pooling": emb})
    torch.testing.assert_close(two(out, None, {}), info_nce(emb[0::2], emb[1::2], 0.1))
    three = InBatchContrastive(views=3, temperature=0.1)
    expected = (info_nce(emb[0::3], emb[1::3], 0.1) + info_nce(emb[0::3], emb[2::3], 0.1)) / 2
    torch.testing.assert_close(three(out, None, {}), expected)
    assert InBatchContrastive.requires_teacher is False and two.student_taps == ["pooling"]


def test_strategy_errors_name_the_fix():
    with pytest.raises(ValueError, match="views must be >= 2"):
        InBatchContrastive(views=1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        InBatchContrastive(temperature=-1.0)
    loss = InBatchContrastive()
    with pytest.raises(ValueError, match="'pooling' was not captured"):
        loss(ModelOutput(), None, {})
    with pytest.raises(ValueError, match=r"SentencesDataModule\(views: 2\)"):
        loss(ModelOutput(features={"pooling": torch.randn(5, 4)}), None, {})


def tiny_encoder(**kwargs):
    pytest.importorskip("transformers")
    from lit_distill.models.encoder import SentenceEncoder

    config = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
              "max_position_embeddings": 64, "vocab_size": 300}  # fmt: skip
    return SentenceEncoder(random_init=config, **kwargs)


def batch_of(encoder, sentences):
    tokens = encoder.tokenizer(sentences, padding=True, return_tensors="pt")
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def test_teacher_free_module_trains_on_dropout_views():
    torch.manual_seed(0)
    student = tiny_encoder()
    module = DistillationModule(student=student, losses=[InBatchContrastive()])
    module.setup("validate")  # hooks the taps without a probe batch
    batch = batch_of(
        student, [s for s in ["Lists change.", "Tuples do not change at all.", "Sets hash."] for _ in "ab"]
    )
    module.train()
    total, terms, _, _ = module.shared_step(batch)
    total.backward()
    assert torch.isfinite(total) and float(total) > 0 and set(terms) == {"contrastive"}
    assert student.model.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0
    module.teardown("validate")


def test_pooled_embedding_cosine_is_hidden_cosine_on_the_pooling_tap():
    torch.manual_seed(0)
    teacher, student = tiny_encoder(seed=0), tiny_encoder(seed=1)
    module = DistillationModule(
        student=student,
        teacher=teacher,
        losses=[HiddenCosine(student_layer="pooling", teacher_layer="pooling")],
        allow_untrained_teacher=True,
    )
    module.setup("validate")
    module.eval()
    batch = batch_of(student, ["Lists change.", "Tuples do not change at all.", "Sets hash their items."])
    total, _, s_out, t_out = module.shared_step(batch)
    direct = 1 - F.cosine_similarity(s_out.extra["embedding"], t_out.extra["embedding"], dim=-1).mean()
    torch.testing.assert_close(total.float(), direct, atol=1e-6, rtol=1e-6)
    module.teardown("validate")
