"""Token bytes and byte spans of encoded text: bytes, byte-level BPE, SentencePiece-style Unigram, specials."""

import pytest

from lit_distill.data.byte_offsets import char_to_byte, encode_with_offsets, special_roles, token_bytes
from lit_distill.data.tokenizers import ByteTokenizer, HFTokenizer

TEXTS = ["héllo wörld, the cat sat", "naïve café 日本語 text", "def f(x): return x + 1"] * 30
TEXT = "x é日 the café, wörld 日本"


@pytest.fixture(scope="module")
def bpe():
    pytest.importorskip("transformers")
    from tests.configs.test_text_configs import make_tiny_hf_models

    return HFTokenizer.wrap(make_tiny_hf_models().build_chat_tokenizer(300, texts=TEXTS))


@pytest.fixture(scope="module")
def unigram():
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.Unigram())
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<eos>", "<pad>", "<unk>"], unk_token="<unk>")
    core.train_from_iterator(TEXTS, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    return HFTokenizer.wrap(hf)


def covered(text, spans):
    data = text.encode("utf-8")
    return [data[a:b] for a, b in spans]


def test_char_to_byte_counts_utf8_lengths():
    assert char_to_byte("aé日🙂").tolist() == [0, 1, 3, 6, 10]


def test_byte_tokenizer_spans_are_one_byte_each():
    ids, spans = encode_with_offsets(ByteTokenizer(), "é!")
    assert ids == [195, 169, 33] and spans == [(0, 1), (1, 2), (2, 3)]
    assert token_bytes(ByteTokenizer())[:2] == [b"\x00", b"\x01"] and len(token_bytes(ByteTokenizer())) == 258


def test_byte_level_bpe_spans_cut_through_characters_exactly(bpe):
    ids, spans = encode_with_offsets(bpe, TEXT)
    vocab = token_bytes(bpe)
    # Every token covers exactly its own bytes, and the tokens tile the text: pieces of one character get the
    # bytes they hold, not the character's span.
    assert covered(TEXT, spans) == [vocab[i] for i in ids]
    assert b"".join(covered(TEXT, spans)) == TEXT.encode("utf-8")
    assert all(a < b for a, b in spans)


def test_metaspace_prefix_does_not_read_the_first_word(unigram):
    ids, spans = encode_with_offsets(unigram, "the cat")
    pieces = unigram.tokenizer.convert_ids_to_tokens(ids)
    assert pieces[0] == "▁"  # the word-start marker SentencePiece puts before the first word: no text of its own
    assert spans[0][1] == spans[1][1]  # it ends where the first real piece ends (so it never aligns)
    assert b"".join(covered("the cat", spans[1:])) == b"the cat"
    assert token_bytes(unigram)[unigram.tokenizer.convert_tokens_to_ids("▁")] == b" "


def test_special_tokens_written_in_the_text_cover_their_bytes(bpe):
    text = "hi<|im_end|>"
    ids, spans = encode_with_offsets(bpe, text)
    end = bpe.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ids[-1] == end and covered(text, spans)[-1] == b"<|im_end|>"


def test_special_roles_by_what_they_do(bpe):
    assert special_roles(ByteTokenizer()) == {256: "eos", 257: "pad"}
    roles = special_roles(bpe)
    assert roles[bpe.eos_id] == "eos" and roles[bpe.pad_id] == "pad"


def test_a_tokenizer_without_offsets_is_refused_naming_the_methods():
    class Words:
        tokenizer_id, vocab_size, eos_id, pad_id = "words", 10, 8, 9

        def encode(self, text):
            return [1]

    with pytest.raises(TypeError, match="token_bytes"):
        token_bytes(Words())
    with pytest.raises(TypeError, match="encode_with_offsets"):
        encode_with_offsets(Words(), "x")


def test_a_tokenizer_object_with_its_own_offsets_is_used():
    class Own(ByteTokenizer):
        tokenizer_id = "own"

        def encode_with_offsets(self, text):
            return [7], [(0, len(text))]

        def token_bytes(self):
            return [b"?"] * 258

    assert encode_with_offsets(Own(), "abc") == ([7], [(0, 3)]) and token_bytes(Own())[0] == b"?"
