"""Sentence corpus (bundled text, deduplicated, hash splits) and SentencesDataModule batches."""

from types import SimpleNamespace

import pytest
import torch

from lit_distill.data.sentence_corpus import collect_sentences, docstring_texts, split_of, split_sentences
from lit_distill.data.sentences import LengthBucketSampler, SentencesDataModule

MODULE_SOURCE = '''"""A fake package for tests. It explains how parsing works without importing anything at all."""
raise RuntimeError("importing this module is a bug: docstrings must be read from the source")


def f():
    """Return the answer to the question that nobody asked here. See the other function for details."""


class C:
    """A class whose docstring repeats a sentence. Return the answer to the question that nobody asked here."""
'''


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    package = tmp_path / "fakedocs_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(MODULE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fakedocs_pkg"


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("transformers")
    from lit_distill.models.encoder_init import tiny_tokenizer

    return tiny_tokenizer(300)


def test_split_sentences_keeps_prose_and_drops_code_markup_and_fragments():
    text = (
        "The :func:`len` function returns the number of items in a container. Short one.\n\n"
        "   >>> len([1, 2, 3])\n   3\n\n"
        "def f(x): return x * 2 + some_call(y) if z else {}.\n\n"
        "Use ``sorted()`` to get a new sorted list from any iterable object!"
    )
    assert split_sentences(text) == [
        "The len function returns the number of items in a container.",
        "Use sorted() to get a new sorted list from any iterable object!",
    ]
    assert split_sentences("one two three four five six.", min_words=2, max_words=4) == []


def test_docstrings_are_read_without_importing_and_deduplicated(fake_package):
    texts = docstring_texts([fake_package])
    assert len(texts) == 3 and texts[0].startswith("A fake package for tests.")
    sentences = collect_sentences([fake_package], pydoc=False)
    assert sentences.count("Return the answer to the question that nobody asked here.") == 1
    assert "It explains how parsing works without importing anything at all." in sentences
    assert len(sentences) == len({s.lower() for s in sentences})


def test_unknown_package_is_named():
    with pytest.raises(ValueError, match="'no_such_package_xyz' is not installed"):
        docstring_texts(["no_such_package_xyz"])


def test_hash_split_is_stable_seeded_and_proportional():
    sentences = [f"Sentence number {i} is here." for i in range(4000)]
    splits = [split_of(s, 0, 0.05, 0.1) for s in sentences]
    assert abs(splits.count("heldout") / 4000 - 0.1) < 0.02
    assert abs(splits.count("val") / 4000 - 0.05) < 0.015
    assert splits == [split_of(s, 0, 0.05, 0.1) for s in sentences]  # the corpus around it plays no part
    assert splits != [split_of(s, 1, 0.05, 0.1) for s in sentences]


def test_bucket_sampler_visits_each_item_once_per_epoch_with_new_order():
    lengths = [int(x) for x in torch.randint(3, 60, (103,), generator=torch.Generator().manual_seed(0))]
    sampler = LengthBucketSampler(lengths, batch_size=8, bucket=4, seed=0)
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        assert sorted(i for b in epoch for i in b) == list(range(103)) and len(epoch) == len(sampler) == 13
    assert first != second
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first)
    plain = list(LengthBucketSampler(lengths, batch_size=8, bucket=1, seed=0))
    assert spread < sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain)


def test_datamodule_batches_tokenize_the_split_and_never_leak_heldout(tokenizer):
    dm = SentencesDataModule(tokenizer=tokenizer, packages=["json"], batch_size=16, max_length=128)
    dm.setup()
    train, val, heldout = (set(dm.sentences(s)) for s in ("train", "val", "heldout"))
    assert train and val and heldout and not (train & heldout) and not (val & heldout) and not (train & val)
    # 128 tokens hold nearly every sentence whole, so token rows map one to one to texts
    expected = {tuple(tokenizer(s, truncation=True, max_length=128)["input_ids"]) for s in dm.sentences("train")}
    heldout_ids = {tuple(tokenizer(s, truncation=True, max_length=128)["input_ids"]) for s in heldout}
    seen = set()
    for batch in dm.train_dataloader():
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            row = tuple(int(i) for i in ids[mask.bool()])
            assert mask[: int(mask.sum())].all()  # right padding only
            assert (ids[~mask.bool()] == tokenizer.pad_token_id).all()
            seen.add(row)
    assert seen == expected and not (seen & heldout_ids)
    assert sum(len(b["input_ids"]) for b in dm.test_dataloader()) == len(heldout)
    short = SentencesDataModule(tokenizer=tokenizer, packages=["json"], max_length=12)
    assert max(b["input_ids"].shape[1] for b in short.train_dataloader()) == 12


def test_views_repeat_each_sentence_in_consecutive_rows(tokenizer):
    dm = SentencesDataModule(tokenizer=tokenizer, packages=["json"], batch_size=8, views=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8
    torch.testing.assert_close(batch["input_ids"][0::2], batch["input_ids"][1::2])
    assert not torch.equal(batch["input_ids"][0], batch["input_ids"][2])
    assert len(next(iter(dm.val_dataloader()))["input_ids"]) == 8  # evaluation is never duplicated


def test_tokenizer_comes_from_the_teacher_or_a_clear_error(tokenizer):
    dm = SentencesDataModule(packages=["json"])
    with pytest.raises(ValueError, match="has no tokenizer"):
        dm.setup()
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(teacher=SimpleNamespace(tokenizer=tokenizer)))
    dm.setup()
    assert dm.tokenizer is tokenizer and dm.sentences("train")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heldout_fraction": 0.0}, "heldout_fraction=0.0"),
        ({"val_fraction": 0.6, "heldout_fraction": 0.5}, "sum below 1"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"min_words": 10, "max_words": 5}, "max_words must be >= 10, got 5"),
    ],
)
def test_bad_settings_fail_early(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SentencesDataModule(**kwargs)
