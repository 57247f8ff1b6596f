"""ExportStudent and ExportPretrained: where the student goes (one predictable folder per run, never the working
directory), and an occupied target refused before training."""

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


def test_export_pretrained_writes_a_gpt_folder_into_the_runs_folder_and_refuses_a_full_one_before_training(in_tmp):
    import torch
    from torch.utils.data import DataLoader

    from lit_distill import DistillationModule
    from lit_distill.callbacks import ExportPretrained
    from lit_distill.losses import CrossEntropy
    from lit_distill.models import GPT, load_pretrained

    ids = torch.randint(0, 258, (8, 9))
    batches = DataLoader([{"input_ids": row[:-1], "labels": row[1:]} for row in ids], batch_size=4)
    student = GPT(n_layer=1, n_head=2, n_embd=16, block_size=8)
    trainer(in_tmp, max_steps=1, callbacks=[ExportPretrained()]).fit(
        DistillationModule(student=student, losses=[CrossEntropy()]), batches
    )
    folder = in_tmp / "lightning_logs" / "version_0" / "student"
    assert torch.equal(load_pretrained(folder)(ids[:, :-1]), student.eval()(ids[:, :-1]))
    steps = []
    module = DistillationModule(student=GPT(n_layer=1, n_head=2, n_embd=16, block_size=8), losses=[CrossEntropy()])
    module.training_step = lambda *args: steps.append(1)
    with pytest.raises(FileExistsError, match=r"student' is not empty; set overwrite: true"):
        trainer(in_tmp, max_steps=1, callbacks=[ExportPretrained(str(folder))]).fit(module, batches)
    assert not steps
