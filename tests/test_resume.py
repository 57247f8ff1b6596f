"""Stopping mid-epoch and resuming gives the same student as an uninterrupted run."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lit_distill.data import DigitsDataModule
from tests.helpers import make_module


class StopAt(Callback):
    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True  # a preemption right after the checkpoint


def digits():
    return make_module(), DigitsDataModule(batch_size=64, seed=3)


def text():
    from lit_distill.data import TextDataModule
    from lit_distill.losses import TokenKD
    from lit_distill.models import GPT

    def gpt(layers):
        return GPT(block_size=32, n_layer=layers, n_head=2, n_embd=32, tokenizer_id="bytes")

    module = make_module(student=gpt(1), teacher=gpt(2), losses=[TokenKD(lm_weight=0.5)])
    return module, TextDataModule(seq_len=32, batch_size=8, max_blocks=160, seed=3)


def run(tmp_path, ckpt_path=None, callbacks=(), recipe=digits):
    seed_everything(0)
    module, data = recipe()
    trainer = Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=list(callbacks),
        limit_val_batches=0,
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.parametrize("recipe", [digits, text], ids=["digits", "text"])
def test_mid_epoch_resume_matches_uninterrupted_run(tmp_path, recipe):
    full, full_trainer = run(tmp_path, recipe=recipe)
    steps_per_epoch = full_trainer.num_training_batches
    stop = steps_per_epoch + steps_per_epoch // 2  # in the middle of the second epoch
    ckpt = tmp_path / "mid.ckpt"
    interrupted, t = run(tmp_path, callbacks=[StopAt(stop, ckpt)], recipe=recipe)
    assert t.global_step == stop and ckpt.exists()
    resumed, resumed_trainer = run(tmp_path, ckpt_path=str(ckpt), recipe=recipe)
    assert resumed_trainer.global_step == full_trainer.global_step
    for (name, a), b in zip(full.student.named_parameters(), resumed.student.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    # The teacher was not in the checkpoint and still equals its source.
    assert not any(k.startswith("teacher.") for k in torch.load(ckpt, weights_only=True)["state_dict"])
