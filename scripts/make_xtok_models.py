"""Write the tokenizers and the Hugging Face pair of the cross-tokenizer recipes (configs/text/xtok_*.yaml).

Nothing is downloaded: every tokenizer is trained with the ``tokenizers`` library on CPython's bundled pydoc topics
and saved with ``save_pretrained``.

* ``<out>/bpe``: a byte-level BPE of 1024 tokens, the teacher's tokenizer in xtok_teacher.yaml, xtok_span_kd.yaml
  and xtok_uld.yaml (their student reads bytes).
* ``<out>/hf_teacher``: a GPT-2 model with its own byte-level BPE (512 tokens), and ``<out>/hf_student``: a Llama
  model with a SentencePiece-style Unigram tokenizer (400 tokens, ``▁`` word marks): two model families whose
  tokenizers really differ, for xtok_hf.yaml. Both are random unless ``--teacher-steps`` trains the teacher briefly.

    python scripts/make_xtok_models.py                        # -> checkpoints/text/xtok/{bpe,hf_teacher,hf_student}
    python scripts/make_xtok_models.py --teacher-steps 300    # the HF teacher also learns the pydoc text briefly
    python scripts/make_xtok_models.py --smoke                # small versions in a temporary folder
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

DEFAULT_OUT = "checkpoints/text/xtok"
EOS, PAD, UNK = "<|endoftext|>", "<|pad|>", "<unk>"


def _tiny_models():
    """scripts/make_tiny_hf_models.py, for its byte-level BPE and its brief teacher training."""
    spec = importlib.util.spec_from_file_location(
        "make_tiny_hf_models", Path(__file__).with_name("make_tiny_hf_models.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def byte_level_bpe(vocab_size: int, texts: list[str]):
    """A byte-level BPE (GPT-2 style: every byte is a token, merges on top) with eos and pad tokens."""
    return _tiny_models().build_tokenizer(vocab_size, texts)


def _texts(limit: int | None) -> list[str]:
    from lit_distill.data.text import pydoc_documents

    return pydoc_documents()[:limit]


def unigram(vocab_size: int, texts: list[str]):
    """A SentencePiece-style Unigram tokenizer (``▁`` marks a word start) with eos, pad and unk tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.Unigram())
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD, UNK], unk_token=UNK)
    core.train_from_iterator(texts, trainer)
    special = {"eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    return PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=1024, **special)


def gpt2(tokenizer, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    ids = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=128, n_layer=4, n_head=4, **ids)
    return GPT2LMHeadModel(config)


def llama(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def make(out: str | Path = DEFAULT_OUT, teacher_steps: int = 0, seed: int = 0, texts: int | None = None) -> Path:
    """Write ``<out>/bpe``, ``<out>/hf_teacher`` and ``<out>/hf_student``; ``texts`` limits the pydoc topics used."""
    out, corpus = Path(out), _texts(texts)
    byte_level_bpe(1024, corpus).save_pretrained(str(out / "bpe"))
    pairs = {"hf_teacher": (byte_level_bpe(512, corpus), gpt2), "hf_student": (unigram(400, corpus), llama)}
    for i, (name, (tokenizer, build)) in enumerate(pairs.items()):
        model = build(tokenizer, seed + i)
        if name == "hf_teacher" and teacher_steps:
            loss = _tiny_models().train_briefly(model, tokenizer, teacher_steps)
            print(f"teacher trained {teacher_steps} steps, last loss {loss:.3f}")
        model.save_pretrained(str(out / name))
        tokenizer.save_pretrained(str(out / name))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--teacher-steps", type=int, default=0, help="next-token training steps for the HF teacher")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tokenizers of 40 topics, 2 teacher steps, a temp folder")
    args = parser.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            made = make(tmp, teacher_steps=2, seed=args.seed, texts=40)
            print(json.dumps({p.name: sorted(f.name for f in p.iterdir()) for p in sorted(made.iterdir())}))
        return
    print(f"wrote {make(args.out, args.teacher_steps, args.seed)}")


if __name__ == "__main__":
    main()
