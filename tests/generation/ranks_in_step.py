"""Run by tests/generation/test_ranks_in_step.py as a script on 2 CPU processes (gloo): Lightning's launcher re-executes
it per rank. Each rank generates from its own prompt with a model sharded by ``fsdp2`` (every forward is a collective)
or replicated by ``ddp``; rank 0's row ends after a few new tokens, rank 1's never ends, and rank 1's longer prompt
leaves it less room under the GPT's block_size. Writes what each rank generated, and what an unsharded copy of the
model generates from the same prompt (the reference), to ``<out>/<kind>.rank<N>.json``.

Usage: ``python ranks_in_step.py OUT {fsdp2,ddp} KIND...`` (kinds: ``gpt``, ``hf``)
"""

import copy
import json
import os
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader

from lit_distill.generation import GenerationModule, generate
from lit_distill.generation.sampling import left_pad
from lit_distill.models import GPT
from lit_distill.models.next_token import hf_model
from tests.helpers import end_process_group

PROMPTS = [[104, 105, 106], [50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61]]  # rank 0, rank 1
BLOCK, MAX_NEW, PAD = 24, 16, 257  # rank 1: 12 prompt tokens leave room for 12 of the 16 new tokens


def model(kind: str, folder: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "gpt":
        return GPT(block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, tie_weights=False, tokenizer_id="bytes")
    from lit_distill.models.hf import HFCausalLM

    return HFCausalLM(path=str(folder), tokenizer_id="bytes")


def save_llama(folder: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         eos_token_id=None)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)


class InStep(GenerationModule):
    """Generates from this rank's prompt with this rank's eos (rank 0: a greedy token after its first; rank 1: none)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model=model, tokenizer="bytes", allow_untrained=True)
        self.reference, self.result = copy.deepcopy(model), {}  # an unsharded copy: what one process generates

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        rank = self.global_rank
        ids, mask = left_pad([PROMPTS[rank]], PAD)
        room = getattr(self.reference, "block_size", BLOCK)
        room = BLOCK if room is None or room > BLOCK else room  # the HF model allows more: keep the GPT's limits
        max_new = min(MAX_NEW, room - ids.shape[1])  # as on-policy sampling shortens a long prompt's sample
        alone = generate(self.reference, ids, mask, max_new_tokens=12, temperature=0.0)
        new = alone[0, ids.shape[1] :].tolist()
        step = next(i for i, t in enumerate(new) if i > 0 and t not in new[:i])  # rank 0 ends there, not at once
        eos = new[step] if rank == 0 else None
        steps = []
        computes = hf_model(self.model) or self.model  # the module every decode step calls
        hook = computes.register_forward_pre_hook(lambda *_: steps.append(1))
        out = generate(self.model, ids, mask, max_new_tokens=max_new, temperature=0.0, eos_token_id=eos,
                       pad_token_id=PAD)  # fmt: skip
        hook.remove()
        want = generate(self.reference, ids, mask, max_new_tokens=12, temperature=0.0, eos_token_id=eos,
                        pad_token_id=PAD)  # fmt: skip
        self.result = {"out": out.tolist(), "reference": want.tolist(), "forwards": len(steps), "eos_step": step}
        try:  # a prompt that fills the block on rank 1 only: every rank must fail alike, none may hang
            long = [PROMPTS[rank] * (1 if rank == 0 else 2)]
            generate(self.model, *left_pad(long, PAD), max_new_tokens=MAX_NEW, temperature=0.0)
            self.result["overflow"] = None
        except ValueError as err:
            self.result["overflow"] = str(err)
        return []


def main(out: Path, strategy: str, kinds: list[str]) -> None:
    if "hf" in kinds and os.environ.get("LOCAL_RANK", "0") == "0":  # before the launcher starts the other rank
        save_llama(out / "llama")
    for kind in kinds:  # one launch of the two processes for every model kind
        seed_everything(0)
        net = model(kind, out / "llama")
        module = InStep(net)
        trainer = Trainer(
            accelerator="cpu", devices=2, strategy=strategy, logger=False, enable_progress_bar=False,
            enable_model_summary=False,
        )  # fmt: skip
        trainer.predict(module, DataLoader([0, 1], batch_size=1), return_predictions=False)
        result = {**module.result, "sharded": type(net).__name__.startswith("FSDP")}
        (out / f"{kind}.rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
    end_process_group()
