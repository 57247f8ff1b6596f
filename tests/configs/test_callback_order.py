"""Recipes list their export callback before FitSummary, so a run's last line is the summary, not the export path.

Lightning calls ``on_fit_end`` in list order; FitSummary placed first would print its accuracy line and the
"student written to ..." line after it.
"""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
EXPORTS = {"ExportStudent", "ExportPretrained"}


def callback_names(config: Path) -> list[str]:
    callbacks = (yaml.safe_load(config.read_text()).get("trainer") or {}).get("callbacks") or []
    return [c["class_path"].rsplit(".", 1)[-1] for c in callbacks]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_summary_is_listed_after_the_export(config):
    names = callback_names(config)
    after_summary = names[names.index("FitSummary") :] if "FitSummary" in names else []
    late = [n for n in after_summary if n in EXPORTS]
    assert not late, f"{config.name}: move {late} above FitSummary in trainer.callbacks"


def test_the_check_sees_exporting_recipes():
    names = [set(callback_names(c)) for c in CONFIGS]
    assert sum(1 for n in names if "FitSummary" in n and n & EXPORTS) >= 10
