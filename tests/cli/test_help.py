"""`lit-distill --help`: short, about lit-distill's own arguments, and answered without importing torch."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from lit_distill.cli import main
from lit_distill.cli.help import short_help

ROOT = Path(__file__).resolve().parents[2]


def test_short_help_leads_with_the_module_strategies_data_and_recipes(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(["--help"])
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert 40 < len(lines) <= 125  # one screenful or two; Lightning's own `fit --help` is ~480 lines of Trainer flags
    order = [text.index(h) for h in ("DistillationModule (", "Loss strategies", "Data modules", "Recipes (")]
    assert order == sorted(order)
    from lit_distill import losses
    from lit_distill.module import DistillationModule

    for name in inspect.signature(DistillationModule).parameters:
        assert f"\n  {name} " in text, name
    strategies = [n for n in losses.__all__ if n not in ("DistillationLoss", "FeaturePairLoss")]
    for name in strategies:
        assert f"\n  {name} " in text, name
    assert "args: divergence, temperature, beta" in text  # LogitKD's own arguments
    for name in ("DigitsDataModule", "TextDataModule", "CachedTeacherDataModule", "SentencesDataModule"):
        assert name in text
    assert "configs/quickstart.yaml" in text and "predict: " in text
    assert "--loss.NAME.ARG VALUE" in text and "--help-full" in text
    main(["fit", "-h"])
    assert capsys.readouterr().out.startswith("usage: lit-distill fit --config RECIPE.yaml")


def test_help_full_is_lightnings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help-full"])
    assert exit_info.value.code == 0
    assert "--trainer.max_epochs" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "shown"),
    [(["--help"], "Loss strategies"), (["fit", "--model.help", "DistillationModule"], "--model.student")],
)
def test_help_imports_neither_torch_nor_lightning(args, shown):
    code = (
        f"import sys; from lit_distill.cli import main; main({args!r}); "
        "assert not {'torch', 'lightning'} & set(sys.modules), sorted(m for m in sys.modules if 'torch' in m)"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert shown in run.stdout


def test_recipe_summaries_come_from_their_first_comment_sentence():
    text = short_help(width=200)
    assert "configs/digits/dkd.yaml" in text and "Decoupled KD (Zhao et al. 2022)" in text


@pytest.mark.parametrize(
    "flag", [["--model.help", "lit_distill.DistillationModule"], ["--model.help=DistillationModule"]]
)
def test_model_help_shows_the_modules_arguments_and_how_to_ask_for_a_loss_or_a_model(flag, capsys):
    from lit_distill.module import DistillationModule

    main(["fit", *flag])
    text = capsys.readouterr().out
    assert len(text.splitlines()) < 90  # jsonargparse lists every torch.nn.Module subclass: about 1,000 lines
    assert "torch.nn.Identity" not in text
    for name in inspect.signature(DistillationModule).parameters:
        assert f"\n  --model.{name}" in text, name
    assert "lit-distill fit --model.losses.help lit_distill.losses.LogitKD" in text
    assert "lit-distill fit --model.student.help lit_distill.models.MLP" in text
    assert "--model.optimizer.help torch.optim.AdamW" in text


def test_a_subclass_shows_its_own_arguments_and_those_it_passes_on(capsys):
    from lit_distill.generation import OnPolicyDistillationModule
    from lit_distill.module import DistillationModule

    main(["fit", "--model.help", "lit_distill.generation.OnPolicyDistillationModule"])
    text = capsys.readouterr().out
    own, passed_on = text.split("Arguments it passes on to DistillationModule:")
    assert "lmbda" in inspect.signature(OnPolicyDistillationModule).parameters and "\n  --model.lmbda" in own
    inherited = set(inspect.signature(DistillationModule).parameters) - set(
        inspect.signature(OnPolicyDistillationModule).parameters
    )
    for name in inherited:
        assert f"\n  --model.{name}" in passed_on, name


@pytest.mark.parametrize(
    ("flag", "argument"),
    [
        ("--model.losses.help=lit_distill.losses.LogitKD", "temperature"),
        ("--model.student.help=lit_distill.models.MLP", "hidden"),
    ],
)
def test_the_help_a_model_help_points_to_answers(flag, argument, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", flag])
    assert exit_info.value.code == 0
    assert argument in capsys.readouterr().out
