"""Metrics a run reports: training terms stay fresh for callbacks that monitor them."""

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.helpers import loaders, make_module, trainer


class SeenByCallbacks(Callback):
    """What a monitoring callback reads after each step, beside the step's own loss."""

    def __init__(self):
        self.pairs = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        seen = trainer.callback_metrics.get("train/loss")
        self.pairs.append((None if seen is None else float(seen), float(outputs["loss"])))


@pytest.mark.parametrize("monitored", [True, False])
def test_train_terms_are_fresh_on_every_step_when_a_callback_monitors_them(tmp_path, monitored):
    seen = SeenByCallbacks()
    callbacks = [seen]
    if monitored:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ck", monitor="train/loss", every_n_train_steps=1))
    train, _ = loaders()  # 6 batches, fewer than log_every_n_steps: without a monitor, no step is a logging step
    trainer(tmp_path, max_epochs=1, callbacks=callbacks, log_every_n_steps=50, enable_checkpointing=monitored).fit(
        make_module(), train
    )
    if monitored:
        assert [s for s, _ in seen.pairs] == pytest.approx([loss for _, loss in seen.pairs])
    else:  # the cheap path: logged on Lightning's logging steps only (here the last one, as the run stops)
        assert sum(s is not None and s == pytest.approx(loss) for s, loss in seen.pairs) <= 1


def test_eval_metrics_log_only_what_saw_data():
    from lit_distill.metrics import EvalMetrics

    metrics, logged = EvalMetrics(), {}

    class Module:
        def log(self, name, value, **kwargs):
            logged[name] = value

    metrics.observe(
        torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1])
    )
    metrics.log_to(Module(), "val", 2)
    assert sorted(logged) == ["val/agreement", "val/student_acc", "val/teacher_acc"]
