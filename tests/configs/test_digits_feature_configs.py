"""Each feature/DKD/DIST digits recipe runs `fit` with fast_dev_run against a teacher checkpoint made here."""

from pathlib import Path

import pytest
import torch
import yaml

from lit_distill import DistillationModule
from lit_distill.cli import main
from lit_distill.models import MLP, SmallCNN

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "configs" / "digits"
CNN_RECIPES = ["fitnets", "attention", "rkd", "pkt", "combined"]
MLP_RECIPES = ["dkd", "dist", "hidden"]
FAST = ["--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Untrained teachers saved the way the teacher recipes save them (a DistillationModule checkpoint)."""
    folder = tmp_path_factory.mktemp("teachers")
    cnn, mlp = folder / "cnn_teacher.ckpt", folder / "teacher.ckpt"
    torch.manual_seed(0)
    torch.save({"state_dict": DistillationModule(SmallCNN(1, [32, 64, 128], 10)).state_dict()}, cnn)
    torch.save({"state_dict": DistillationModule(MLP(64, [256, 256], 10, dropout=0.1)).state_dict()}, mlp)
    return {"cnn": cnn, "mlp": mlp}


def run(config: str, *extra: str) -> None:
    main(["fit", "--config", str(DIGITS / f"{config}.yaml"), *FAST, *extra])


@pytest.mark.parametrize("config", CNN_RECIPES + MLP_RECIPES)
def test_recipe_runs_fast_dev_run(config, teachers, in_tmp, capsys):
    teacher = teachers["cnn" if config in CNN_RECIPES else "mlp"]
    run(config, f"--model.init_args.teacher_checkpoint={teacher}")
    out = capsys.readouterr().out
    assert "teacher_acc=" in out  # the teacher was loaded and evaluated next to the student


@pytest.mark.parametrize("config", ["cnn_teacher", "cnn_no_kd"])
def test_teacher_free_recipes_run_fast_dev_run(config, in_tmp, capsys):
    run(config)
    assert "student_acc=" in capsys.readouterr().out


def test_feature_recipes_point_at_the_checkpoint_cnn_teacher_writes():
    producer = yaml.safe_load((DIGITS / "cnn_teacher.yaml").read_text())
    savers = ("ModelCheckpoint", "TeacherCheckpoint")
    saver = next(c for c in producer["trainer"]["callbacks"] if c["class_path"].endswith(savers))
    written = f"{saver['init_args']['dirpath']}/{saver['init_args']['filename']}.ckpt"
    teacher_model = producer["model"]["init_args"]["student"]
    for config in CNN_RECIPES:
        recipe = yaml.safe_load((DIGITS / f"{config}.yaml").read_text())["model"]["init_args"]
        assert recipe["teacher_checkpoint"] == written, config
        assert recipe["teacher"] == teacher_model, f"{config}: teacher model differs from the one cnn_teacher trains"


def test_missing_teacher_checkpoint_names_the_recipe_that_makes_it(in_tmp, capsys):
    (in_tmp / "configs").symlink_to(ROOT / "configs")  # the hint searches ./configs for the producer
    with pytest.raises(SystemExit):
        run("fitnets")
    assert "configs/digits/cnn_teacher.yaml" in capsys.readouterr().err
