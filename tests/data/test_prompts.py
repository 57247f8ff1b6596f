"""The embedded prompt set, the resumable JSONL writer, and the sequence-KD data it produces."""

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lit_distill.callbacks.generation import JsonlPredictionWriter
from lit_distill.data import PromptDataModule
from lit_distill.data.prompts import corpus_prompts, read_prompts
from lit_distill.data.text import IGNORE_INDEX, pydoc_documents, read_instructions
from lit_distill.generation import GenerationModule
from lit_distill.losses import CrossEntropy
from lit_distill.models import GPT
from lit_distill.outputs import ModelOutput

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny decode steps on a shared machine: one thread is much faster than two
    yield
    torch.set_num_threads(old)


class CountingGenerator(GenerationModule):
    """Records every prompt it is asked to answer."""

    def __init__(self, **kwargs):
        torch.manual_seed(0)
        model = GPT(block_size=48, n_layer=1, n_head=2, n_embd=16, tokenizer_id="bytes")
        kwargs.setdefault("allow_untrained", True)  # a random GPT: the tests check the writer, not the text
        super().__init__(model=model, max_new_tokens=kwargs.pop("max_new_tokens", 6), **kwargs)
        self.seen = []

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen += batch["prompt"]
        return super().predict_step(batch, batch_idx, dataloader_idx)


def data(n=10):
    return PromptDataModule(prompt_chars=20, response_chars=16, batch_size=4, max_prompts=n, predict_split="all")


def predict(path, module=None, dm=None, overwrite=False, **trainer_kwargs):
    module = module or CountingGenerator()
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[JsonlPredictionWriter(str(path), overwrite=overwrite)],
        **trainer_kwargs,
    )
    predictions = trainer.predict(module, datamodule=dm or data())
    return module, [row for batch in predictions for row in batch]


def test_corpus_prompts_come_from_the_pydoc_text():
    pairs = corpus_prompts(prompt_chars=40, response_chars=30)
    assert len(pairs) > 500 and pairs == corpus_prompts(prompt_chars=40, response_chars=30)
    assert len({p for p, _ in pairs}) == len(pairs)
    corpus = "\n".join(pydoc_documents())
    for prompt, response in pairs[::97]:
        assert len(prompt) <= 40 and 0 < len(response) <= 30
        assert prompt + response in corpus  # a prompt and its reference are one contiguous stretch of the corpus


def test_prompt_datamodule_splits_and_excludes():
    dm = PromptDataModule(batch_size=8, max_prompts=60, val_fraction=0.2, test_fraction=0.1)
    dm.setup()
    train, val, test = ({p for p, _ in dm.splits[s]} for s in ("train", "val", "test"))
    assert len(train) == 42 and len(val) == 12 and len(test) == 6 and not (train & val or train & test or val & test)
    first = next(iter(dm.predict_dataloader()))["prompt"]
    dm.exclude_prompts(first[:3])
    assert not set(first[:3]) & set(dm.pending_prompts()) and len(dm.pending_prompts()) == 39


def test_jsonl_round_trip(in_tmp):
    path = in_tmp / "out" / "pairs.jsonl"
    _, rows = predict(path)
    assert read_instructions(str(path)) == [(r["prompt"], r["response"]) for r in rows]
    dm = data()
    dm.setup()
    assert [p for p, _ in read_prompts(path)] == [p for p, _ in dm.splits["all"]]
    assert json.loads(Path(f"{path}.meta.json").read_text())["finished"] is True


def test_resume_skips_done_prompts_and_matches_an_uninterrupted_run(in_tmp):
    whole, _ = predict(in_tmp / "whole.jsonl")
    partial, _ = predict(in_tmp / "pairs.jsonl", limit_predict_batches=2)
    assert len(partial.seen) == 8 and json.loads((in_tmp / "pairs.jsonl.meta.json").read_text())["finished"] is False
    resumed, _ = predict(in_tmp / "pairs.jsonl")
    assert not set(resumed.seen) & set(partial.seen) and len(resumed.seen) == 2
    rows = read_instructions(str(in_tmp / "pairs.jsonl"))
    assert sorted(rows) == sorted(read_instructions(str(in_tmp / "whole.jsonl")))  # greedy: same text either way
    assert len(whole.seen) == 10


def test_finished_file_is_kept_unless_overwrite(in_tmp):
    path = in_tmp / "pairs.jsonl"
    predict(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        predict(path)
    assert path.read_bytes() == before
    module, rows = predict(path, module=CountingGenerator(temperature=1.0, seed=3), overwrite=True)
    assert len(module.seen) == 10 and read_instructions(str(path)) == [(r["prompt"], r["response"]) for r in rows]


def test_resume_with_other_settings_is_refused(in_tmp):
    path = in_tmp / "pairs.jsonl"
    predict(path, limit_predict_batches=1)
    with pytest.raises(ValueError, match="temperature"):
        predict(path, module=CountingGenerator(temperature=0.7))


def test_a_torn_last_line_is_dropped_on_resume(in_tmp):
    path = in_tmp / "pairs.jsonl"
    predict(path, limit_predict_batches=1)
    good = path.read_bytes()
    path.write_bytes(good + b'{"prompt": "half a ro')
    module, _ = predict(path)
    assert len(module.seen) == 6
    rows = read_instructions(str(path))
    assert len(rows) == 10 and len({p for p, _ in rows}) == 10 and path.read_bytes().startswith(good)


def test_loss_mask_covers_only_response_tokens(in_tmp):
    path = in_tmp / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in [("ab", "xyz"), ("q", "rs")]))
    dm = PromptDataModule(prompts=str(path), batch_size=2, val_fraction=0.0, test_fraction=0.0)
    batch = next(iter(dm.train_dataloader()))
    tok = dm.tokenizer
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        counted = labels[labels != IGNORE_INDEX].tolist()
        assert counted[-1] == tok.eos_id and tok.decode(counted) in ("xyz", "rs")
        prompt_len = 2 if tok.decode(counted) == "xyz" else 1
        assert (labels[:prompt_len] == IGNORE_INDEX).all() and ids[:prompt_len].tolist() != counted[:prompt_len]
    logits = torch.randn(*batch["input_ids"].shape, tok.vocab_size, requires_grad=True)
    CrossEntropy()(ModelOutput(logits=logits), None, batch).backward()
    predicts_response = torch.zeros_like(batch["labels"], dtype=torch.bool)
    predicts_response[:, :-1] = batch["labels"][:, 1:] != IGNORE_INDEX  # position t is scored on token t+1
    assert (logits.grad.abs().sum(-1) > 0).eq(predicts_response).all()


def test_missing_generated_file_names_the_command_that_writes_it(in_tmp):
    from lit_distill.cli.recipes import producer_hint

    with pytest.raises(FileNotFoundError, match="generated/text/teacher_responses.jsonl' does not exist") as missing:
        read_prompts("generated/text/teacher_responses.jsonl")
    # the library names the file; the command line adds the shipped recipe that writes it
    assert (
        producer_hint(str(missing.value))
        == " Create it first with: lit-distill predict --config configs/text/generate.yaml"
    )
