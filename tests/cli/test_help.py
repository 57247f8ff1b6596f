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
    assert 40 < len(lines) <= 110  # Lightning's own `fit --help` is ~480 lines of Trainer flags
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


def test_help_imports_neither_torch_nor_lightning():
    code = (
        "import sys; from lit_distill.cli import main; main(['--help']); "
        "assert not {'torch', 'lightning'} & set(sys.modules), sorted(m for m in sys.modules if 'torch' in m)"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Loss strategies" in run.stdout


def test_recipe_summaries_come_from_their_first_comment_sentence():
    text = short_help(width=200)
    assert "configs/digits/dkd.yaml" in text and "Decoupled KD (Zhao et al. 2022)" in text
