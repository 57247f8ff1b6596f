"""Every folder a shipped recipe writes into is git-ignored, so running the recipes leaves `git status` clean."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OUTPUT_KEYS = {"dirpath", "cache_dir", "path", "default_root_dir"}


def output_paths(node):
    """Values of output-path arguments anywhere in a recipe (callbacks, data wrappers)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in OUTPUT_KEYS and isinstance(value, str):
                yield value
            else:
                yield from output_paths(value)
    elif isinstance(node, list):
        for item in node:
            yield from output_paths(item)


def written_by_recipes():
    found = {"lightning_logs"}  # loggers and exports (lit_distill.export.export_dir)
    for config in (ROOT / "configs").rglob("*.yaml"):
        recipe = yaml.safe_load(config.read_text())
        trainer_and_data = {"trainer": recipe.get("trainer"), "data": recipe.get("data")}
        found |= {Path(p).parts[0] for p in output_paths(trainer_and_data)}
    return found


def test_recipe_outputs_are_git_ignored():
    ignored = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()}
    outputs = written_by_recipes()
    assert {"checkpoints", "artifacts", "generated"} <= outputs  # the parser sees the producers
    assert outputs <= ignored, f"not git-ignored: {sorted(outputs - ignored)}"
