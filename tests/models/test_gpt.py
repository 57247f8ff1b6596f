"""The tiny GPT: padding-aware positions, KV cache, batched sampling, files."""

import pytest
import torch
import torch.nn.functional as F

from lit_distill.models import GPT
from lit_distill.models.gpt import RMSNorm, sample_next


def tiny(**kwargs):
    torch.manual_seed(0)
    kwargs = {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 16, **kwargs}
    return GPT(**kwargs).eval()


def left_padded(rows, pad=257):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_shapes_hidden_and_head(norm):
    model = tiny(norm=norm, padded_vocab_size=264)
    x = torch.randint(0, 258, (3, 10))
    logits = model(x)
    hidden = model.forward_hidden(x)
    assert logits.shape == (3, 10, 264) and hidden.shape == (3, 10, 16)
    torch.testing.assert_close(model.get_output_embeddings()(hidden), logits)
    assert model.get_output_embeddings().weight is model.wte.weight  # tied


def test_causal_future_tokens_do_not_change_the_past():
    model = tiny()
    x = torch.randint(0, 258, (2, 12))
    y = x.clone()
    y[:, 7:] = torch.randint(0, 258, (2, 5))
    torch.testing.assert_close(model(x)[:, :7], model(y)[:, :7])


def test_left_padding_gives_the_unpadded_result_and_no_nan():
    model = tiny()
    rows = [[10, 11, 12, 13, 14, 15], [20, 21, 22]]
    ids, mask = left_padded(rows)
    logits = model(ids, mask)
    assert torch.isfinite(logits).all()
    for i, r in enumerate(rows):
        alone = model(torch.tensor([r]))[0]
        torch.testing.assert_close(logits[i, -len(r) :], alone, atol=1e-5, rtol=1e-5)


def test_right_padding_leaves_real_tokens_unchanged():
    model = tiny()
    ids = torch.tensor([[5, 6, 7, 8, 257, 257]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    torch.testing.assert_close(model(ids, mask)[:, :4], model(ids[:, :4]), atol=1e-5, rtol=1e-5)


def test_incremental_decoding_with_cache_matches_full_forward():
    model = tiny()
    x = torch.randint(0, 258, (2, 9))
    full = model(x)
    cache = model.new_cache(2, 9)
    steps = [model(x[:, :4], cache=cache)] + [model(x[:, t : t + 1], cache=cache) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_greedy_generation_with_cache_equals_without_and_each_row_alone():
    model = tiny(padded_vocab_size=300)
    rows = [[72, 101, 108, 108, 111], [100, 101, 102], [1, 2, 3, 4, 5, 6, 7]]
    ids, mask = left_padded(rows)
    with_cache = model.generate(ids, mask, max_new_tokens=12)
    without = model.generate(ids, mask, max_new_tokens=12, use_cache=False)
    assert torch.equal(with_cache, without)
    assert with_cache.shape == (3, ids.shape[1] + 12)
    assert int(with_cache[:, ids.shape[1] :].max()) < 258  # padded vocab rows are never produced
    for i, r in enumerate(rows):
        alone = model.generate(torch.tensor([r]), max_new_tokens=12)
        assert torch.equal(alone[0, len(r) :], with_cache[i, ids.shape[1] :])


def test_greedy_is_the_argmax_continuation():
    model = tiny()
    x = torch.tensor([[3, 4, 5]])
    out = model.generate(x, max_new_tokens=4)
    seq = x
    for _ in range(4):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_eos_ends_rows_and_pads_after_it():
    model = tiny()
    x = torch.tensor([[3, 4, 5], [6, 7, 8]])
    free = model.generate(x, max_new_tokens=6)
    eos = int(free[0, 4])  # the token row 0 emits second: make it the eos
    out = model.generate(x, max_new_tokens=6, eos_token_id=eos, pad_token_id=257)
    assert out[0, 4] == eos and (out[0, 5:] == 257).all()
    row1 = free[1, 3:].tolist()
    if eos in row1:  # row 1 stops at its own first eos
        cut = row1.index(eos)
        assert out[1, 3 : 4 + cut].tolist() == row1[: cut + 1]
    else:
        assert out[1, 3:].tolist() == row1[: out.shape[1] - 3]


def test_sampling_is_seeded_and_reproducible():
    model = tiny()
    x = torch.tensor([[3, 4, 5], [6, 7, 8]])
    kwargs = dict(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.95)
    a = model.generate(x, generator=torch.Generator().manual_seed(1), **kwargs)
    b = model.generate(x, generator=torch.Generator().manual_seed(1), **kwargs)
    c = model.generate(x, use_cache=False, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) <= {0, 1}
    probs = logits[0].softmax(-1)  # nucleus at 0.9: the smallest prefix with mass >= 0.9
    keep = int((probs.cumsum(-1) < 0.9).sum()) + 1
    drawn = set(sample_next(logits, 1.0, top_p=0.9, generator=g).tolist())
    assert drawn <= set(range(keep)) and len(drawn) == keep
    assert torch.equal(sample_next(logits, 1.0, top_k=1, generator=g), logits.argmax(-1))
    assert torch.equal(sample_next(logits, 0.0), logits.argmax(-1))


def test_rmsnorm_formula_and_gradient():
    norm = RMSNorm(5).double()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 5))
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    want = x / torch.sqrt((x * x).mean(-1, keepdim=True) + norm.eps) * norm.weight
    torch.testing.assert_close(norm(x), want)
    assert torch.autograd.gradcheck(norm, (x,))


def test_bf16_forward_is_close_to_fp32():
    model = tiny()
    x = torch.randint(0, 258, (2, 8))
    ref = model(x)
    low = model.to(torch.bfloat16)(x).float()
    assert F.cosine_similarity(low.flatten(), ref.flatten(), dim=0) > 0.99


def test_save_and_reload(tmp_path):
    model = tiny(norm="layernorm", padded_vocab_size=264, tokenizer_id="bytes")
    model.save_pretrained(tmp_path / "m")
    again = GPT.from_pretrained(tmp_path / "m")
    x = torch.randint(0, 258, (2, 6))
    assert torch.equal(again(x), model(x)) and again.tokenizer_id == "bytes"
    with pytest.raises(FileNotFoundError, match="no config.json"):
        GPT.from_pretrained(tmp_path / "missing")


def test_bad_settings_fail_early():
    with pytest.raises(ValueError, match="divisible"):
        GPT(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="padded_vocab_size=100 is below vocab_size=258"):
        GPT(padded_vocab_size=100)
    model = tiny()
    with pytest.raises(ValueError, match="exceed block_size=32"):
        model.generate(torch.zeros(1, 30, dtype=torch.long), max_new_tokens=5)
    with pytest.raises(ValueError, match="exceeds block_size=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 5))
