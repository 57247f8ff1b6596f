"""One text, two tokenizations: pieces, common cuts, corpus blocks, padding, and every text DataModule."""

import json

import pytest
import torch

from lit_distill.data import ChatDataModule, PromptDataModule, TextDataModule
from lit_distill.data.cross_tokenizer import EOS, Side, blocks, collate_side, cut_both, tokenize
from lit_distill.data.tokenizers import ByteTokenizer
from lit_distill.losses.functional.alignment import aligned_pairs

IGNORE = -100
TEXTS = ["héllo wörld, the cat sat on the mat", "naïve café 日本語 text", "def f(x): return x + 1"] * 30


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from tests.configs.test_text_configs import make_tiny_hf_models

    root = tmp_path_factory.mktemp("xtok_tok")
    make_tiny_hf_models().build_chat_tokenizer(300, texts=TEXTS).save_pretrained(str(root))
    return str(root)


def side(spans, learned=None):
    learned = learned if learned is not None else [True] * len(spans)
    ids = list(range(len(spans)))
    return Side(ids, [i if keep else IGNORE for i, keep in zip(ids, learned)], list(spans))


def test_pieces_are_tokenized_one_by_one_with_continuing_spans():
    got = tokenize(ByteTokenizer(), [("ab", False), ("é", True), (EOS, True)])
    assert got == Side(
        [97, 98, 195, 169, 256], [IGNORE, IGNORE, 195, 169, 256], [(0, 1), (1, 2), (2, 3), (3, 4), (4, 4)]
    )


def test_a_cut_falls_where_both_sides_read_the_same_text():
    # "abcdef" + eos. Student: bytes; teacher: "ab" "c" "def" eos. The student may keep 5 tokens: the last common
    # cut below that is after "c" (student 3 tokens, teacher 2), never "abcde" on one side and "abc" on the other.
    student = side([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 6)])
    teacher = side([(0, 2), (2, 3), (3, 6), (6, 6)])
    s, t = cut_both(student, teacher, max_student=5, max_teacher=10)
    assert s.offsets == [(0, 1), (1, 2), (2, 3)] and t.offsets == [(0, 2), (2, 3)]
    s, t = cut_both(student, teacher, max_student=10, max_teacher=3)  # now the teacher's limit binds
    assert s.offsets == student.offsets[:6] and t.offsets == teacher.offsets[:3]
    assert cut_both(student, teacher, 7, 4) == (student, teacher)  # both fit: nothing is cut
    assert cut_both(student, teacher, 1, 10) is None  # no common cut within one student token


def test_a_stream_is_cut_into_blocks_at_common_cuts():
    # "abcdefgh": student bytes, teacher "abc" "de" "fgh". Blocks of at most 4 student tokens: "abc" then "de"
    # (adding "fgh" would make 6), then "fgh". Each block's spans restart at 0.
    student = side([(i, i + 1) for i in range(8)])
    teacher = side([(0, 3), (3, 5), (5, 8)])
    got = blocks(student, teacher, max_student=4, max_teacher=4)
    assert [(s.offsets, t.offsets) for s, t in got] == [
        ([(0, 1), (1, 2), (2, 3)], [(0, 3)]),
        ([(0, 1), (1, 2)], [(0, 2)]),
        ([(0, 1), (1, 2), (2, 3)], [(0, 3)]),
    ]
    assert got[1][0].ids == [3, 4] and got[1][1].ids == [1]


def test_collate_pads_each_side_with_its_own_pad():
    rows = [
        {
            "input_ids": torch.tensor([1, 2]),
            "labels": torch.tensor([IGNORE, 2]),
            "offsets": torch.tensor([[0, 1], [1, 2]]),
        },
        {"input_ids": torch.tensor([3]), "labels": torch.tensor([3]), "offsets": torch.tensor([[0, 4]])},
    ]
    batch = collate_side(rows, pad_id=9)
    assert batch["input_ids"].tolist() == [[1, 2], [3, 9]] and batch["labels"].tolist() == [[IGNORE, 2], [3, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]] and batch["offsets"][1].tolist() == [[0, 4], [0, 0]]


def learned_bytes(batch, prefix, row):
    """Byte positions covered by the tokens learned on one side of one example."""
    labels, offsets = batch[f"{prefix}labels"][row], batch[f"{prefix}offsets"][row]
    return {b for (a, e), y in zip(offsets.tolist(), labels.tolist()) if y != IGNORE for b in range(a, e)}


def read_bytes(batch, prefix, row):
    mask, offsets = batch[f"{prefix}attention_mask"][row].bool(), batch[f"{prefix}offsets"][row]
    return int(offsets[mask][:, 1].max())


def check_two_sided(batch, seq_len, teacher_seq_len):
    assert batch["input_ids"].shape[1] <= seq_len and batch["teacher_input_ids"].shape[1] <= teacher_seq_len
    for row in range(batch["input_ids"].shape[0]):
        assert learned_bytes(batch, "", row) == learned_bytes(batch, "teacher_", row)
        assert learned_bytes(batch, "", row)  # something is learned on both sides
        assert read_bytes(batch, "", row) == read_bytes(batch, "teacher_", row)  # the same text, never one shorter
    rows, _, _ = aligned_pairs(
        batch["offsets"], batch["teacher_offsets"], batch["attention_mask"], batch["teacher_attention_mask"]
    )
    assert set(rows.tolist()) == set(range(batch["input_ids"].shape[0]))


def test_corpus_blocks_carry_both_tokenizations(bpe_dir, tmp_path):
    (tmp_path / "a.txt").write_text(" ".join(TEXTS[:30]), encoding="utf-8")
    dm = TextDataModule(
        tokenizer=bpe_dir, teacher_tokenizer="bytes", files=[str(tmp_path)], seq_len=16, teacher_seq_len=40,
        batch_size=4, val_fraction=0.2, test_fraction=0.0,
    )  # fmt: skip
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {
        f"{p}{k}" for p in ("", "teacher_") for k in ("input_ids", "labels", "attention_mask", "offsets")
    }
    check_two_sided(batch, 16, 40)
    assert dm.teacher_vocab_size == 258 and dm.teacher_tokenizer_id == "bytes"
    assert max(len(x["teacher_input_ids"]) for x in dm.splits["train"]) > 30  # blocks use the room they have


def test_instruction_pairs_learn_the_same_response_on_both_sides(bpe_dir, tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "Q: café?", "response": " A: a naïve 日本 answer"}, {"prompt": "Q: x", "response": " A: y"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows * 5), encoding="utf-8")
    dm = TextDataModule(tokenizer="bytes", teacher_tokenizer=bpe_dir, instructions=str(path), seq_len=64, batch_size=4)
    dm.setup()
    check_two_sided(next(iter(dm.train_dataloader())), 64, 64)


def test_a_response_cut_by_the_teacher_limit_is_cut_on_both_sides(bpe_dir):
    dm = PromptDataModule(
        tokenizer=bpe_dir, teacher_tokenizer="bytes", seq_len=64, teacher_seq_len=60, batch_size=8, max_prompts=16
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    check_two_sided(batch, 64, 60)
    assert int(batch["teacher_attention_mask"].sum(1).max()) == 60  # the byte side's limit binds here
    assert 256 not in batch["teacher_input_ids"][batch["teacher_attention_mask"].sum(1) == 60]  # no eos: cut


def test_chat_learns_assistant_tokens_on_both_sides(bpe_dir, tmp_path):
    messages = [
        {"role": "user", "content": "What is café?"},
        {"role": "assistant", "content": "A naïve 日本 place."},
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": "No."},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text((json.dumps({"messages": messages}, ensure_ascii=False) + "\n") * 4, encoding="utf-8")
    dm = ChatDataModule(str(path), bpe_dir, teacher_tokenizer="bytes", seq_len=96, teacher_seq_len=256, batch_size=2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    check_two_sided(batch, 96, 256)
    row = batch["teacher_input_ids"][0][batch["teacher_labels"][0] != IGNORE]
    assert bytes(row.tolist()) == "A naïve 日本 place.<|im_end|>No.<|im_end|>".encode()


def test_chat_whose_prompt_fills_the_teacher_limit_is_refused_with_its_line(bpe_dir, tmp_path):
    path = tmp_path / "chat.jsonl"
    chat = [{"role": "user", "content": "x" * 80}, {"role": "assistant", "content": "y"}]
    path.write_text(json.dumps({"messages": chat}) + "\n", encoding="utf-8")
    dm = ChatDataModule(str(path), bpe_dir, teacher_tokenizer="bytes", seq_len=200, teacher_seq_len=50, val_fraction=0)
    dm.setup()
    with pytest.raises(ValueError, match=r"chat.jsonl:1: no assistant token fits.*teacher_seq_len=50"):
        dm.train_dataloader()


def test_vocabularies_describe_both_sides(bpe_dir):
    dm = TextDataModule(tokenizer=bpe_dir, teacher_tokenizer="bytes")
    vocabs = dm.vocabularies()
    assert vocabs["teacher"]["id"] == "bytes" and vocabs["teacher"]["roles"] == {256: "eos", 257: "pad"}
    assert len(vocabs["student"]["bytes"]) == dm.vocab_size and vocabs["student"]["id"].startswith("hf:")
    same = TextDataModule().vocabularies()  # without a teacher tokenizer both sides are the student's
    assert same["student"] == same["teacher"]
