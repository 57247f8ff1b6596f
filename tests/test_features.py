"""FeatureTaps inside DistillationModule: what is captured, when, and what is left behind."""

import copy
import gc
import weakref

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_distill import DistillationModule
from lit_distill.features import FeatureTaps
from lit_distill.losses import CrossEntropy, DistillationLoss, HintLoss
from lit_distill.models import MLP, SmallCNN
from tests.helpers import trainer as quiet_trainer


class Recorder(DistillationLoss):
    """Keeps clones of the first call's features, weak references to every call's, and their dtypes."""

    def __init__(self, student_taps, teacher_taps):
        super().__init__(name="recorder")
        self.student_taps, self.teacher_taps = student_taps, teacher_taps
        self.first = None
        self.refs, self.dtypes = [], set()

    def forward(self, student, teacher, batch):
        feats = {("s", k): v for k, v in student.features.items()} | {("t", k): v for k, v in teacher.features.items()}
        if self.first is None:
            self.first = ({k: v.detach().clone() for k, v in feats.items()}, batch[0].clone())
        self.refs += [weakref.ref(v) for v in feats.values()]
        self.dtypes |= {(side, v.dtype) for (side, _), v in feats.items()}
        return student.logits.sum() * 0.0


def loader(images=False):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g) if images else torch.rand(16, 64, generator=g)
    return DataLoader(TensorDataset(x, torch.randint(0, 10, (16,), generator=g)), batch_size=8)


def fit(module, tmp_path, images=False, steps=2):
    trainer = quiet_trainer(tmp_path, max_steps=steps, max_epochs=-1, log_every_n_steps=1, limit_val_batches=0)
    trainer.fit(module, loader(images))
    return trainer


def mlp_pair():
    torch.manual_seed(0)
    return MLP(64, [16], 10), MLP(64, [32, 24], 10)


def test_right_tensors_are_captured(tmp_path):
    student, teacher = mlp_pair()
    s0, t0 = copy.deepcopy(student), copy.deepcopy(teacher)
    rec = Recorder(["body.0", "head:input"], ["body.2", "head"])
    fit(DistillationModule(student, teacher, losses=[rec, CrossEntropy()], allow_untrained_teacher=True), tmp_path)
    feats, x = rec.first  # the probe batch, seen before any optimizer step
    with torch.no_grad():
        assert torch.allclose(feats[("s", "body.0")], s0.body[0](x))
        assert torch.allclose(feats[("s", "head:input")], s0.body(x))
        assert torch.allclose(feats[("t", "body.2")], t0.body[:3](x))
        assert torch.allclose(feats[("t", "head")], t0(x))


def test_nothing_is_kept_after_the_step_and_hooks_go_at_teardown(tmp_path):
    student, teacher = mlp_pair()
    rec = Recorder(["body.1"], ["body.1"])
    module = DistillationModule(student, teacher, losses=[rec, CrossEntropy()], allow_untrained_teacher=True)
    fit(module, tmp_path, steps=3)
    gc.collect()
    assert len(rec.refs) >= 3 * 2 and all(ref() is None for ref in rec.refs)
    assert module._taps == {}
    assert not any(m._forward_hooks for m in [*student.modules(), *teacher.modules()])


def test_taps_store_nothing_outside_capture():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    taps = FeatureTaps(net, ["0", "2:input"])
    with taps.capture() as feats:
        net(torch.randn(3, 4))
    assert set(feats) == {"0", "2:input"}
    net(torch.randn(5, 4))  # outside the block: must not overwrite or add
    assert feats["0"].shape == (3, 8) and taps._store is None
    taps.remove()
    assert len(taps) == 0 and not net[0]._forward_hooks


def test_unknown_layer_lists_the_closest_names(tmp_path):
    student, teacher = SmallCNN(1, [4, 8]), SmallCNN(1, [6, 12])
    module = DistillationModule(student, teacher, losses=[HintLoss("stage3", "stage2")], allow_untrained_teacher=True)
    with pytest.raises(KeyError, match=r"no submodule named 'stage3' in the student.*Closest: \[.*'stage2'"):
        fit(module, tmp_path, images=True)
    with pytest.raises(KeyError, match=r"'stage9' in the teacher"):
        FeatureTaps(teacher, ["stage9"], "teacher")


def test_teacher_stays_frozen_through_fit(tmp_path):
    student, teacher = SmallCNN(1, [4, 8]), SmallCNN(1, [6, 12])
    before = copy.deepcopy(teacher.state_dict())
    module = DistillationModule(
        student, teacher, losses=[HintLoss("stage2", "stage2"), CrossEntropy()], allow_untrained_teacher=True
    )
    fit(module, tmp_path, images=True, steps=3)
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    # eval mode matters too: BatchNorm running statistics must not move
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_bf16_teacher_with_fp32_student(tmp_path):
    student, teacher = SmallCNN(1, [4, 8]), SmallCNN(1, [6, 12])
    rec = Recorder(["stage2"], ["stage2"])
    hint = HintLoss("stage2", "stage2")
    module = DistillationModule(
        student, teacher, losses=[rec, hint, CrossEntropy()], teacher_dtype="bf16", allow_untrained_teacher=True
    )
    trainer = fit(module, tmp_path, images=True, steps=3)
    assert rec.dtypes == {("s", torch.float32), ("t", torch.bfloat16)}
    assert hint.adapters["0"].weight.dtype == torch.float32  # sized on the student's side
    assert torch.isfinite(trainer.callback_metrics["train/hint"])
    assert next(teacher.parameters()).dtype == torch.bfloat16
