"""The one sampling spec and the per-step functions every decoder runs (lit_distill.models.next_token)."""

import math

import pytest
import torch

from lit_distill.models import GPT
from lit_distill.models.next_token import SamplingSpec, decode, draw_noise, finish, next_token, race_key, spec_for, trim


@pytest.mark.parametrize(
    "kwargs, word",
    [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1.0}, "temperature"),
     ({"temperature": math.nan}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p"),
     ({"top_p": 1.5}, "top_p")],
)  # fmt: skip
def test_bad_settings_are_refused_naming_the_value(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SamplingSpec(**kwargs)


def test_eos_ids_and_the_default_pad():
    assert SamplingSpec(eos=7).eos == (7,) and SamplingSpec(eos=7).pad == 7
    assert SamplingSpec(eos=[7, 9], pad=0).eos == (7, 9) and SamplingSpec(eos=None).eos == ()
    assert SamplingSpec().pad is None  # no eos: rows never end, nothing to pad


def test_the_draws_are_exponential_independent_and_keyed():
    spec, logits = SamplingSpec(temperature=1.0), torch.zeros(200, 1000)
    noise = draw_noise(spec, logits, race_key(0), 0).double().flatten()
    for k, moment in ((1, 1.0), (2, 2.0), (3, 6.0)):  # E[X^k] = k! for Exp(1)
        assert abs(float((noise**k).mean()) - moment) < 6 * math.sqrt(math.factorial(2 * k) - moment**2) / 450
    assert float(noise.min()) > 0 and torch.isfinite(noise).all()
    same = draw_noise(spec, logits, race_key(0), 0).double().flatten()
    others = [draw_noise(spec, logits, key, i).double().flatten() for key, i in ((race_key(0), 1), (race_key(1), 0))]
    assert torch.equal(noise, same)  # a pure function of (key, step, row, token)
    for other in others:  # another step or key: uncorrelated draws
        assert abs(float(torch.corrcoef(torch.stack([noise, other]))[0, 1])) < 0.01
    rows = draw_noise(spec, logits, race_key(0), 0)
    assert abs(float(torch.corrcoef(rows[:2].double())[0, 1])) < 0.15  # rows differ too (1000 tokens each)


def test_exponential_race_draws_from_the_filtered_softmax():
    rows, logits = 40_000, torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    batch = logits.expand(rows, -1)
    for temperature, top_k in ((1.0, None), (0.5, None), (1.0, 2)):
        spec = SamplingSpec(temperature=temperature, top_k=top_k)
        counts = torch.bincount(next_token(batch, spec, draw_noise(spec, batch, race_key(3), 0)), minlength=5)
        kept = logits[: top_k or 5] / temperature
        expected = [math.exp(x) / sum(math.exp(y) for y in kept) for x in kept.tolist()] + [0.0] * (5 - len(kept))
        for got, p in zip((counts.double() / rows).tolist(), expected):
            assert abs(got - p) <= 4 * math.sqrt(p * (1 - p) / rows) + 1e-12, (temperature, top_k, counts, expected)


def test_padded_vocabulary_columns_are_never_picked():
    logits = torch.tensor([[0.0, 1.0, 9.0]]).expand(100, -1)  # column 2 would win every time
    spec = SamplingSpec(temperature=1.0, vocab=2)
    assert int(next_token(logits, spec, draw_noise(spec, logits, race_key(0), 0)).max()) < 2
    assert next_token(logits, SamplingSpec(temperature=0.0, vocab=2), None).tolist() == [1] * 100


def test_finish_pads_rows_after_their_eos_and_trim_cuts_where_all_ended():
    spec, done = SamplingSpec(eos=(5, 6), pad=0), torch.tensor([False, True, False])
    assert finish(torch.tensor([5, 3, 4]), done, spec).tolist() == [5, 0, 4] and done.tolist() == [True, True, False]
    assert finish(torch.tensor([1, 2, 3]), torch.zeros(3, dtype=torch.bool), SamplingSpec()).tolist() == [1, 2, 3]
    seqs = torch.tensor([[9, 5, 0, 0, 0], [9, 1, 6, 0, 0]])  # prompt of 1, then rows ending at steps 1 and 2
    assert trim(seqs, 1, spec).tolist() == [[9, 5, 0], [9, 1, 6]]
    assert torch.equal(trim(seqs[:, :2], 1, spec), seqs[:, :2])  # row 1 never ended: nothing cut


def test_decode_stops_when_all_rows_end_or_when_told():
    logits = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    steps = []

    def step(token):  # every row emits token 2 (the eos) next
        steps.append(token.tolist())
        return torch.tensor([[0.0, 0.0, 1.0]] * 2)

    spec = SamplingSpec(max_new_tokens=5, temperature=0.0, eos=2, pad=9)
    assert decode(step, logits, spec).tolist() == [[1, 2], [0, 2]] and len(steps) == 1
    # told by other ranks that someone is still decoding: step on, padding the finished rows
    calls = iter([False, False, True])
    out = decode(step, logits, spec, all_done=lambda done: next(calls))
    assert out.tolist() == [[1, 2, 9], [0, 2, 9]]
    assert decode(step, logits, SamplingSpec(max_new_tokens=3, temperature=0.0)).shape == (2, 3)  # no eos: all steps


def test_the_spec_of_a_model_knows_its_real_vocabulary_and_its_defaults():
    gpt = GPT(vocab_size=258, padded_vocab_size=320, block_size=16, n_layer=1, n_head=2, n_embd=16)
    assert spec_for(gpt, 256, None, temperature=0.0).vocab == 258
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=16, n_layer=1, n_head=2, eos_token_id=7)
    hf = transformers.GPT2LMHeadModel(config)
    spec = spec_for(hf, None, None, temperature=1.0)
    assert spec.eos == (7,) and spec.pad == 7 and spec.vocab == 300  # the generation_config's eos, as its generate
    wrapper = torch.nn.Module()
    wrapper.model, wrapper.vocab_size = hf, 280  # an HFCausalLM-like wrapper whose tokenizer has 280 tokens
    assert spec_for(wrapper, 10, 11).vocab == 280
    assert spec_for(wrapper, 290, 11).vocab == 300  # eos beyond 280: not the real vocabulary, nothing cut
