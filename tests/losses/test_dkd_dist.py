"""DKD and DIST: functional formulas against direct implementations from the papers, and their strategies."""

import math

import pytest
import torch

from lit_distill.losses import DIST, DKD, LogitKD
from lit_distill.losses import functional as LF
from lit_distill.outputs import ModelOutput


def softmax(row, temperature):
    e = [math.exp(v / temperature) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def ref_dkd_terms(s, t, y, temperature):
    """Zhao et al. 2022: b = [p_gt, 1 - p_gt]; p̂ = softmax of the logits without the gt class."""
    tckd, nckd = [], []
    for rs, rt, gt in zip(s.double().tolist(), t.double().tolist(), y.tolist()):
        ps, pt = softmax(rs, temperature), softmax(rt, temperature)
        tckd.append(kl([pt[gt], 1 - pt[gt]], [ps[gt], 1 - ps[gt]]))
        others = [c for c in range(len(rs)) if c != gt]
        nckd.append(kl(softmax([rt[c] for c in others], temperature), softmax([rs[c] for c in others], temperature)))
    n, t2 = len(tckd), temperature**2
    return sum(tckd) / n * t2, sum(nckd) / n * t2


def ref_dkd(s, t, y, alpha, beta, temperature):
    tckd, nckd = ref_dkd_terms(s, t, y, temperature)
    return alpha * tckd + beta * nckd


def pearson(u, v):
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    cov = sum((a - mu) * (b - mv) for a, b in zip(u, v))
    return cov / math.sqrt(sum((a - mu) ** 2 for a in u) * sum((b - mv) ** 2 for b in v))


def ref_dist(s, t, beta, gamma, temperature):
    """Huang et al. 2022: 1 - Pearson per row (inter-class) and per column (intra-class) of softmax(Z/T)."""
    ys = [softmax(r, temperature) for r in s.double().tolist()]
    yt = [softmax(r, temperature) for r in t.double().tolist()]
    inter = sum(1 - pearson(a, b) for a, b in zip(ys, yt)) / len(ys)
    cols = range(len(ys[0]))
    intra = sum(1 - pearson([r[c] for r in ys], [r[c] for r in yt]) for c in cols) / len(cols)
    return temperature**2 * (beta * inter + gamma * intra)


def data(seed, n=6, c=7, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(n, c, generator=g) * 2, torch.randn(n, c, generator=g) * 2
    return s.to(dtype), t.to(dtype), torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 2.5)])
def test_dkd_matches_paper_fp32(alpha, beta, temperature):
    s, t, y = data(0)
    got = LF.dkd(s, t, y, alpha=alpha, beta=beta, temperature=temperature)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref_dkd(s, t, y, alpha, beta, temperature), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(("beta", "gamma", "temperature"), [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (0.0, 1.0, 2.0)])
def test_dist_matches_paper_fp32(beta, gamma, temperature):
    s, t, _ = data(1)
    got = LF.dist(s, t, beta=beta, gamma=gamma, temperature=temperature)
    assert got.item() == pytest.approx(ref_dist(s, t, beta, gamma, temperature), rel=1e-5, abs=1e-6)


def test_bf16_inputs_match_formula_on_the_same_values():
    s, t, y = data(2, dtype=torch.bfloat16)
    got_dkd, got_dist = LF.dkd(s, t, y), LF.dist(s, t, temperature=2.0)
    assert got_dkd.dtype == got_dist.dtype == torch.float32
    assert got_dkd.item() == pytest.approx(ref_dkd(s.float(), t.float(), y, 1.0, 8.0, 4.0), rel=1e-5)
    assert got_dist.item() == pytest.approx(ref_dist(s.float(), t.float(), 1.0, 1.0, 2.0), rel=1e-5)


def test_gradcheck_float64():
    s, t, y = data(3, n=4, c=5, dtype=torch.float64)
    s.requires_grad_(), t.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: LF.dkd(a, b, y, 1.0, 8.0, 2.0), (s, t))
    assert torch.autograd.gradcheck(lambda a, b: LF.dist(a, b, 1.0, 2.0, 1.5), (s, t))


def test_dkd_decomposes_classic_kd():
    # Zhao et al. eq. (1): KD = TCKD + (1 - p_gt^teacher) * NCKD, row by row.
    for i in range(5):
        s, t, y = data(10 + i, n=1, c=9)
        tckd, nckd = LF.dkd_terms(s, t, y, temperature=3.0)
        p_gt = torch.softmax(t / 3.0, -1)[0, y[0]]
        assert (tckd + (1 - p_gt) * nckd).item() == pytest.approx(LF.kl_divergence(s, t, 3.0).item(), rel=1e-5)


def test_dkd_is_stable_for_confident_logits():
    s, t, y = data(4)
    s[torch.arange(6), y] += 60.0  # p_gt rounds to 1 in fp32; log(1 - p_gt) must not be -inf
    got = LF.dkd(s.requires_grad_(), t, y)
    got.backward()
    assert torch.isfinite(got) and torch.isfinite(s.grad).all()


def test_mask_and_ignore_index():
    s, t, y = data(5, n=8)
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    y_padded = torch.where(mask, y, torch.full_like(y, -100))
    got = LF.dkd(s, t, y_padded, mask=mask)
    assert got.item() == pytest.approx(ref_dkd(s[mask], t[mask], y[mask], 1.0, 8.0, 4.0), rel=1e-5)
    assert LF.dist(s, t, mask=mask).item() == pytest.approx(ref_dist(s[mask], t[mask], 1, 1, 1), rel=1e-5)


def test_strategies_return_weighted_named_terms():
    s, t, y = data(6)
    out = DKD(alpha=0.5, beta=3.0, temperature=2.0)(ModelOutput(logits=s), ModelOutput(logits=t), (None, y))
    tckd, nckd = ref_dkd_terms(s, t, y, 2.0)
    assert out["tckd"].item() == pytest.approx(0.5 * tckd, rel=1e-5)
    assert out["nckd"].item() == pytest.approx(3.0 * nckd, rel=1e-5)
    terms = DIST(beta=2.0, gamma=0.0, temperature=1.0)(ModelOutput(logits=s), ModelOutput(logits=t), (None, y))
    assert terms["inter"].item() == pytest.approx(ref_dist(s, t, 2.0, 0.0, 1.0), rel=1e-5)
    assert terms["intra"].item() == 0.0


def test_dkd_strategy_shifts_token_logits_and_skips_ignored_labels():
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)
    labels = torch.randint(0, 6, (2, 5), generator=g)
    labels[0, :2] = -100
    out = DKD()(ModelOutput(logits=s), ModelOutput(logits=t), {"input_ids": labels.clamp_min(0), "labels": labels})
    keep = labels[:, 1:] != -100
    want = ref_dkd(s[:, :-1][keep], t[:, :-1][keep], labels[:, 1:][keep], 1.0, 8.0, 4.0)
    assert (out["tckd"] + out["nckd"]).item() == pytest.approx(want, rel=1e-5)


def test_errors_name_the_bad_value():
    s, t, y = data(8)
    with pytest.raises(ValueError, match="target 9 is outside"):
        LF.dkd(s, t, torch.full_like(y, 9))
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got -1"):
        DKD(beta=-1)
    with pytest.raises(ValueError, match="temperature"):
        DIST(temperature=0)
    with pytest.raises(ValueError, match="needs targets"):
        DKD()(ModelOutput(logits=s), ModelOutput(logits=t), s)
    with pytest.raises(ValueError, match="teacher logits"):
        DIST()(ModelOutput(logits=s), None, (s, y))
    assert LogitKD().name == "logit_kd" and DKD().name == "dkd" and DIST().name == "dist"
