"""`--loss.NAME.ARG VALUE` changes exactly one loss of the recipe, addressed by name or position."""

from pathlib import Path

import pytest

from lit_distill.cli.app import build
from lit_distill.cli.errors import ConfigError
from lit_distill.cli.overrides import apply_loss_overrides, split_loss_overrides

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ["--config", str(ROOT / "configs" / "digits" / "combined.yaml"), "--model.init_args.teacher_checkpoint=null"]


def built_losses(*overrides: str):
    cli = build([*RECIPE, "--trainer.logger=false", *overrides], run=False, save_config_callback=None)
    return {loss.name: loss for loss in cli.model.losses}


@pytest.fixture(scope="module")
def recipe_losses():
    losses = built_losses()
    assert list(losses) == ["logit_kd", "hint", "ce"]
    assert losses["logit_kd"].temperature == 4.0 and losses["ce"].weight != 0.25
    return {name: (loss.weight, getattr(loss, "temperature", None)) for name, loss in losses.items()}


@pytest.mark.parametrize(
    "flags",
    [
        ["--loss.logit_kd.temperature", "2", "--loss.ce.weight", "0.25"],  # by name, value as the next argument
        ["--loss.0.temperature=2", "--loss.2.weight=0.25"],  # by position; W&B sweeps pass --key=value
        ["--model.init_args.losses.0.init_args.temperature", "2", "--model.losses.2.weight=0.25"],  # jsonargparse's
    ],
)
def test_override_changes_only_the_addressed_loss(flags, recipe_losses):
    losses = built_losses(*flags)
    assert losses["logit_kd"].temperature == 2.0 and isinstance(losses["logit_kd"].temperature, float)
    assert losses["ce"].weight == 0.25
    assert losses["logit_kd"].weight == recipe_losses["logit_kd"][0]  # the rest keeps the recipe's values
    assert losses["hint"].weight == recipe_losses["hint"][0]


def test_override_by_a_name_the_recipe_gives(tmp_path):
    recipe = tmp_path / "named.yaml"
    text = (ROOT / "configs" / "quickstart.yaml").read_text()
    recipe.write_text(text.replace("init_args: {weight: 0.1}", "init_args: {weight: 0.1, name: hard}"))
    args = ["--config", str(recipe), "--model.init_args.teacher_checkpoint=null", "--loss.hard.weight=0.7"]
    cli = build([*args, "--trainer.logger=false"], run=False, save_config_callback=None)
    assert [(loss.name, loss.weight) for loss in cli.model.losses] == [("logit_kd", 0.9), ("hard", 0.7)]


def test_split_reads_values_as_yaml():
    rest, found = split_loss_overrides(["fit", "--loss.kd.beta", "0.5", "--loss.0.name=null", "--trainer.x", "1"])
    assert rest == ["fit", "--trainer.x", "1"]
    assert [(o.target, o.arg, o.value) for o in found] == [("kd", "beta", 0.5), ("0", "name", None)]
    with pytest.raises(ConfigError, match="--loss.kd.beta needs a value"):
        split_loss_overrides(["--loss.kd.beta"])


def test_wrong_target_or_argument_is_refused_naming_the_choices():
    losses = [{"class_path": "lit_distill.losses.LogitKD", "init_args": {"temperature": 4.0}}]
    _, found = split_loss_overrides(["--loss.3.temperature=2"])
    with pytest.raises(
        ConfigError, match=r"the recipe has 1 loss\(es\), no position 3; they are 0: logit_kd \(LogitKD\)"
    ):
        apply_loss_overrides(losses, found)
    _, found = split_loss_overrides(["--loss.logit_kd.temprature=2"])
    with pytest.raises(ConfigError, match="has no argument 'temprature'; did you mean 'temperature'"):
        apply_loss_overrides(losses, found)
    with pytest.raises(ConfigError, match="this recipe lists no losses"):
        apply_loss_overrides(None, found)
    assert losses[0]["init_args"] == {"temperature": 4.0}  # the input is not modified
