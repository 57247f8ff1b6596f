"""Feature strategies: adapters inferred, trained, checkpointed, restored, not exported; layer mappings; errors."""

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_distill import DistillationModule
from lit_distill.losses import PKT, RKD, AttentionTransfer, CrossEntropy, HiddenCosine, HiddenMSE, HintLoss
from lit_distill.losses import functional as LF
from lit_distill.models import MLP, SmallCNN
from lit_distill.outputs import ModelOutput
from tests.helpers import trainer as quiet_trainer


def loader(images=True, n=24):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g) if images else torch.rand(n, 64, generator=g)
    return DataLoader(TensorDataset(x, torch.randint(0, 10, (n,), generator=g)), batch_size=8)


def cnn_module(losses, seed=0):
    torch.manual_seed(seed)
    return DistillationModule(SmallCNN(1, [4, 8]), SmallCNN(1, [6, 12]), losses=losses, allow_untrained_teacher=True)


def fit(module, tmp_path, images=True, steps=3):
    trainer = quiet_trainer(tmp_path, max_steps=steps, max_epochs=-1, limit_val_batches=0)
    trainer.fit(module, loader(images))
    return trainer


def hint_losses():
    return [HintLoss(["stage1", "stage2"], ["stage1", "stage2"], layer_weights=[0.5, 2.0]), CrossEntropy()]


def test_adapters_are_inferred_trained_and_optimized(tmp_path):
    module = cnn_module(hint_losses())
    assert len(module.losses[0].adapters) == 0
    trainer = fit(module, tmp_path)
    adapters = module.losses[0].adapters
    assert [(a.in_channels, a.out_channels, a.kernel_size) for a in adapters.values()] == [
        (4, 6, (1, 1)),
        (8, 12, (1, 1)),
    ]
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in adapters.parameters())
    assert not any(id(p) in optimized for p in module.teacher.parameters())


def test_adapters_change_during_training(tmp_path):
    module = cnn_module(hint_losses())
    fit(module, tmp_path, steps=1)
    before = {k: v.clone() for k, v in module.losses.state_dict().items()}
    fit(module, tmp_path, steps=4)
    after = module.losses.state_dict()
    assert before.keys() == after.keys() and before
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_holds_adapters_and_restores_into_a_fresh_module(tmp_path):
    module = cnn_module(hint_losses())
    trainer = fit(module, tmp_path)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert {"losses.0.adapters.0.weight", "losses.0.adapters.1.bias"} <= state.keys()
    assert not any(k.startswith("teacher.") for k in state)

    fresh = cnn_module(hint_losses(), seed=1).to(torch.float64)  # no forward yet: no adapters
    assert len(fresh.losses[0].adapters) == 0
    fresh.load_state_dict(state)  # strict
    restored = fresh.losses[0].adapters
    assert torch.equal(restored["1"].weight.float(), module.losses[0].adapters["1"].weight)
    assert restored["1"].weight.dtype == torch.float64  # created where the module lives, then filled

    again = DistillationModule.load_from_checkpoint(
        path, student=SmallCNN(1, [4, 8]), teacher=SmallCNN(1, [6, 12]), losses=hint_losses()
    )
    assert torch.equal(again.losses[0].adapters["0"].weight, module.losses[0].adapters["0"].weight)


class StopAt(L.Callback):
    """Save a checkpoint after ``step`` optimizer steps and stop, like a preempted run."""

    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def test_resuming_continues_the_adapters_and_their_optimizer_state(tmp_path):
    def run(module, callbacks=(), ckpt_path=None):
        L.Trainer(
            max_steps=6,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=list(callbacks),
        ).fit(module, loader(), ckpt_path=ckpt_path)
        return module

    straight = run(cnn_module(hint_losses()))
    run(cnn_module(hint_losses()), callbacks=[StopAt(3, tmp_path / "half.ckpt")])
    resumed = cnn_module(hint_losses())  # same teacher; it is not in the checkpoint
    torch.manual_seed(123)  # so the probe sizes its adapters with other random values than the checkpoint's
    run(resumed, ckpt_path=tmp_path / "half.ckpt")
    for key, value in straight.losses.state_dict().items():
        assert torch.allclose(resumed.losses.state_dict()[key], value, atol=1e-6), key


def test_export_excludes_adapters_unless_asked(tmp_path):
    module = cnn_module(hint_losses())
    fit(module, tmp_path)
    plain = load_file(module.export_student(tmp_path / "student.safetensors"))
    assert plain.keys() == module.student.state_dict().keys()
    full = load_file(module.export_student(tmp_path / "all.safetensors", include_adapters=True))
    assert {"losses.0.adapters.0.weight", "losses.0.adapters.1.weight"} <= full.keys()


def test_mismatch_without_adapter_names_the_option(tmp_path):
    module = cnn_module([HintLoss("stage2", "stage2", adapter="none")])
    with pytest.raises(ValueError, match=r"\(8, 8, 4, 4\).*\(8, 12, 4, 4\).*no adapter; set `adapter: auto`.*8->12"):
        fit(module, tmp_path)
    assert module.student.stage1[0].weight.grad is None  # failed in the probe, before any step


def test_linear_adapters_for_flat_features_and_a_weighted_layer_mapping(tmp_path):
    torch.manual_seed(0)
    loss = HintLoss(["body.1", "head"], ["body.3", "body.1"], layer_weights=[0.5, 2.0])
    module = DistillationModule(MLP(64, [16], 10), MLP(64, [32, 10], 10), losses=[loss], allow_untrained_teacher=True)
    fit(module, tmp_path, images=False, steps=1)
    assert [(a.in_features, a.out_features) for a in loss.adapters.values()] == [(16, 10), (10, 32)]
    s = ModelOutput(features={"body.1": torch.randn(3, 16), "head": torch.randn(3, 10)})
    t = ModelOutput(features={"body.3": torch.randn(3, 10), "body.1": torch.randn(3, 32)})
    terms = loss(s, t, None)
    assert set(terms) == {"body.1_to_body.3", "head_to_body.1"}
    with torch.no_grad():
        want = 2.0 * LF.hint_mse(loss.adapters["1"](s.features["head"]), t.features["body.1"])
    assert terms["head_to_body.1"].item() == pytest.approx(want.item(), rel=1e-6)


def test_explicit_sizes_build_adapters_at_once_and_lazy_creation_in_a_grad_step_fails():
    loss = HintLoss("a", "b", adapter="linear", student_channels=4, teacher_channels=6)
    assert isinstance(loss.adapters["0"], nn.Linear) and loss.adapters["0"].in_features == 4
    with pytest.raises(ValueError, match="need adapter: conv or linear"):
        HintLoss("a", "b", student_channels=4, teacher_channels=6)
    with pytest.raises(ValueError, match="fix student_channels"):
        loss(ModelOutput(features={"a": torch.randn(2, 5)}), ModelOutput(features={"b": torch.randn(2, 6)}), None)
    with (
        torch.no_grad(),
        pytest.raises(ValueError, match="adapter: conv cannot map a 2-D feature.*use adapter: linear"),
    ):
        HintLoss("a", "b", adapter="conv")(
            ModelOutput(features={"a": torch.randn(2, 5)}), ModelOutput(features={"b": torch.randn(2, 6)}), None
        )
    lazy = HintLoss("a", "b")
    with pytest.raises(RuntimeError, match="never train"):
        lazy(ModelOutput(features={"a": torch.randn(2, 5)}), ModelOutput(features={"b": torch.randn(2, 6)}), None)


def test_hidden_losses_mask_padding_and_use_channels_of_conv_features():
    s, t = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": mask}
    so, to = ModelOutput(features={"h": s}), ModelOutput(features={"h": t})
    keep = mask.bool()
    assert HiddenMSE("h", "h")(so, to, batch).item() == pytest.approx(LF.hint_mse(s[keep], t[keep]).item(), rel=1e-6)
    want = LF.feature_cosine(s[keep], t[keep]).item()
    assert HiddenCosine("h", "h")(so, to, batch).item() == pytest.approx(want, rel=1e-6)
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    got = HiddenCosine("x", "y")(ModelOutput(features={"x": a}), ModelOutput(features={"y": b}), None)
    assert got.item() == pytest.approx(LF.feature_cosine(a, b, dim=1).item(), rel=1e-6)
    with pytest.raises(ValueError, match="set `adapter: auto`"):
        HiddenMSE("h", "h")(so, ModelOutput(features={"h": torch.randn(2, 4, 9)}), batch)


def test_relation_strategies_wrap_the_formulas(tmp_path):
    a, b = torch.randn(5, 4, 4, 4), torch.randn(5, 7, 4, 4)
    so, to = (
        ModelOutput(logits=a.flatten(1)[:, :10], features={"x": a}),
        ModelOutput(logits=b.flatten(1)[:, :10], features={"y": b}),
    )
    assert AttentionTransfer("x", "y", p=3)(so, to, None).item() == pytest.approx(LF.attention_transfer(a, b, 3).item())
    assert PKT("x", "y")(so, to, None).item() == pytest.approx(LF.pkt(a, b).item())
    terms = RKD(distance_weight=2.0, angle_weight=3.0)(so, to, None)  # default layers: the logits
    d, ang = LF.rkd_terms(so.logits, to.logits)
    assert terms["distance"].item() == pytest.approx(2 * d.item()) and terms["angle"].item() == pytest.approx(
        3 * ang.item()
    )
    with pytest.raises(ValueError, match="equal spatial"):
        AttentionTransfer("x", "y")(so, ModelOutput(features={"y": torch.randn(5, 7, 2, 2)}), None)
    with pytest.raises(ValueError, match="feature 'y' was not captured"):
        PKT("x", "y")(so, ModelOutput(), None)
    module = cnn_module(
        [AttentionTransfer(["stage1", "stage2"], ["stage1", "stage2"]), RKD("pool", "pool"), PKT("pool", "pool")]
    )
    assert module.losses[0].student_taps == ["stage1", "stage2"] and module.losses[1].teacher_taps == ["pool"]
    fit(module, tmp_path, steps=2)
    assert sum(p.numel() for p in module.losses.parameters()) == 0  # nothing to train on these


def test_bad_configuration_is_refused_at_construction():
    with pytest.raises(ValueError, match="teacher_layer has 1 entries but there are 2"):
        HintLoss(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="adapter must be"):
        HintLoss("a", "b", adapter="mlp")
    with pytest.raises(ValueError, match="p must be"):
        AttentionTransfer("a", "b", p=-2)
    with pytest.raises(ValueError, match="layer_weights entry"):
        PKT("a", "b", layer_weights=[-1.0])
