"""Write a tiny Hugging Face tokenizer, GPT-2 teacher and GPT-2 student for configs/text/hf_token_kd.yaml.

Nothing is downloaded: a byte-level BPE tokenizer is trained on CPython's bundled pydoc topics, and both
models are randomly initialised ``GPT2Config`` models (the teacher's vocabulary padded to a multiple of 64,
to exercise TokenKD's vocabulary slicing). ``--teacher-steps N`` trains the teacher briefly on the same
text so that distilling from it means something.

    python scripts/make_tiny_hf_models.py                      # -> checkpoints/text/hf_tiny/{tokenizer,teacher,student}
    python scripts/make_tiny_hf_models.py --teacher-steps 300  # the teacher also learns the pydoc text briefly
    python scripts/make_tiny_hf_models.py --chat               # -> checkpoints/text/hf_tiny_chat/... (ChatML template)
    python scripts/make_tiny_hf_models.py --smoke              # both kinds, 2 teacher steps, in a temporary folder

``--chat`` gives the tokenizer two more special tokens, ``<|im_start|>`` and ``<|im_end|>`` (its eos: the end of a
turn), and a ChatML chat template, as instruct models ship them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

DEFAULT_OUT = "checkpoints/text/hf_tiny"
CHAT_OUT = "checkpoints/text/hf_tiny_chat"
EOS, PAD = "<|endoftext|>", "<|pad|>"
TURN_START, TURN_END = "<|im_start|>", "<|im_end|>"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TEACHER = {"n_layer": 4, "n_embd": 128, "n_head": 4}
STUDENT = {"n_layer": 2, "n_embd": 64, "n_head": 2}


def build_tokenizer(vocab_size: int = 500, texts: list[str] | None = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (default: the pydoc topics; no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lit_distill.data.text import pydoc_documents

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(pydoc_documents() if texts is None else texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=PAD, model_max_length=1024)


def build_chat_tokenizer(vocab_size: int = 500, texts: list[str] | None = None):
    """:func:`build_tokenizer` plus ChatML turn markers (appended ids; ``<|im_end|>`` is the eos) and template."""
    tokenizer = build_tokenizer(vocab_size, texts)
    tokenizer.add_special_tokens({"additional_special_tokens": [TURN_START, TURN_END]})
    tokenizer.eos_token = TURN_END
    tokenizer.chat_template = CHATML
    return tokenizer


def build_model(
    tokenizer, n_layer: int, n_embd: int, n_head: int, pad_to: int = 1, seed: int = 0, positions: int = 256
):
    """A random ``GPT2LMHeadModel`` whose vocabulary fits ``tokenizer`` (rounded up to a multiple of ``pad_to``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = -(-len(tokenizer) // pad_to) * pad_to
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def train_briefly(model, tokenizer, steps: int, seq_len: int = 128, batch_size: int = 16, lr: float = 2e-3) -> float:
    """Plain next-token training on the pydoc blocks; returns the last loss."""
    from lit_distill.data.text import TextDataModule
    from lit_distill.data.tokenizers import HFTokenizer

    data = TextDataModule(seq_len=seq_len, batch_size=batch_size)
    data.connect(tokenizer=HFTokenizer.wrap(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    loss = float("nan")
    batches = iter(())
    for _ in range(steps):
        batch = next(batches, None)
        if batch is None:
            batches = iter(data.train_dataloader())
            batch = next(batches)
        out = model(input_ids=batch["input_ids"], labels=batch["labels"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss = float(out.loss.detach())
    return loss


def make(
    out: str | Path = DEFAULT_OUT, vocab_size: int = 500, teacher_steps: int = 0, seed: int = 0, chat: bool = False
) -> Path:
    """Write ``<out>/tokenizer``, ``<out>/teacher`` and ``<out>/student`` (each model folder has the tokenizer)."""
    out = Path(out)
    tokenizer = build_chat_tokenizer(vocab_size) if chat else build_tokenizer(vocab_size)
    positions = 512 if chat else 256  # a chat turn pair of the pydoc example is up to ~330 tokens
    teacher = build_model(tokenizer, **TEACHER, pad_to=64, seed=seed, positions=positions)
    student = build_model(tokenizer, **STUDENT, seed=seed + 1, positions=positions)
    if teacher_steps:
        loss = train_briefly(teacher, tokenizer, teacher_steps)
        print(f"teacher trained {teacher_steps} steps, last loss {loss:.3f}")
    tokenizer.save_pretrained(str(out / "tokenizer"))
    for name, model in (("teacher", teacher), ("student", student)):
        model.save_pretrained(str(out / name))
        tokenizer.save_pretrained(str(out / name))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_OUT}, with --chat {CHAT_OUT})")
    parser.add_argument("--chat", action="store_true", help="a tokenizer with a ChatML chat template")
    parser.add_argument("--vocab-size", type=int, default=500, help="BPE vocabulary size (incl. 2 special tokens)")
    parser.add_argument("--teacher-steps", type=int, default=0, help="next-token training steps for the teacher")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="plain and chat models, 2 teacher steps, in a temp folder")
    args = parser.parse_args(argv)
    if args.smoke:  # both kinds, briefly, where nothing of the user's is touched (unless --out says where)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(args.out or tmp)
            made = [make(root / kind, args.vocab_size, 2, args.seed, chat=kind == "chat") for kind in ("plain", "chat")]
            print(json.dumps({str(m.name): sorted(p.name for p in m.iterdir()) for m in made}))
        return
    out = args.out or (CHAT_OUT if args.chat else DEFAULT_OUT)
    print(f"wrote {make(out, args.vocab_size, args.teacher_steps, args.seed, chat=args.chat)}")


if __name__ == "__main__":
    main()
