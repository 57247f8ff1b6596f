"""The vocabulary map of two tokenizers: classes by token text or by first byte, specials by role."""

import pytest
import torch

from lit_distill.losses.vocab_map import VocabMap, build_vocab_map, vocab_map

STUDENT = [b"a", b"b", b"ab", b" the", b"", b"<|endoftext|>"]  # 4: a token without text, 5: the eos
TEACHER = [b" the", b"a", b"abc", b"x", b"</s>", b"<pad>"]  # 4: eos, 5: pad
S_ROLES, T_ROLES = {5: "eos"}, {4: "eos", 5: "pad"}


def test_token_match_pairs_equal_texts_and_specials_by_role():
    m = build_vocab_map(STUDENT, TEACHER, S_ROLES, T_ROLES, match="token")
    pairs = {(i, j) for i in range(6) for j in range(6) if m.student[i] >= 0 and m.student[i] == m.teacher[j]}
    assert pairs == {(0, 1), (3, 0), (5, 4)}  # "a", " the", eos; "b", "ab", "abc", "x", pad: no twin
    assert m.classes == 3 and m.student[4] == -1 and m.teacher[5] == -1


def test_byte_match_pairs_tokens_by_their_first_byte():
    m = build_vocab_map(STUDENT, TEACHER, S_ROLES, T_ROLES, match="byte")
    by_class = {int(c): ([i for i in range(6) if m.student[i] == c], [j for j in range(6) if m.teacher[j] == c])
                for c in range(m.classes)}  # fmt: skip
    assert sorted(by_class.values()) == [([0, 2], [1, 2]), ([3], [0]), ([5], [4])]  # "a"/"ab" ~ "a"/"abc"; " "; eos


def test_fit_pads_classes_to_the_heads_and_refuses_a_narrow_head():
    m = VocabMap(torch.tensor([0, -1]), torch.tensor([0]), 1)
    s, t, n = m.fit(4, 2)
    assert s.tolist() == [0, -1, -1, -1] and t.tolist() == [0, -1] and n == 1
    with pytest.raises(ValueError, match="student's LM head has 1 rows but its tokenizer has 2 tokens"):
        m.fit(1, 2)


def test_a_map_is_built_once_per_key():
    calls = []

    def build():
        calls.append(1)
        return VocabMap(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), 1)

    first, second = vocab_map(("test-key", 1), build), vocab_map(("test-key", 1), build)
    assert first is second and len(calls) == 1


def test_an_unknown_match_is_refused():
    with pytest.raises(ValueError, match="match must be one of"):
        build_vocab_map([b"a"], [b"a"], match="word")
