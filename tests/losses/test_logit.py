import pytest
import torch
import torch.nn.functional as F

from lit_distill.losses import CrossEntropy, LogitKD
from lit_distill.losses import functional as LF
from lit_distill.outputs import ModelOutput


def outs(s, t):
    return ModelOutput(logits=s), ModelOutput(logits=t)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "tvd"])
def test_logit_kd_uses_the_functional(divergence):
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    loss = LogitKD(divergence=divergence, temperature=3.0, beta=0.2)
    want = LF.divergence(divergence, s, t, temperature=3.0, beta=0.2)
    assert torch.equal(loss(*outs(s, t), None), want)


def test_cross_entropy_classification_and_tokens():
    logits, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    ce = CrossEntropy()
    assert torch.allclose(ce(ModelOutput(logits=logits), None, (None, y)), F.cross_entropy(logits, y))
    # Language model: position t predicts token t+1; -100 labels are skipped.
    lm = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, 3] = -100
    batch = {"input_ids": labels.clamp_min(0), "labels": labels}
    want = F.cross_entropy(lm[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(ce(ModelOutput(logits=lm), None, batch), want)


def test_names_weights_and_errors():
    assert LogitKD().name == "logit_kd" and CrossEntropy().name == "ce"
    assert LogitKD(name="soft", weight=0.5).weight == 0.5
    with pytest.raises(ValueError, match="weight must be a finite number >= 0, got -1"):
        LogitKD(weight=-1)
    with pytest.raises(ValueError, match="unknown divergence 'kld'"):
        LogitKD(divergence="kld")
    with pytest.raises(ValueError, match="temperature must be .* got -2"):
        LogitKD(temperature=-2)
    with pytest.raises(ValueError, match="beta must lie in"):
        LogitKD(beta=2)
    with pytest.raises(ValueError, match="needs targets"):
        CrossEntropy()(ModelOutput(logits=torch.randn(2, 3)), None, (torch.randn(2, 3),))
    with pytest.raises(ValueError, match="teacher logits"):
        LogitKD()(ModelOutput(logits=torch.randn(2, 3)), ModelOutput(), None)
