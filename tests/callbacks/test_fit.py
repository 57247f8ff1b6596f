"""TeacherCheckpoint: the checkpoint other recipes read by name, replaced only when asked."""

import pytest

from lit_distill.callbacks import TeacherCheckpoint
from lit_distill.models import MLP
from tests.helpers import loaders, trainer


def fit_teacher(tmp_path, **kwargs):
    from lit_distill import DistillationModule

    train, val = loaders()
    callback = TeacherCheckpoint(dirpath=str(tmp_path / "ck"), filename="teacher", monitor="val/student_acc",
                                 mode="max", overwrite=kwargs.pop("overwrite", False))  # fmt: skip
    run = trainer(tmp_path, max_epochs=1, enable_checkpointing=True, callbacks=[callback], **kwargs)
    run.fit(DistillationModule(student=MLP(64, [16], 10)), train, val)
    return run


def test_a_teacher_checkpoint_is_replaced_only_when_asked(tmp_path):
    fit_teacher(tmp_path)
    target = tmp_path / "ck" / "teacher.ckpt"
    first = target.read_bytes()
    with pytest.raises(FileExistsError, match=r"teacher\.ckpt' exists and other recipes read it.*overwrite=true"):
        fit_teacher(tmp_path)
    fit_teacher(tmp_path, fast_dev_run=True)  # a smoke run writes no checkpoint: nothing to refuse
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["teacher.ckpt"] and target.read_bytes() == first
    run = fit_teacher(tmp_path, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["teacher.ckpt"]  # no teacher-v1.ckpt
    assert target.read_bytes() != first and run.checkpoint_callback.best_model_path == str(target)


def test_a_teacher_checkpoint_needs_one_fixed_name():
    with pytest.raises(ValueError, match=r"fixed filename.*got '\{epoch\}-teacher'"):
        TeacherCheckpoint(dirpath="ck", filename="{epoch}-teacher")
    with pytest.raises(ValueError, match="save_top_k must be 1, got 3"):
        TeacherCheckpoint(dirpath="ck", filename="teacher", save_top_k=3)
