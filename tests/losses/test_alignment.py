"""Byte-span alignment (lit_distill.losses.functional.alignment): each case's groups written out by hand."""

import pytest
import torch

from lit_distill.losses.functional.alignment import aligned_pairs, alignment_groups, alignment_keys


def spans(*pairs):
    return torch.tensor(pairs, dtype=torch.long).view(-1, 2)


def test_multibyte_characters_split_differently_on_the_two_sides():
    # "aé日" is 6 bytes: a | é (2 bytes) | 日 (3 bytes). Student: one token per byte. Teacher: a byte-level BPE
    # whose tokens cut through the characters at other places ("a\xc3", "\xa9\xe6", "\x97\xa5").
    student = spans((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6))
    teacher = spans((0, 2), (2, 4), (4, 6))
    assert alignment_groups(student, teacher) == [([0, 1], [0]), ([2, 3], [1]), ([4, 5], [2])]


def test_pieces_of_one_character_reported_with_the_characters_span():
    # Character offsets give both pieces of é the span of the whole character: only the last piece has read it.
    student = spans((0, 1), (1, 2), (2, 3), (3, 6))
    teacher = spans((0, 1), (1, 3), (1, 3), (3, 6))
    assert alignment_groups(student, teacher) == [([0], [0]), ([1, 2], [1, 2]), ([3], [3])]


def test_bos_on_one_side_only():
    # Student: <bos> "He" "llo"; teacher: "Hel" "lo". The BOS has read no text: it joins the first group.
    student = spans((0, 0), (0, 2), (2, 5))
    teacher = spans((0, 3), (3, 5))
    assert alignment_groups(student, teacher) == [([0, 1, 2], [0, 1])]


def test_bos_on_both_sides_aligns():
    student = spans((0, 0), (0, 2), (2, 5))
    teacher = spans((0, 0), (0, 5))
    assert alignment_groups(student, teacher) == [([0], [0]), ([1, 2], [1])]


def test_eos_after_the_text_is_its_own_group():
    # "hello" then each side's eos (zero-width at byte 5): after the text both predict the eos, after the eos both
    # have read text + eos.
    student = spans((0, 2), (2, 5), (5, 5))
    teacher = spans((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 5))
    assert alignment_groups(student, teacher) == [([0], [0, 1]), ([1], [2, 3, 4]), ([2], [5])]


def test_eos_on_one_side_only_stays_out_of_every_group():
    student = spans((0, 2), (2, 5), (5, 5))
    teacher = spans((0, 3), (3, 5))
    assert alignment_groups(student, teacher) == [([0, 1], [0, 1])]


def test_right_padding_is_never_aligned():
    # Student "ab" "c" + 2 pads, teacher "a" "bc" + 1 pad; pad spans are (0, 0) and would look like a BOS.
    student, s_valid = spans((0, 2), (2, 3), (0, 0), (0, 0)), torch.tensor([1, 1, 0, 0])
    teacher, t_valid = spans((0, 1), (1, 3), (0, 0)), torch.tensor([1, 1, 0])
    assert alignment_groups(student, teacher, s_valid, t_valid) == [([0, 1], [0, 1])]


def test_left_padding_is_never_aligned():
    student, s_valid = spans((0, 0), (0, 0), (0, 2), (2, 3)), torch.tensor([0, 0, 1, 1])
    teacher, t_valid = spans((0, 0), (0, 1), (1, 2), (2, 3)), torch.tensor([0, 1, 1, 1])
    assert alignment_groups(student, teacher, s_valid, t_valid) == [([2], [1, 2]), ([3], [3])]


def test_padding_in_a_batch_gives_the_pairs_of_each_row():
    # Row 0 right-padded on the student side, row 1 left-padded on the teacher side.
    s_off = torch.stack([spans((0, 1), (1, 2), (0, 0)), spans((0, 2), (2, 3), (3, 4))])
    s_valid = torch.tensor([[1, 1, 0], [1, 1, 1]])
    t_off = torch.stack([spans((0, 2), (0, 0), (0, 0)), spans((0, 0), (0, 1), (1, 4))])
    t_valid = torch.tensor([[1, 0, 0], [0, 1, 1]])
    rows, s_pos, t_pos = aligned_pairs(s_off, t_off, s_valid, t_valid)
    assert list(zip(rows.tolist(), s_pos.tolist(), t_pos.tolist())) == [(0, 1, 0), (1, 2, 2)]


def test_a_truncated_example_aligns_up_to_the_shorter_side():
    # Both sides read "abcdefg" but the teacher was cut after byte 5: the student's last tokens form no group.
    student = spans((0, 2), (2, 4), (4, 7))
    teacher = spans((0, 1), (1, 2), (2, 3), (3, 4), (4, 5))
    assert alignment_groups(student, teacher) == [([0], [0, 1]), ([1], [2, 3])]


def test_no_span_aligns():
    # "abcd": the student cuts at bytes 1 and 3, the teacher at 2 and 4 (the text differs in length: truncated).
    student = spans((0, 1), (1, 3))
    teacher = spans((0, 2), (2, 4))
    assert alignment_groups(student, teacher) == []
    rows, s_pos, t_pos = aligned_pairs(student[None], teacher[None])
    assert rows.numel() == s_pos.numel() == t_pos.numel() == 0


def test_the_same_tokenization_aligns_every_position():
    offsets = spans((0, 0), (0, 3), (3, 4), (4, 9), (9, 9))
    rows, s_pos, t_pos = aligned_pairs(offsets[None], offsets[None])
    assert s_pos.tolist() == t_pos.tolist() == [0, 1, 2, 3, 4]


def test_keys_count_zero_width_tokens_at_a_byte():
    keys, ok = alignment_keys(spans((0, 0), (0, 3), (3, 3), (3, 3))[None], stride=10)
    assert keys.tolist() == [[1, 30, 31, 32]] and ok.all()


@pytest.mark.parametrize(
    ("offsets", "message"),
    [(torch.zeros(2, 3), r"\[batch, tokens, 2\]"), (torch.zeros(1, 3, 3), r"\[batch, tokens, 2\]")],
)
def test_bad_offsets_are_refused(offsets, message):
    with pytest.raises(ValueError, match=message):
        aligned_pairs(offsets, torch.zeros(1, 3, 2))


def test_a_valid_mask_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="valid mask"):
        aligned_pairs(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.ones(1, 2))


def test_rows_must_match():
    with pytest.raises(ValueError, match="same examples"):
        aligned_pairs(torch.zeros(2, 3, 2), torch.zeros(1, 3, 2))
