"""Write a tiny Hugging Face tokenizer, GPT-2 teacher and GPT-2 student for configs/text/hf_token_kd.yaml.

Nothing is downloaded: a byte-level BPE tokenizer is trained on CPython's bundled pydoc topics, and both
models are randomly initialised ``GPT2Config`` models (the teacher's vocabulary padded to a multiple of 64,
to exercise TokenKD's vocabulary slicing). ``--teacher-steps N`` trains the teacher briefly on the same
text so that distilling from it means something.

    python scripts/make_tiny_hf_models.py                      # -> checkpoints/text/hf_tiny/{tokenizer,teacher,student}
    python scripts/make_tiny_hf_models.py --teacher-steps 300  # the teacher also learns the pydoc text briefly
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

DEFAULT_OUT = "checkpoints/text/hf_tiny"
EOS, PAD = "<|endoftext|>", "<|pad|>"
TEACHER = {"n_layer": 4, "n_embd": 128, "n_head": 4}
STUDENT = {"n_layer": 2, "n_embd": 64, "n_head": 2}


def build_tokenizer(vocab_size: int = 500):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on the pydoc topics (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lit_distill.data.text import pydoc_documents

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(pydoc_documents(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=PAD, model_max_length=1024)


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


def make(out: str | Path = DEFAULT_OUT, vocab_size: int = 500, teacher_steps: int = 0, seed: int = 0) -> Path:
    """Write ``<out>/tokenizer``, ``<out>/teacher`` and ``<out>/student`` (each model folder has the tokenizer)."""
    out = Path(out)
    tokenizer = build_tokenizer(vocab_size)
    teacher = build_model(tokenizer, **TEACHER, pad_to=64, seed=seed)
    student = build_model(tokenizer, **STUDENT, seed=seed + 1)
    if teacher_steps:
        loss = train_briefly(teacher, tokenizer, teacher_steps)
        print(f"teacher trained {teacher_steps} steps, last loss {loss:.3f}")
    tokenizer.save_pretrained(str(out / "tokenizer"))
    for name, model in (("teacher", teacher), ("student", student)):
        model.save_pretrained(str(out / name))
        tokenizer.save_pretrained(str(out / name))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--vocab-size", type=int, default=500, help="BPE vocabulary size (incl. 2 special tokens)")
    parser.add_argument("--teacher-steps", type=int, default=0, help="next-token training steps for the teacher")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {make(args.out, args.vocab_size, args.teacher_steps, args.seed)}")


if __name__ == "__main__":
    main()
