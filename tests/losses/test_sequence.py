"""TokenKD: shifting, masking, every divergence against a direct formula, vocab handling, fused == logits path."""

import math

import pytest
import torch
from torch.utils.data import DataLoader

from lit_distill.losses import TokenKD
from lit_distill.models import GPT
from lit_distill.outputs import ModelOutput

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl", "adaptive_kl"]


def kl(a, b):
    return (a * (a.log() - b.log())).sum(-1)


def direct(div, s, t, temperature=1.0, beta=0.5, alpha=0.1, mu=0.5):
    """Per-row divergence written out from the definitions, in float64."""
    s, t = s.double() / temperature, t.double() / temperature
    q, p = s.softmax(-1), t.softmax(-1)  # student q, teacher p
    t2 = temperature**2
    if div == "forward_kl":
        return kl(p, q) * t2
    if div == "reverse_kl":
        return kl(q, p) * t2
    if div == "jsd":
        m = beta * p + (1 - beta) * q
        return (beta * kl(p, m) + (1 - beta) * kl(q, m)) / (beta * (1 - beta))
    if div == "skew_forward_kl":
        return kl(p, alpha * p + (1 - alpha) * q) * t2
    if div == "skew_reverse_kl":
        return kl(q, alpha * q + (1 - alpha) * p) * t2
    if div == "adaptive_kl":
        order = p.argsort(descending=True)
        head = p[order].cumsum(0) <= mu
        head[0] = True
        gap = (p[order] - q[order]).abs()
        return (gap[head].sum() * kl(p, q) + gap[~head].sum() * kl(q, p)) / gap.sum() * t2
    return 0.5 * (p - q).abs().sum(-1)


def direct_token_kd(div, s, t, labels, temperature=1.0, beta=0.5, **options):
    """Mean over (b, i) with labels[b, i+1] != -100 of D(t[b, i], s[b, i]), by explicit loops."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for i in range(labels.shape[1] - 1):
            if labels[b, i + 1] != -100:
                total += float(direct(div, s[b, i], t[b, i], temperature, beta, **options))
                count += 1
    return total / max(count, 1)


def batch_with_masking(seed=0, b=3, n=7, v=11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, v, (b, n), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt
    labels[1, -2:] = -100  # padding
    return {"input_ids": ids, "labels": labels}, torch.randn(b, n, v, generator=g), torch.randn(b, n, v, generator=g)


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-5)])
def test_each_divergence_equals_the_direct_formula(div, dtype, tol):
    batch, s, t = batch_with_masking()
    s, t = s.to(dtype) * 3, t.to(dtype) * 3
    kd = TokenKD(div, temperature=2.0, beta=0.3, alpha=0.2, head_mass=0.4)
    loss = kd(ModelOutput(logits=s), ModelOutput(logits=t), batch)
    # the reference sees the same (rounded) bf16 values; the loss computes in fp32 internally
    want = direct_token_kd(div, s, t, batch["labels"], temperature=2.0, beta=0.3, alpha=0.2, mu=0.4)
    assert loss.dtype == torch.float32
    assert math.isclose(float(loss), want, rel_tol=tol * 10, abs_tol=tol)


def test_prompt_and_padding_positions_change_nothing():
    batch, s, t = batch_with_masking()
    loss = TokenKD("jsd")
    before = loss(ModelOutput(logits=s), ModelOutput(logits=t), batch)
    s2, t2 = s.clone(), t.clone()
    # position i is ignored when labels[i+1] == -100: rows 0 positions 0-1 (prompt), row 1 positions 4-5 (padding),
    # and every row's last position (nothing follows it)
    for b, i in [(0, 0), (0, 1), (1, 4), (1, 5), (2, 6)]:
        s2[b, i] = torch.randn(s.shape[-1]) * 5
        t2[b, i] = torch.randn(s.shape[-1]) * 5
    assert torch.equal(loss(ModelOutput(logits=s2), ModelOutput(logits=t2), batch), before)
    s2[0, 2, 0] += 1.0  # position 2 predicts labels[3], which counts
    assert not torch.equal(loss(ModelOutput(logits=s2), ModelOutput(logits=t2), batch), before)


def test_shift_compares_the_position_before_each_counted_label():
    batch, s, t = batch_with_masking()
    labels = torch.full_like(batch["labels"], -100)
    labels[2, 5] = 4  # only one counted label: predicted from position 4
    loss = TokenKD()(ModelOutput(logits=s), ModelOutput(logits=t), {**batch, "labels": labels})
    torch.testing.assert_close(loss, direct("forward_kl", s[2, 4], t[2, 4]).float())


def test_without_labels_the_attention_mask_decides():
    batch, s, t = batch_with_masking()
    mask = torch.ones_like(batch["input_ids"])
    mask[1, -2:] = 0
    got = TokenKD()(
        ModelOutput(logits=s), ModelOutput(logits=t), {"input_ids": batch["input_ids"], "attention_mask": mask}
    )
    labels = batch["input_ids"].masked_fill(mask == 0, -100)
    assert math.isclose(float(got), direct_token_kd("forward_kl", s, t, labels), rel_tol=1e-5)


def test_all_ignored_is_zero_not_nan():
    batch, s, t = batch_with_masking()
    batch["labels"][:] = -100
    out = TokenKD(lm_weight=1.0)(ModelOutput(logits=s), ModelOutput(logits=t), batch)
    assert float(out["kd"]) == 0.0 and float(out["lm"]) == 0.0


def test_lm_mix_is_the_shifted_cross_entropy():
    batch, s, t = batch_with_masking()
    out = TokenKD(lm_weight=0.25)(ModelOutput(logits=s), ModelOutput(logits=t), batch)
    labels = batch["labels"][:, 1:]
    counted = labels != -100
    want = -s[:, :-1].log_softmax(-1).gather(-1, labels.clamp_min(0)[..., None])[..., 0][counted].mean()
    torch.testing.assert_close(out["lm"], 0.25 * want)
    assert math.isclose(float(out["kd"]), direct_token_kd("forward_kl", s, t, batch["labels"]), rel_tol=1e-5)


@pytest.mark.parametrize("div", [d for d in DIVERGENCES if d != "adaptive_kl"])  # its weights are held constant
def test_gradient_float64(div):
    batch, s, t = batch_with_masking(b=2, n=4, v=5)
    loss = TokenKD(div, temperature=1.5, beta=0.4, lm_weight=0.5)

    def f(x):
        out = loss(ModelOutput(logits=x), ModelOutput(logits=t.double()), batch)
        return out["kd"] + out["lm"]

    assert torch.autograd.gradcheck(f, (s.double().requires_grad_(),))


def gpts(student_vocab=258, teacher_vocab=300, s_id="bytes", t_id="bytes"):
    torch.manual_seed(0)
    student = GPT(padded_vocab_size=student_vocab, block_size=16, n_layer=1, n_head=2, n_embd=8, tokenizer_id=s_id)
    teacher = GPT(padded_vocab_size=teacher_vocab, block_size=16, n_layer=1, n_head=2, n_embd=12, tokenizer_id=t_id)
    return student, teacher


def test_padded_vocab_of_one_tokenizer_is_sliced():
    batch, s, t = batch_with_masking(v=258)
    padded = torch.cat([t, 50 * torch.randn(*t.shape[:2], 42)], -1)  # teacher padded to 300 with garbage
    loss = TokenKD()
    loss.check_models(*gpts())
    assert loss.shared_vocab == 258
    got = loss(ModelOutput(logits=s), ModelOutput(logits=padded), batch)
    assert torch.equal(got, TokenKD()(ModelOutput(logits=s), ModelOutput(logits=t), batch))


def test_tokenizer_mismatch_and_unknown_widths_are_clear_errors():
    with pytest.raises(ValueError, match="student speaks tokenizer 'bytes' and the teacher 'hf:abc'"):
        TokenKD().check_models(*gpts(t_id="hf:abc"))
    with pytest.raises(ValueError, match="student logits have 258 entries and teacher logits 300"):
        TokenKD().check_models(*gpts(s_id=None, t_id=None))
    explicit = TokenKD(vocab_size=258)
    explicit.check_models(*gpts(s_id=None, t_id=None))
    assert explicit.shared_vocab == 258
    with pytest.raises(ValueError, match="vocab_size=299 exceeds"):
        TokenKD(vocab_size=299).check_models(*gpts())
    batch, s, t = batch_with_masking()
    with pytest.raises(ValueError, match="11 entries and teacher logits 12"):
        TokenKD()(ModelOutput(logits=s), ModelOutput(logits=torch.randn(3, 7, 12)), batch)
    with pytest.raises(ValueError, match="unknown divergence"):
        TokenKD("kl")
    with pytest.raises(ValueError, match="lm_weight must be"):
        TokenKD(lm_weight=-1)


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("lm_weight", [0.0, 0.5])
def test_fused_path_equals_logits_path(div, lm_weight):
    student, teacher = gpts(student_vocab=264 if lm_weight else 258)
    ids = torch.randint(0, 258, (2, 9))
    labels = ids.clone()
    labels[0, :4] = -100
    batch = {"input_ids": ids, "labels": labels}
    loss = TokenKD(div, temperature=2.0, beta=0.3, lm_weight=lm_weight, chunk_size=5)
    loss.check_models(student, teacher)

    def run(fused):
        student.zero_grad()
        with torch.no_grad():
            t_hidden = teacher.forward_hidden(ids)
        s_hidden = student.forward_hidden(ids)
        if fused:
            s_out = ModelOutput(hidden=s_hidden, head=student.head)
            t_out = ModelOutput(hidden=t_hidden, head=teacher.head)
        else:
            s_out, t_out = ModelOutput(logits=student.head(s_hidden)), ModelOutput(logits=teacher.head(t_hidden))
        out = loss(s_out, t_out, batch)
        value = sum(out.values()) if isinstance(out, dict) else out
        value.backward()
        return out, [p.grad.clone() for p in student.parameters()]

    (fused_out, fused_grads), (plain_out, plain_grads) = run(True), run(False)
    if lm_weight:
        for key in ("kd", "lm"):
            torch.testing.assert_close(fused_out[key], plain_out[key], atol=1e-6, rtol=1e-5)
    else:
        torch.testing.assert_close(fused_out, plain_out, atol=1e-6, rtol=1e-5)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_module_trains_through_the_fused_path(tmp_path):
    from lit_distill import DistillationModule
    from tests.helpers import trainer

    student, teacher = gpts()
    module = DistillationModule(
        student=student, teacher=teacher, losses=[TokenKD(lm_weight=0.5)], allow_untrained_teacher=True
    )
    assert module._use_hidden()
    ids = torch.randint(0, 258, (8, 12))
    data = DataLoader([{"input_ids": row, "labels": row} for row in ids], batch_size=4)
    before = [p.detach().clone() for p in student.parameters()]
    trainer(tmp_path, max_steps=2).fit(module, train_dataloaders=data, val_dataloaders=data)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert module.losses[0].shared_vocab == 258


def test_token_kd_reads_a_topk_teacher_cache():
    """A cache holding the teacher's top-k, renormalised over the k (topk_tail=False), compared on shifted, counted
    positions."""
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, :3] = -100
    values, indices = t.topk(4, dim=-1)
    teacher = ModelOutput(extra={"topk_values": values, "topk_indices": indices})
    batch = {"input_ids": labels.clamp_min(0), "labels": labels}
    got = TokenKD(temperature=2.0, topk_tail=False)(ModelOutput(logits=s), teacher, batch)
    rows = []
    for b in range(2):
        for pos in range(4):  # position pos predicts token pos + 1
            if labels[b, pos + 1] == -100:
                continue
            p = torch.softmax(values[b, pos].double() / 2.0, -1)
            log_q = torch.log_softmax(s[b, pos].double() / 2.0, -1)[indices[b, pos]]
            rows.append(4.0 * float((p * (p.log() - log_q)).sum()))
    assert got.item() == pytest.approx(sum(rows) / len(rows), rel=1e-5)


@pytest.mark.parametrize("how", ["vocab_size", "check_models"])
def test_token_kd_slices_a_padded_student_against_a_topk_teacher(how):
    """A student padded beyond the tokenizer (4 extra rows, here made likely) is compared on the real tokens
    only, whether the size is given (vocab_size) or learnt before training (check_models: from a cache manifest)."""
    torch.manual_seed(0)
    v = 10
    s, t = torch.randn(2, 6, v + 4), torch.randn(2, 6, v)
    s[..., v:] += 3
    ids = torch.randint(0, v, (2, 6))
    values, indices = t.topk(4, -1)
    teacher = ModelOutput(extra={"topk_values": values, "topk_indices": indices})
    batch = {"input_ids": ids, "labels": ids}
    if how == "vocab_size":
        kd = TokenKD(vocab_size=v, topk_tail=False)
    else:
        kd = TokenKD(topk_tail=False)
        kd.check_models(GPT(vocab_size=v + 4, tokenizer_id="tok"), _Declared(tokenizer_id="tok", num_logits=v))
    rows = []
    for b in range(2):
        for pos in range(5):
            p = torch.softmax(values[b, pos].double(), -1)
            log_q = torch.log_softmax(s[b, pos, :v].double(), -1)[indices[b, pos]]
            rows.append(float((p * (p.log() - log_q)).sum()))
    assert kd(ModelOutput(logits=s), teacher, batch).item() == pytest.approx(sum(rows) / len(rows), rel=1e-5)


@pytest.mark.parametrize("div", DIVERGENCES)
def test_token_kd_with_the_tail_bucket_is_exact_over_k_plus_one_outcomes(div):
    """With the teacher's mass outside its top-k (as a cache stores it), the loss is the divergence of the two
    (k+1)-outcome distributions: the k ids and everything else."""
    g = torch.Generator().manual_seed(8)
    s, t = torch.randn(2, 5, 11, generator=g) * 2, torch.randn(2, 5, 11, generator=g) * 2
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[1, -2:] = -100
    values, indices = t.topk(4, dim=-1)
    log_p = t.double().log_softmax(-1)
    tail = log_p.scatter(-1, indices, -math.inf).logsumexp(-1)
    extra = {"topk_values": values, "topk_indices": indices, "topk_tail": tail.float(), "topk_tail_temperature": 1.0}
    batch = {"input_ids": labels.clamp_min(0), "labels": labels}
    got = TokenKD(div, beta=0.3)(ModelOutput(logits=s), ModelOutput(extra=extra), batch)
    total, count = 0.0, 0
    for b in range(2):
        for pos in range(4):
            if labels[b, pos + 1] == -100:
                continue
            coarse = []  # both distributions as logits of k + 1 outcomes: their log-probabilities
            for logits in (s[b, pos].double(), t[b, pos].double()):
                lp = logits.log_softmax(-1)
                coarse.append(
                    torch.cat([lp[indices[b, pos]], lp.scatter(0, indices[b, pos], -math.inf).logsumexp(0)[None]])
                )
            total += float(direct(div, *coarse, beta=0.3))
            count += 1
    assert got.item() == pytest.approx(total / count, rel=1e-5)


def test_token_kd_names_the_fix_for_a_cache_without_the_tail():
    values, indices = torch.randn(2, 5, 11).topk(4, dim=-1)
    teacher = ModelOutput(extra={"topk_values": values, "topk_indices": indices})
    batch = {"input_ids": torch.randint(0, 11, (2, 5))}
    with pytest.raises(ValueError, match="not the teacher's mass outside them.*topk_tail: false"):
        TokenKD()(ModelOutput(logits=torch.randn(2, 5, 11)), teacher, batch)


class _Declared(torch.nn.Module):
    """A model that only declares its tokenizer and logits width (like a cache stand-in after setup)."""

    def __init__(self, **attrs):
        super().__init__()
        self.__dict__.update(attrs)


def test_dkd_refuses_a_topk_only_teacher():
    from lit_distill.losses import DKD

    values, indices = torch.randn(4, 10).topk(3, dim=-1)
    teacher = ModelOutput(extra={"topk_values": values, "topk_indices": indices})
    with pytest.raises(ValueError, match="needs the teacher's full logits.*top_k: null"):
        DKD()(ModelOutput(logits=torch.randn(4, 10)), teacher, (torch.randn(4, 3), torch.randint(0, 10, (4,))))
