"""configs/text/*.yaml run end to end through the CLI (fast_dev_run), in dependency order."""

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from lit_distill.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["teacher", "no_kd", "token_kd", "hf_token_kd"]
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]


def make_tiny_hf_models():
    spec = importlib.util.spec_from_file_location("make_tiny_hf_models", ROOT / "scripts" / "make_tiny_hf_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A copy of configs/ with the text teacher trained for 2 steps and the tiny HF models written."""
    work = tmp_path_factory.mktemp("text_recipes")
    shutil.copytree(ROOT / "configs", work / "configs")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        main(["fit", "--config", "configs/text/teacher.yaml", *SHORT, "--trainer.limit_val_batches=2", *QUIET])
        assert (work / "checkpoints/text/teacher.ckpt").is_file()
        if importlib.util.find_spec("transformers") is not None:
            make_tiny_hf_models().make("checkpoints/text/hf_tiny")
    return work


def test_missing_inputs_name_the_command_that_makes_them(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    for config, command in (
        ("token_kd", "lit-distill fit --config configs/text/teacher.yaml"),
        ("hf_token_kd", "python scripts/make_tiny_hf_models.py"),
    ):
        if config == "hf_token_kd":
            pytest.importorskip("transformers")
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", f"configs/text/{config}.yaml", *QUIET])
        assert exit_info.value.code == 2
        assert command in capsys.readouterr().err


@pytest.mark.parametrize("config", CONFIGS)
def test_text_config_fast_dev_run(config, workdir, monkeypatch):
    if config.startswith("hf_"):
        pytest.importorskip("transformers")
    monkeypatch.chdir(workdir)
    main(["fit", "--config", f"configs/text/{config}.yaml", "--trainer.fast_dev_run=true", *QUIET])


def test_token_kd_recipe_exports_a_reloadable_student(workdir, monkeypatch):
    from lit_distill.models.hf import load_pretrained

    monkeypatch.chdir(workdir)
    before = set(workdir.glob("lightning_logs/version_*/student"))
    main(["fit", "--config", "configs/text/token_kd.yaml", *SHORT, "--trainer.limit_val_batches=1", *QUIET])
    # no logger: the export lands in the next free lightning_logs/version_N, never in the working directory
    (folder,) = set(workdir.glob("lightning_logs/version_*/student")) - before
    assert not (workdir / "student").exists()
    student = load_pretrained(folder)
    assert student.config["n_layer"] == 1 and student.tokenizer_id == "bytes"
    out = student.generate(torch.tensor([list(b"def ")]), max_new_tokens=5)
    assert out.shape == (1, 9)
