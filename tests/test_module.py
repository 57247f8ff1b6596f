"""DistillationModule: a frozen teacher for real, checkpoints without it, subclass overrides."""

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_distill import CrossEntropy, DistillationModule, LogitKD
from lit_distill.models import MLP, SmallCNN
from tests.helpers import loaders, make_module, trainer


class TeacherWatch(Callback):
    def __init__(self):
        self.modes = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.modes.append(pl_module.teacher.training or any(m.training for m in pl_module.teacher.modules()))

    def on_train_epoch_start(self, trainer, pl_module):
        pl_module.train()  # as Lightning does; the teacher must stay in eval


def test_teacher_is_frozen_through_fit(tmp_path):
    module = make_module(teacher=MLP(64, [64], 10, dropout=0.5))
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    student_before = [p.clone() for p in module.student.parameters()]
    watch = TeacherWatch()
    train, val = loaders()
    trainer(tmp_path, max_epochs=2, callbacks=[watch]).fit(module, train, val)
    assert watch.modes and not any(watch.modes)
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    teacher_ids = {id(p) for p in module.teacher.parameters()}
    for group in module.trainer.optimizers[0].param_groups:
        assert not teacher_ids & {id(p) for p in group["params"]}
    # The student did change.
    assert any(not torch.equal(a, b) for a, b in zip(student_before, module.student.parameters()))


def test_teacher_gets_no_grad_and_runs_in_its_dtype():
    module = make_module(teacher_dtype="bf16")
    assert next(module.teacher.parameters()).dtype == torch.bfloat16
    assert next(module.student.parameters()).dtype == torch.float32
    x, y = torch.rand(4, 64), torch.randint(0, 10, (4,))
    out = module.forward_teacher((x, y))
    assert out.logits.dtype == torch.bfloat16 and not out.logits.requires_grad
    total, terms, _, _ = module.shared_step((x, y))
    total.backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert set(terms) == {"logit_kd", "ce"}


def test_checkpoint_leaves_teacher_out_and_resume_restores_it(tmp_path):
    module = make_module()
    train, val = loaders()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", filename="last")
    trainer(tmp_path, max_epochs=1, callbacks=[ckpt], enable_checkpointing=True).fit(module, train, val)
    saved = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert saved["state_dict"] and not [k for k in saved["state_dict"] if k.startswith("teacher.")]
    assert any(k.startswith("student.") for k in saved["state_dict"])
    # Resume: a fresh module (teacher from its source) continues from the checkpoint.
    fresh = make_module()
    fresh.teacher.load_state_dict(module.teacher.state_dict())
    t = trainer(tmp_path, max_epochs=2, enable_checkpointing=True)
    t.fit(fresh, train, val, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert t.current_epoch == 2
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(fresh.teacher.state_dict()[key], value)


def test_save_teacher_opt_in_keeps_it():
    module = make_module(save_teacher=True)
    assert any(k.startswith("teacher.") for k in module.state_dict())
    assert not any(k.startswith("teacher.") for k in make_module().state_dict())


def test_no_teacher_baseline_trains_student(tmp_path):
    module = DistillationModule(student=MLP(64, [16], 10))
    assert module.teacher is None and [type(x) for x in module.losses] == [CrossEntropy]
    train, val = loaders()
    trainer(tmp_path).fit(module, train, val)
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationModule(student=MLP(64, [16], 10), losses=[LogitKD()])


def test_default_losses_and_optimizer_train_as_is(tmp_path):
    module = DistillationModule(
        student=MLP(64, [16], 10), teacher=MLP(64, [64], 10), losses=[LogitKD(temperature=4.0)],
        allow_untrained_teacher=True,
    )  # fmt: skip
    first = [p.clone() for p in module.student.parameters()]
    train, val = loaders()
    trainer(tmp_path).fit(module, train, val)
    assert isinstance(module.trainer.optimizers[0], torch.optim.AdamW)
    assert any(not torch.equal(a, b) for a, b in zip(first, module.student.parameters()))


def test_optimizer_and_scheduler_factories():
    module = make_module(
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1),
    )
    cfg = module.configure_optimizers()
    assert isinstance(cfg["optimizer"], torch.optim.SGD) and cfg["optimizer"].param_groups[0]["lr"] == 0.5


def test_bad_setups_fail_clearly(tmp_path):
    student = MLP(64, [16], 10)
    with pytest.raises(ValueError, match="same module object"):
        DistillationModule(student=student, teacher=student)
    shared = MLP(64, [16], 10)
    shared.head = student.head
    with pytest.raises(ValueError, match="shares 2 parameter"):
        DistillationModule(student=student, teacher=shared)
    with pytest.raises(ValueError, match="two losses are named 'logit_kd'"):
        make_module(losses=[LogitKD(), LogitKD(temperature=2)])
    with pytest.raises(ValueError, match="every loss weight is 0"):
        make_module(losses=[LogitKD(weight=0)])
    with pytest.raises(ValueError, match="losses is empty"):
        make_module(losses=[])
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        make_module(teacher_checkpoint=str(tmp_path / "nope.ckpt"))
    with pytest.raises(ValueError, match="unknown dtype 'bf17'"):
        make_module(teacher_dtype="bf17")


def test_wrong_class_count_fails_before_training(tmp_path):
    module = make_module(teacher=MLP(64, [64], 7))
    train, val = loaders()
    t = trainer(tmp_path)
    with pytest.raises(ValueError, match=r"student logits \(16, 10\) and teacher logits \(16, 7\)"):
        t.fit(module, train, val)
    assert t.global_step == 0


class Blended(DistillationModule):
    """A subclass: the teacher sees inputs with noise, and the terms are combined with a schedule."""

    def forward_teacher(self, batch):
        x, y = batch
        return super().forward_teacher((x + 0.0, y))

    def forward_student(self, batch):
        out = super().forward_student(batch)
        out.extra["called"] = True
        return out

    def compute_losses(self, student_out, teacher_out, batch):
        total, terms = super().compute_losses(student_out, teacher_out, batch)
        alpha = 0.25
        total = alpha * terms["ce"] + (1 - alpha) * terms["logit_kd"]
        return total, terms


def test_subclass_overrides_forward_and_loss_combination(tmp_path):
    module = Blended(
        student=MLP(64, [16], 10), teacher=MLP(64, [64], 10), losses=[LogitKD(), CrossEntropy()],
        allow_untrained_teacher=True,
    )  # fmt: skip
    x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
    total, terms, s_out, _ = module.shared_step((x, y))
    assert s_out.extra["called"]
    assert torch.allclose(total, 0.25 * terms["ce"] + 0.75 * terms["logit_kd"])
    train, val = loaders()
    trainer(tmp_path).fit(module, train, val)


def test_cnn_student_and_export(tmp_path):
    module = make_module(student=SmallCNN(1, [8, 16], 10))
    path = module.export_student(tmp_path / "s.safetensors")
    from safetensors.torch import load_file

    keys = set(load_file(str(path)))
    assert keys == set(module.student.state_dict()) and not any(k.startswith("teacher") for k in keys)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        module.export_student(path)


def test_a_recipe_generation_model_without_weights_is_refused(tmp_path):
    from lightning.pytorch import Trainer

    from lit_distill.data import PromptDataModule
    from lit_distill.generation import GenerationModule
    from lit_distill.models import GPT
    from lit_distill.teacher import mark_built_from_config

    model = GPT(vocab_size=258, block_size=64, n_layer=1, n_head=2, n_embd=16, tokenizer_id="bytes")
    mark_built_from_config(model)  # as the command line does for a recipe's model
    data = PromptDataModule(tokenizer="bytes", prompt_chars=16, batch_size=4, predict_split="val")
    run = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_predict_batches=1)
    with pytest.raises(ValueError, match=r"the model \(GPT\) is built from the recipe's config.*allow_untrained: true"):
        run.predict(GenerationModule(model=model, max_new_tokens=4), datamodule=data)
    rows = run.predict(GenerationModule(model=model, max_new_tokens=4, allow_untrained=True), datamodule=data)
    assert rows and isinstance(rows[0][0]["response"], str)


def test_the_default_optimizer_is_fused_adamw_on_cuda_parameters_only():
    from lit_distill.module import _adamw

    cpu = _adamw([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(cpu, torch.optim.AdamW) and not cpu.defaults["fused"]
    if torch.cuda.is_available():
        assert _adamw([torch.nn.Parameter(torch.zeros(2, device="cuda"))]).defaults["fused"]
