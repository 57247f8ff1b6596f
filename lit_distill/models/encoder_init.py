"""Starting points for sentence-encoder students: DistilBERT-style layer copies, feed-forward pruning, and a
tiny in-memory tokenizer for random test encoders (no files, no download)."""

from __future__ import annotations

import copy
import re
from typing import Any

from torch import Tensor, nn


def every_other(num_teacher_layers: int, num_layers: int) -> list[int]:
    """Evenly spaced teacher layers to copy, starting at 0: ``every_other(6, 3) == [0, 2, 4]`` (DistilBERT)."""
    if not 1 <= num_layers <= num_teacher_layers:
        raise ValueError(f"num_layers must lie in [1, {num_teacher_layers}] (the teacher's depth), got {num_layers}.")
    return [round(i * num_teacher_layers / num_layers) for i in range(num_layers)]


def shrink(model: nn.Module, layers: list[int], intermediate_size: int | None = None) -> nn.Module:
    """A new model of ``model``'s class keeping ``layers`` (copied) and the ``intermediate_size`` feed-forward
    neurons with the largest ``‖w_in‖·‖w_out‖`` in each kept layer; every other weight is copied unchanged.

    Args:
        model: a ``transformers`` BERT-style model (``encoder.layer.N.intermediate/output.dense``).
        layers: indices of the teacher layers to keep, in order.
        intermediate_size: feed-forward width of the result; None keeps the teacher's.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> teacher = BertModel(BertConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2))
        >>> shrink(teacher, [0, 2], intermediate_size=8).config.num_hidden_layers
        2
    """
    config = copy.deepcopy(model.config)
    depth = config.num_hidden_layers
    bad = [i for i in layers if not 0 <= i < depth]
    if not layers or bad or len(set(layers)) != len(layers):
        raise ValueError(f"layers {layers} must be distinct indices in [0, {depth - 1}] (the teacher has {depth}).")
    width = config.intermediate_size
    if intermediate_size is not None and not 1 <= intermediate_size <= width:
        raise ValueError(f"intermediate_size must lie in [1, {width}] (the teacher's), got {intermediate_size}.")
    config.num_hidden_layers, config.intermediate_size = len(layers), intermediate_size or width
    state = model.state_dict()
    if f"encoder.layer.{depth - 1}.intermediate.dense.weight" not in state:
        raise ValueError(
            f"{type(model).__name__} is not BERT-style (no encoder.layer.N.intermediate.dense); students can be "
            "built only from BERT-like encoders such as all-MiniLM-L6-v2."
        )
    keep: dict[int, Tensor] = {}
    for i in layers:
        w_in = state[f"encoder.layer.{i}.intermediate.dense.weight"]
        w_out = state[f"encoder.layer.{i}.output.dense.weight"]
        score = w_in.norm(dim=1) * w_out.norm(dim=0)
        keep[i] = score.topk(config.intermediate_size).indices.sort().values
    new_state = {}
    for key, value in state.items():
        match = re.match(r"encoder\.layer\.(\d+)\.(.+)", key)
        if match is None:
            new_state[key] = value.clone()
            continue
        i, rest = int(match[1]), match[2]
        if i not in layers:
            continue
        if rest.startswith("intermediate.dense."):
            value = value[keep[i]]
        elif rest == "output.dense.weight":
            value = value[:, keep[i]]
        new_state[f"encoder.layer.{layers.index(i)}.{rest}"] = value.clone()
    student = type(model)(config)
    student.load_state_dict(new_state, strict=True)
    return student


def tiny_tokenizer(vocab_size: int = 1000) -> Any:
    """A lowercasing WordPiece tokenizer built in memory from the pydoc topics' most frequent words (no files).

    Characters and ``##``-characters are always in the vocabulary, so no word is unknown.

    Example:
        >>> tok = tiny_tokenizer(300)
        >>> tok.convert_ids_to_tokens(tok("Lists are mutable.")["input_ids"])[:4]
        ['[CLS]', 'list', '##s', 'are']
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    from lit_distill.data.sentence_corpus import pydoc_texts
    from lit_distill.data.tokenizers import encoder_transformers

    text = " ".join(pydoc_texts()).lower()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for c in text if c.isprintable() and not c.isspace() and ord(c) < 128})
    vocab = specials + chars + ["##" + c for c in chars]
    words = Counter(re.findall(r"[a-z]{2,}", text))
    vocab += [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))][: max(0, vocab_size - len(vocab))]
    ids = {token: i for i, token in enumerate(vocab)}
    core = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    core.decoder = decoders.WordPiece()
    names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    return encoder_transformers().PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=512, **names)
