"""Sampling helpers (lit_distill.generation) and the predict-time GenerationModule."""

import pytest
import torch

from lit_distill.data.text import encode_instruction, pad_collate
from lit_distill.data.tokenizers import ByteTokenizer
from lit_distill.generation import GenerationModule
from lit_distill.generation.sampling import (
    IGNORE_INDEX,
    completion_batch,
    generate,
    left_pad,
    new_tokens,
    prompts_from_batch,
    sequence_nll,
)
from lit_distill.models import GPT

EOS, PAD = 256, 257


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny decode steps: one thread is much faster


def tiny_gpt(seed=0, **kwargs):
    torch.manual_seed(seed)
    return GPT(**{"block_size": 48, "n_layer": 1, "n_head": 2, "n_embd": 16, "tokenizer_id": "bytes", **kwargs})


def test_gpt_path_matches_gpt_generate_and_restores_train_mode():
    model = tiny_gpt().train()
    ids, mask = left_pad([[104, 105, 106], [120]], PAD)
    ours = generate(model, ids, mask, max_new_tokens=6, temperature=0.0, eos_token_id=EOS, pad_token_id=PAD)
    direct = model.eval().generate(ids, mask, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD)
    assert torch.equal(ours, direct)
    model.train()
    generate(model, ids, mask, max_new_tokens=2)
    assert model.training
    assert not ours.requires_grad


def test_sampling_is_seeded():
    model = tiny_gpt()
    ids = torch.randint(0, 256, (4, 5), generator=torch.Generator().manual_seed(0))
    a = generate(model, ids, max_new_tokens=12, temperature=1.0, seed=3)
    b = generate(model, ids, max_new_tokens=12, temperature=1.0, seed=3)
    c = generate(model, ids, max_new_tokens=12, temperature=1.0, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
    ],
)
def test_bad_sampling_settings_fail_early(kwargs, word):
    with pytest.raises(ValueError, match=word):
        generate(tiny_gpt(), torch.tensor([[1, 2]]), **kwargs)


def test_left_pad_and_prompts_from_an_instruction_batch():
    tok = ByteTokenizer()
    pairs = [("ab", "xyz"), ("long prompt", "r")]
    batch = pad_collate([encode_instruction(p, r, tok, 64) for p, r in pairs], tok.pad_id)
    ids, mask = prompts_from_batch(batch, tok.pad_id)
    for i, (prompt, _) in enumerate(pairs):
        assert ids[i][mask[i].bool()].tolist() == tok.encode(prompt)
        assert mask[i, : ids.shape[1] - len(prompt)].sum() == 0  # the padding is on the left
    with pytest.raises(ValueError, match="no prompt"):
        prompts_from_batch({"input_ids": batch["input_ids"], "labels": batch["input_ids"]}, tok.pad_id)


def test_completion_batch_labels_only_generated_tokens_up_to_eos():
    prompt_ids, prompt_mask = left_pad([[10, 11, 12], [20]], PAD)
    generated = torch.tensor([[30, EOS, PAD, PAD], [40, 41, 42, 43]])
    sequences = torch.cat([prompt_ids, generated], 1)
    batch = completion_batch(prompt_ids, prompt_mask, sequences, EOS, PAD)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 30, EOS], [20, 40, 41, 42, 43]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 30, EOS], [-100, 40, 41, 42, 43]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert new_tokens(sequences, 3, EOS) == [[30], [40, 41, 42, 43]]


def test_rebuilt_batch_reproduces_the_greedy_choices():
    """Right-padded training rows must align with what the left-padded generation saw, token for token."""
    model = tiny_gpt(seed=1).eval()
    prompt_ids, prompt_mask = left_pad([[104, 105, 106, 107], [120], [50, 51]], PAD)
    sequences = generate(model, prompt_ids, prompt_mask, max_new_tokens=8, temperature=0.0, eos_token_id=EOS)
    batch = completion_batch(prompt_ids, prompt_mask, sequences, EOS, PAD)
    logits = model(batch["input_ids"], batch["attention_mask"])[..., : model.vocab_size]
    counted = batch["labels"][:, 1:] != IGNORE_INDEX
    assert counted.sum() > 0
    assert torch.equal(logits[:, :-1].argmax(-1)[counted], batch["labels"][:, 1:][counted])


def test_sequence_nll_is_the_mean_over_labelled_tokens():
    model = tiny_gpt()
    batch = pad_collate([encode_instruction("abc", "defg", ByteTokenizer(), 32)], PAD)
    logits = model(batch["input_ids"])
    targets = batch["labels"][0, 1:]
    keep = targets != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[0, :-1][keep], targets[keep])
    assert torch.allclose(sequence_nll(model, batch), manual, atol=1e-6)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from lit_distill.models.hf import HFCausalLM

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=300, n_positions=64, n_embd=16, n_layer=1, n_head=2, eos_token_id=EOS, pad_token_id=PAD
    )
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(str(folder))
    return HFCausalLM(str(folder))


def test_hf_greedy_is_the_argmax_continuation_and_padding_is_handled(hf_model):
    prompt = torch.tensor([[5, 6, 7]])
    out = generate(hf_model, prompt, max_new_tokens=5, temperature=0.0, eos_token_id=299, pad_token_id=PAD)
    ids = prompt
    for _ in range(5):
        ids = torch.cat([ids, hf_model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    batch, mask = left_pad([[5, 6, 7], [9]], PAD)
    both = generate(hf_model, batch, mask, max_new_tokens=5, temperature=0.0, eos_token_id=299, pad_token_id=PAD)
    alone = generate(hf_model, torch.tensor([[9]]), max_new_tokens=5, temperature=0.0, eos_token_id=299)
    assert torch.equal(both[0], out[0]) and torch.equal(both[1, 2:], alone[0])


def test_hf_sampling_is_seeded_and_skips_padded_vocab_rows(hf_model):
    prompt = torch.tensor([[5, 6, 7], [8, 9, 10]])
    hf_model.vocab_size = 100  # pretend rows 100..299 only pad the head
    try:
        a = generate(hf_model, prompt, max_new_tokens=20, temperature=2.0, seed=1, eos_token_id=98, pad_token_id=99)
        b = generate(hf_model, prompt, max_new_tokens=20, temperature=2.0, seed=1, eos_token_id=98, pad_token_id=99)
        c = generate(hf_model, prompt, max_new_tokens=20, temperature=2.0, seed=2, eos_token_id=98, pad_token_id=99)
    finally:
        hf_model.vocab_size = 300
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a[:, 3:].max()) < 100 and int(c[:, 3:].max()) < 100


def test_generation_module_writes_rows_and_checks_the_tokenizer():
    module = GenerationModule(model=tiny_gpt(), max_new_tokens=6, temperature=1.0, seed=5)
    prompts = ["def f", "A list"]
    rows = module.predict_step({"prompt": prompts}, 0)
    again = module.predict_step({"prompt": prompts}, 7)
    assert [r["prompt"] for r in rows] == prompts and rows == again  # seeded by the prompts, not the batch index
    ids, mask = left_pad([ByteTokenizer().encode(p) for p in prompts], PAD)
    seed = (5 * 1_000_003 + __import__("zlib").crc32("\n".join(prompts).encode())) % 2**63
    out = generate(module.model, ids, mask, max_new_tokens=6, temperature=1.0, eos_token_id=EOS, seed=seed)
    tok = ByteTokenizer()
    assert [r["response"] for r in rows] == [tok.decode(t) for t in new_tokens(out, ids.shape[1], EOS)]
    assert module.generation_settings()["temperature"] == 1.0
    with pytest.raises(ValueError, match="tokenizer"):
        GenerationModule(model=tiny_gpt(tokenizer_id="hf:abc"))


def test_generation_module_is_a_plain_lightning_module_with_its_settings_as_hyperparameters():
    from lightning.pytorch import LightningModule

    from lit_distill import DistillationModule

    module = GenerationModule(model=tiny_gpt(), max_new_tokens=6, temperature=0.5, top_k=3)
    assert isinstance(module, LightningModule) and not isinstance(module, DistillationModule)
    assert dict(module.hparams) == {
        "checkpoint": None, "checkpoint_prefix": None, "tokenizer": None, "max_new_tokens": 6, "temperature": 0.5,
        "top_k": 3, "top_p": None, "seed": 0, "fast": "auto", "allow_untrained": False,
    }  # fmt: skip
    assert [name for name, _ in module.named_children()] == ["model"]  # no losses, no teacher
