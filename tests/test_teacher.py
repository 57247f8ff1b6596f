"""The teacher's lifecycle and the trained-weights rule: Python objects are trusted, recipe-built ones need weights."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_distill import DistillationModule
from lit_distill.models import MLP
from lit_distill.teacher import freeze, mark_built_from_config
from tests.helpers import digits_like, loaders, make_module, trainer

RECIPE_UNTRAINED = (
    r"the teacher \(MLP\) is built from the recipe's config \(model.init_args.teacher\) and no weights are loaded "
    r"into it.*teacher_checkpoint.*allow_untrained_teacher: true"
)


def trained_mlp(hidden=32, steps=30) -> MLP:
    """A teacher trained the plain-PyTorch way, in this process."""
    torch.manual_seed(1)
    model = MLP(64, [hidden], 10)
    data = digits_like(96)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.tensors[0]), data.tensors[1]).backward()
        opt.step()
    return model


def fit_steps(tmp_path, module, steps=1, ckpt_path=None, **kwargs):
    train, _ = loaders()
    trainer(tmp_path, max_steps=steps, **kwargs).fit(module, train, ckpt_path=ckpt_path)
    return module


# ------------------------------------------------------------------------------------------- the Python route
def _trained_in_a_loop(tmp_path):
    return trained_mlp()


def _filled_with_load_state_dict(tmp_path):
    torch.save(trained_mlp().state_dict(), tmp_path / "teacher.pt")
    teacher = MLP(64, [32], 10)
    teacher.load_state_dict(torch.load(tmp_path / "teacher.pt", weights_only=True))
    return teacher


def _from_an_earlier_lit_distill_run(tmp_path):
    run = DistillationModule(student=MLP(64, [32], 10))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", filename="teacher")
    fit_steps(tmp_path, run, steps=2, callbacks=[ckpt], enable_checkpointing=True)
    return DistillationModule.load_from_checkpoint(tmp_path / "ck" / "teacher.ckpt", student=MLP(64, [32], 10)).student


def _set_by_hand(tmp_path):
    teacher, trained = MLP(64, [32], 10), trained_mlp()
    with torch.no_grad():
        for param, value in zip(teacher.parameters(), trained.parameters()):
            param.copy_(value)
    return teacher


def _built_fresh(tmp_path):
    return MLP(64, [32], 10)  # a user's choice in Python (a random-teacher experiment): not second-guessed


@pytest.mark.parametrize(
    "make_teacher",
    [_trained_in_a_loop, _filled_with_load_state_dict, _from_an_earlier_lit_distill_run, _set_by_hand, _built_fresh],
)
def test_a_teacher_passed_in_python_is_taken_as_it_is(tmp_path, make_teacher):
    teacher = make_teacher(tmp_path)
    expected = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = fit_steps(tmp_path, DistillationModule(student=MLP(64, [16], 10), teacher=teacher), steps=2)
    assert module.global_step == 2
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, expected[key]), key  # trusted and still frozen


# ------------------------------------------------------------------------------------------- the recipe route
def recipe_module(**kwargs):
    """A module as the command line builds it from a recipe: its teacher made from the config."""
    kwargs.setdefault("teacher", MLP(64, [32], 10))
    kwargs.setdefault("allow_untrained_teacher", False)
    module = make_module(**kwargs)
    mark_built_from_config(module.teacher)
    return module


@pytest.mark.parametrize("stage", ["fit", "validate", "test"])
def test_a_recipe_teacher_without_weights_is_refused_before_any_step(in_tmp, stage):
    module = recipe_module()
    train, val = loaders()
    before = sorted(in_tmp.rglob("*"))
    run = trainer(in_tmp, enable_checkpointing=True)
    with pytest.raises(ValueError, match=RECIPE_UNTRAINED):
        run.fit(module, train, val) if stage == "fit" else getattr(run, stage)(module, val)
    assert module.trainer.global_step == 0 and sorted(in_tmp.rglob("*")) == before


def test_a_recipe_teacher_with_weights_from_a_file_or_an_opt_in_is_accepted(tmp_path):
    path = tmp_path / "teacher.safetensors"
    DistillationModule(student=trained_mlp()).export_student(path)
    assert fit_steps(tmp_path, recipe_module(teacher_checkpoint=str(path))).global_step == 1
    assert fit_steps(tmp_path, recipe_module(allow_untrained_teacher=True)).global_step == 1


def test_a_recipe_teacher_can_come_from_a_checkpoint_saved_with_it(tmp_path):
    saver = make_module(teacher=trained_mlp(), save_teacher=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", filename="with_teacher")
    fit_steps(tmp_path, saver, callbacks=[ckpt], enable_checkpointing=True)
    resumed = recipe_module(save_teacher=True)
    fit_steps(tmp_path, resumed, steps=2, ckpt_path=str(tmp_path / "ck" / "with_teacher.ckpt"))
    for key, value in saver.teacher.state_dict().items():
        assert torch.equal(resumed.teacher.state_dict()[key], value)
    with pytest.raises(ValueError, match=RECIPE_UNTRAINED):  # the same recipe without the checkpoint
        fit_steps(tmp_path, recipe_module(save_teacher=True))


def test_a_recipe_teacher_is_refused_when_the_checkpoint_did_not_bring_it(tmp_path):
    saver = make_module(teacher=trained_mlp())  # save_teacher off: the checkpoint holds the student only
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", filename="student_only")
    fit_steps(tmp_path, saver, callbacks=[ckpt], enable_checkpointing=True)
    with pytest.raises(ValueError, match=RECIPE_UNTRAINED):
        fit_steps(tmp_path, recipe_module(save_teacher=True), steps=2, ckpt_path=str(ckpt.best_model_path))


# ------------------------------------------------------------------------------------------- lifecycle
def test_resuming_from_another_models_checkpoint_names_it_and_the_shapes(tmp_path):
    other = make_module(student=MLP(64, [32], 10))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", filename="other")
    fit_steps(tmp_path, other, callbacks=[ckpt], enable_checkpointing=True)
    with pytest.raises(
        ValueError, match=r"checkpoint '.*other.ckpt' belongs to a different model.*\(32, 64\).*\(16, 64\)"
    ):
        fit_steps(tmp_path, make_module(student=MLP(64, [16], 10)), steps=2, ckpt_path=ckpt.best_model_path)


def test_freeze_turns_off_gradients_and_training_mode():
    model = freeze(MLP(4, [4], 2).train())
    assert not model.training and not any(p.requires_grad for p in model.parameters())
