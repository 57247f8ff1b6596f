"""TextDataModule: pydoc blocks, local files, prompt/response JSONL masking, late binding, byte tokenizer."""

import json

import pytest
import torch

from lit_distill.data import ByteTokenizer, TextDataModule
from lit_distill.data.text import pydoc_documents
from lit_distill.data.tokenizers import load_tokenizer


def test_byte_tokenizer_round_trips_any_text():
    tok = ByteTokenizer()
    text = "def f(x):\n    return x ** 2  # é, 漢字, 🙂"
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text) + [tok.eos_id, tok.pad_id]) == text
    assert (tok.vocab_size, tok.eos_id, tok.pad_id, tok.tokenizer_id) == (258, 256, 257, "bytes")
    assert isinstance(load_tokenizer("bytes"), ByteTokenizer) and isinstance(load_tokenizer(None), ByteTokenizer)


def test_pydoc_blocks_and_seeded_splits():
    dm = TextDataModule(seq_len=64, batch_size=4, seed=0)
    dm.setup("fit")
    sizes = {k: len(v) for k, v in dm.splits.items()}
    stream = sum(len(d.encode("utf-8")) + 1 for d in pydoc_documents())  # +1: one eos per document
    assert sum(sizes.values()) == stream // 64
    assert sizes["val"] == int(stream // 64 * 0.1) and sizes["test"] == int(stream // 64 * 0.05)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels"}  # fixed blocks: no padding, no mask needed
    assert batch["input_ids"].shape == (4, 64) and torch.equal(batch["labels"], batch["input_ids"])
    assert int(batch["input_ids"].max()) < 258

    parts = dm.split_indices
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(sum(sizes.values())))  # disjoint, all
    again, other = TextDataModule(seq_len=64, seed=0), TextDataModule(seq_len=64, seed=1)
    again.setup()
    other.setup()
    assert again.split_indices == parts and other.split_indices["val"] != parts["val"]
    assert all(torch.equal(a, b) for a, b in zip(again.splits["val"], dm.splits["val"]))


def test_blocks_are_the_documents_in_order(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second doc!")
    (tmp_path / "skip.md").write_text("not matched")
    dm = TextDataModule(files=[str(tmp_path)], seq_len=4, val_fraction=0.2, test_fraction=0.0, batch_size=2)
    dm.setup()
    blocks = sorted(tuple(x.tolist()) for rows in dm.splits.values() for x in rows)
    stream = list(b"hello world") + [256] + list(b"second doc!") + [256]
    assert blocks == sorted(tuple(stream[i : i + 4]) for i in range(0, 24, 4))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextDataModule(files=[str(tmp_path / "nope.txt")]).setup()
    with pytest.raises(FileNotFoundError, match="no files matching"):
        TextDataModule(files=[str(tmp_path)], pattern="*.rst").setup()


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_instructions_mask_prompt_and_padding(tmp_path):
    rows = [{"prompt": f"Q{i}: what is {i}+{i}? ", "response": f"{2 * i}" * (i % 3 + 1)} for i in range(20)]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    dm = TextDataModule(instructions=path, seq_len=64, batch_size=5, val_fraction=0.2, test_fraction=0.0)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    by_prompt = {r["prompt"].encode(): r for r in rows}
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        n = int(mask.sum())
        assert (mask[:n] == 1).all() and (mask[n:] == 0).all()  # right padding
        assert (labels[n:] == -100).all() and (ids[n:] == 257).all()
        text = bytes(ids[: n - 1].tolist())
        prompt = next(p for p in by_prompt if text.startswith(p))
        response = by_prompt[prompt]["response"].encode()
        assert (labels[: len(prompt)] == -100).all()
        assert labels[len(prompt) : n].tolist() == list(response) + [256]  # response and eos are learned
        assert ids[len(prompt) : n].tolist() == labels[len(prompt) : n].tolist()


def test_instructions_truncate_and_reject_bad_lines(tmp_path):
    path = write_jsonl(
        tmp_path / "long.jsonl", [{"prompt": "p" * 10, "response": "r" * 50}, {"prompt": "x" * 40, "response": "y"}]
    )
    dm = TextDataModule(instructions=path, seq_len=16, val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    (only,) = dm.splits["train"]  # the second example's prompt fills all 16 tokens: nothing to learn, dropped
    assert len(only["input_ids"]) == 16 and int((only["labels"] != -100).sum()) == 6
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: expected an object with string 'prompt' and 'response'"):
        TextDataModule(instructions=str(bad)).setup()
    with pytest.raises(ValueError, match="either `files`"):
        TextDataModule(files=["a"], instructions="b")


def test_connect_binds_late_and_only_before_setup():
    dm = TextDataModule(seq_len=32, batch_size=2, max_blocks=40)
    dm.connect(batch_size=3, seq_len=16)
    dm.setup()
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (3, 16)
    with pytest.raises(RuntimeError, match="before setup"):
        dm.connect(batch_size=4)
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        TextDataModule(seq_len=1)
    with pytest.raises(FileNotFoundError, match="tokenizer directory './missing/tok' does not exist"):
        load_tokenizer("./missing/tok")
