"""The order of a recipe's callbacks: what the run prints last, and what a command-line flag reaches.

Lightning calls ``on_fit_end`` in list order, so an export listed after FitSummary prints its "written to ..." line
after the accuracy summary. A flag ``--trainer.callbacks.init_args.ARG`` sets ARG on the last callback of the list
only (jsonargparse), so a recipe that tells the user to add one keeps that callback last.
"""

from pathlib import Path

import pytest
import yaml

from lit_distill.cli import main
from tests.test_cli import rerun_flags, skip_unless_installed

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
EXPORTS = {"ExportStudent", "ExportPretrained"}


def callbacks_of(recipe: dict) -> list[dict]:
    return (recipe.get("trainer") or {}).get("callbacks") or []


def callback_names(config: Path) -> list[str]:
    return [c["class_path"].rsplit(".", 1)[-1] for c in callbacks_of(yaml.safe_load(config.read_text()))]


def name_of(config: Path) -> str:
    return config.relative_to(ROOT).as_posix()


DOCUMENTED = [c for c in CONFIGS if rerun_flags(c)]


@pytest.mark.parametrize("config", [c for c in CONFIGS if c not in DOCUMENTED], ids=name_of)
def test_summary_is_listed_after_the_export(config):
    names = callback_names(config)
    after_summary = names[names.index("FitSummary") :] if "FitSummary" in names else []
    late = [n for n in after_summary if n in EXPORTS]
    assert not late, f"{config.name}: move {late} above FitSummary in trainer.callbacks"


@pytest.mark.parametrize("config", DOCUMENTED, ids=name_of)
def test_a_documented_callback_flag_reaches_its_callback(config, capsys):
    skip_unless_installed(name_of(config))
    flags = [f"--trainer.callbacks.init_args.{arg}={value}" for arg, value in rerun_flags(config)]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), *flags, "--print_config"])
    assert exit_info.value.code in (None, 0), capsys.readouterr().err[-2000:]
    last = callbacks_of(yaml.safe_load(capsys.readouterr().out))[-1]
    for arg, value in rerun_flags(config):
        assert last["init_args"][arg] == yaml.safe_load(value), f"{config.name}: {arg} did not reach {last}"


def test_the_checks_see_the_recipes_they_are_about():
    names = [set(callback_names(c)) for c in CONFIGS]
    assert sum(1 for n in names if "FitSummary" in n and n & EXPORTS) >= 10
    assert len(DOCUMENTED) >= 4  # the teachers (digits, cnn, text, llm)
