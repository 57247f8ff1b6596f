"""NaN/inf guard: stop naming the step and the term, or skip the batch; never save NaN weights."""

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lit_distill.guard import NonFiniteGuard, NonFiniteLossError
from tests.helpers import make_module, trainer


def poisoned_loader(bad_batch=3, batches=6, batch_size=8):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batches * batch_size, 64, generator=g)
    y = torch.randint(0, 10, (batches * batch_size,), generator=g)
    x[bad_batch * batch_size] = float("nan")
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def test_guard_reports_step_term_and_last_finite_value():
    guard = NonFiniteGuard()
    guard.observe(0, {"kd": torch.tensor(0.5), "ce": torch.tensor(1.0)})
    guard.observe(1, {"kd": torch.tensor(0.25), "ce": torch.tensor(0.9)})
    with pytest.raises(NonFiniteLossError, match=r"step 2: kd=inf \(last finite: kd=0.25 at step 1\)"):
        guard.observe(2, {"kd": torch.tensor(float("inf")), "ce": torch.tensor(0.8)})


def test_nan_stops_the_run_and_no_nan_checkpoint_is_saved(tmp_path):
    module = make_module()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_top_k=-1)
    t = trainer(tmp_path, max_epochs=1, callbacks=[ckpt], enable_checkpointing=True)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3: logit_kd=nan, ce=nan, loss=nan"):
        t.fit(module, poisoned_loader(bad_batch=3))
    saved = sorted((tmp_path / "ck").glob("*.ckpt"))
    assert saved, "checkpoints before the bad step should exist"
    for path in saved:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), path.name


def test_skip_policy_skips_the_bad_batch_and_keeps_training(tmp_path):
    module = make_module(nan_policy="skip")
    changed = BatchChanges()
    t = trainer(tmp_path, max_epochs=1, callbacks=[changed])
    with pytest.warns(
        UserWarning, match=r"step 3, rank 0: non-finite loss term\(s\) \['logit_kd', 'ce'\]; skipping the batch"
    ):
        t.fit(module, poisoned_loader(bad_batch=3))
    assert changed.moved == [True, True, True, False, True, True]  # only the poisoned batch left no trace
    assert all(torch.isfinite(p).all() for p in module.student.parameters())
    assert t.callback_metrics["train/skipped_batches"] == 1


class BatchChanges(Callback):
    def __init__(self):
        self.moved = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = [p.detach().clone() for p in pl_module.student.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        after = list(pl_module.student.parameters())
        self.moved.append(any(not torch.equal(a, b) for a, b in zip(self.before, after)))


def test_bad_policy_name():
    with pytest.raises(ValueError, match="nan_policy must be 'raise' or 'skip', got 'ignore'"):
        make_module(nan_policy="ignore")


def test_skip_policy_is_refused_where_a_sharded_backward_cannot_be_skipped():
    from types import SimpleNamespace

    from lit_distill.checks import check_fit_start
    from lit_distill.sharding import FSDP2Strategy

    module = make_module(nan_policy="skip")
    module.trainer = SimpleNamespace(strategy=FSDP2Strategy())
    with pytest.raises(ValueError, match="nan_policy: skip is not supported with FSDP2Strategy.*nan_policy: raise"):
        check_fit_start(module)
    module.nan_policy = "raise"
    check_fit_start(module)
