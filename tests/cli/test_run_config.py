"""The run's full config reaches the loggers (flattened, with parameter counts) and config.yaml sits in its folder."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lit_distill.cli import main
from lit_distill.cli.progress import SummaryLastProgressBar
from lit_distill.cli.run_config import flat_config

ROOT = Path(__file__).resolve().parents[2]


def test_csv_logger_receives_the_resolved_config_and_parameter_counts(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    main(
        ["fit", "--config", "configs/digits/no_kd.yaml", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
         "--trainer.limit_val_batches=1", "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false",
         "--loss.ce.weight=0.5", "--model.optimizer.lr=0.02"]
    )  # fmt: skip
    run = tmp_path / "lightning_logs" / "version_0"
    logged = yaml.safe_load((run / "hparams.yaml").read_text())
    expected = {
        "loss.ce.class_path": "lit_distill.losses.CrossEntropy",
        "loss.ce.weight": 0.5,
        "loss.ce.label_smoothing": 0.0,
        "model.optimizer.class_path": "torch.optim.AdamW",
        "model.optimizer.lr": 0.02,
        "model.student.class_path": "lit_distill.models.MLP",
        "model.student.hidden": [32],
        "data.class_path": "lit_distill.data.DigitsDataModule",
        "data.batch_size": 32,
        "trainer.max_epochs": 1,
        "params.student": 64 * 32 + 32 + 32 * 10 + 10,
        "params.trainable": 64 * 32 + 32 + 32 * 10 + 10,
        "recipe": "configs/digits/no_kd.yaml",
    }
    assert {k: logged.get(k) for k in expected} == expected
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["losses"][0]["init_args"]["weight"] == 0.5
    assert not (tmp_path / "config.yaml").exists()  # never into the working directory
    main(
        ["fit", "--config", "configs/digits/no_kd.yaml", "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
         "--trainer.limit_val_batches=0", "--trainer.logger=false", "--trainer.enable_checkpointing=false"]
    )  # fmt: skip
    assert not (tmp_path / "config.yaml").exists()  # no per-run folder, so no config file


def test_flat_config_names_keys_like_the_flags_that_set_them():
    config = {
        "trainer": {"max_epochs": 3, "callbacks": [{"class_path": "X", "init_args": {"a": 1}}]},
        "model": {
            "class_path": "lit_distill.DistillationModule",
            "init_args": {
                "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}},
                "losses": [
                    {"class_path": "lit_distill.losses.LogitKD", "init_args": {"temperature": 4.0, "weight": 0.9}},
                    {"class_path": "lit_distill.losses.CrossEntropy", "init_args": {"weight": 0.1}},
                ],
            },
        },
    }
    assert flat_config(config, ["logit_kd", "ce"]) == {
        "trainer.max_epochs": 3,
        "trainer.callbacks.0.class_path": "X",
        "trainer.callbacks.0.a": 1,
        "model.class_path": "lit_distill.DistillationModule",
        "model.optimizer.class_path": "torch.optim.SGD",
        "model.optimizer.lr": 0.1,
        "loss.logit_kd.class_path": "lit_distill.losses.LogitKD",
        "loss.logit_kd.temperature": 4.0,
        "loss.logit_kd.weight": 0.9,
        "loss.ce.class_path": "lit_distill.losses.CrossEntropy",
        "loss.ce.weight": 0.1,
    }


def test_progress_bar_reads_sanely_without_max_epochs():
    bar = SummaryLastProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1)
    assert bar._get_train_description(1).strip() == "Epoch 1"
    bar._trainer = SimpleNamespace(max_epochs=3)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"


def test_a_run_that_fails_after_its_first_step_keeps_its_folder(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    stop_on_a_missing_metric = ["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/nope"]
    with pytest.raises(SystemExit):
        main(
            ["fit", "--config", "configs/digits/no_kd.yaml", "--trainer.max_epochs=1",
             "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
             "--trainer.check_val_every_n_epoch=1", *stop_on_a_missing_metric]
        )  # fmt: skip
    assert "Early stopping conditioned on metric `val/nope`" in capsys.readouterr().err
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "hparams.yaml").is_file()  # two steps were taken: kept


def test_without_a_run_folder_logger_checkpoints_and_student_share_the_runs_folder(tmp_path, monkeypatch):
    """Lightning would write ``./checkpoints/`` (no logger) or ``./<project>/<id>/checkpoints`` (W&B)."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lightning_logs" / "version_4").mkdir(parents=True)  # an earlier run's folder is left alone
    main(
        ["fit", "--config", "configs/digits/no_kd.yaml", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
         "--trainer.limit_val_batches=1", "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false",
         "--trainer.logger=false"]
    )  # fmt: skip
    run = tmp_path / "lightning_logs" / "version_5"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch=0-step=2.ckpt"]
    assert (run / "student.safetensors").is_file()
    assert not (tmp_path / "checkpoints").exists()
