"""ExportStudent: where the student goes (one predictable folder per run, never the working directory)."""

from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger

from lit_distill.callbacks import ExportStudent, TeacherCheckpoint
from lit_distill.export import load_student
from lit_distill.models import MLP
from tests.helpers import loaders, make_module, trainer


def fit_exporting(tmp_path, **kwargs):
    train, val = loaders()
    trainer(tmp_path, max_steps=1, callbacks=[ExportStudent()], **kwargs).fit(make_module(), train, val)


def test_without_a_logger_each_run_exports_into_its_own_version_folder(in_tmp):
    fit_exporting(in_tmp)
    fit_exporting(in_tmp)
    found = sorted(p.relative_to(in_tmp).as_posix() for p in in_tmp.rglob("*.safetensors"))
    assert found == ["lightning_logs/version_0/student.safetensors", "lightning_logs/version_1/student.safetensors"]
    load_student(MLP(64, [16], 10), in_tmp / found[1])


def test_with_a_csv_logger_the_student_goes_to_its_version_folder(in_tmp):
    fit_exporting(in_tmp, logger=CSVLogger(str(in_tmp / "logs"), name="run"))
    assert (in_tmp / "logs/run/version_0/student.safetensors").is_file()
    assert not list(Path(in_tmp).glob("*.safetensors"))


def test_a_fixed_logger_version_that_already_holds_a_student_is_refused_before_training(in_tmp):
    logger = CSVLogger(str(in_tmp), name="run", version="mine")
    fit_exporting(in_tmp, logger=logger)
    before = sorted(in_tmp.rglob("*"))
    with pytest.raises(FileExistsError, match=r"run/mine/student\.safetensors' exists; set overwrite: true"):
        fit_exporting(in_tmp, logger=CSVLogger(str(in_tmp), name="run", version="mine"))
    assert sorted(in_tmp.rglob("*")) == before


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
