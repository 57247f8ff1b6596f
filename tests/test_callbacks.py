"""ExportStudent: where the student goes (one predictable folder per run, never the working directory)."""

from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger

from lit_distill.callbacks import ExportStudent
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
