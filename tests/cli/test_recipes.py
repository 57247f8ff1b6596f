"""The CLI's knowledge of the shipped recipes: which recipe writes which file (checked against configs/), the hint an
error about such a file gets, and that none of it comes from the user's working directory."""

from pathlib import Path

import pytest
import yaml

from lit_distill.cli import main
from lit_distill.cli.errors import describe
from lit_distill.cli.help import short_help
from lit_distill.cli.recipes import OUTPUTS, RECIPES, Producer, close_recipe, producer_hint, shipped
from tests.test_cli import rerun_flags, usage_of

ROOT = Path(__file__).resolve().parents[2]


def outputs_of(config: str) -> list[str]:
    """The fixed paths a recipe's callbacks write: checkpoints, exported folders, JSONL files, teacher caches."""
    recipe = yaml.safe_load((ROOT / config).read_text())
    found = []
    for callback in (recipe.get("trainer") or {}).get("callbacks") or []:
        kind, args = callback["class_path"].rsplit(".", 1)[-1], callback.get("init_args") or {}
        if kind in ("TeacherCheckpoint", "ModelCheckpoint") and "dirpath" in args and "{" not in args["filename"]:
            found.append(f"{args['dirpath']}/{args['filename']}.ckpt")
        elif kind == "ExportPretrained" and args.get("dirpath"):
            found.append(args["dirpath"])
        elif kind in ("ExportStudent", "JsonlPredictionWriter") and args.get("path"):
            found.append(args["path"])
        elif kind == "TeacherCacheWriter":
            found.append(recipe["data"]["init_args"]["cache_dir"])
    return found


def test_the_table_of_outputs_is_what_the_shipped_recipes_write():
    derived = {}
    for config in shipped():
        flags = " ".join(f"--trainer.callbacks.init_args.{arg}={value}" for arg, value in rerun_flags(config))
        derived.update({out: Producer(usage_of(config), config, flags) for out in outputs_of(config)})
    assert derived == OUTPUTS
    assert shipped() == sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert RECIPES == ROOT / "configs"


def test_a_missing_output_names_the_recipe_that_writes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = "checkpoint 'checkpoints/text/teacher.ckpt' does not exist."
    assert producer_hint(message) == " Create it first with: lit-distill fit --config configs/text/teacher.yaml"
    first = describe(FileNotFoundError(message), [], [])[0]
    assert (
        first
        == f"FileNotFoundError: {message} Create it first with: lit-distill fit --config configs/text/teacher.yaml"
    )
    cache = "no teacher cache in 'artifacts/digits/teacher_cache'."
    assert (
        producer_hint(cache) == " Create it first with: lit-distill predict --config configs/digits/teacher_cache.yaml"
    )


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        (
            "checkpoint 'checkpoints/digits/teacher.ckpt' is damaged or truncated (100 bytes)",
            " Recreate it with: lit-distill fit --config configs/digits/teacher.yaml "
            "--trainer.callbacks.init_args.overwrite=true",
        ),
        ("checkpoint 'checkpoints/digits/teacher.ckpt' does not fit MLP: ...", ""),  # the user changed the model
        ("'checkpoints/digits/teacher.ckpt' exists and other recipes read it", ""),
        ("checkpoint 'checkpoints/digits/teacher.ckpt.bak' does not exist.", ""),  # not a recipe's output
        ("checkpoint 'my/teacher.ckpt' does not exist.", ""),
        ("... Create it first with: lit-distill fit --config configs/digits/teacher.yaml", ""),  # said already
    ],
)
def test_an_existing_output_gets_a_hint_only_when_it_is_damaged(message, hint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints/digits").mkdir(parents=True)
    (tmp_path / "checkpoints/digits/teacher.ckpt").write_bytes(b"x" * 100)
    assert producer_hint(message) == hint


def test_recipes_and_hints_never_come_from_the_working_directory(tmp_path, monkeypatch, capsys):
    """A project of the user's own with its own configs/ folder: lit-distill describes only what it ships."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "my_teacher.yaml").write_text(
        "# Mine.\n#   lit-distill fit --config configs/my_teacher.yaml\ntrainer:\n  callbacks:\n"
        "    - class_path: lit_distill.callbacks.TeacherCheckpoint\n"
        "      init_args: {dirpath: mine, filename: teacher}\n"
    )
    assert producer_hint("checkpoint 'mine/teacher.ckpt' does not exist.") == ""
    assert "my_teacher" not in short_help(width=200)
    assert close_recipe("configs/my_teacher.yml") != "did you mean configs/my_teacher.yaml?"
    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/quickstat.yaml"])
    assert f"did you mean {ROOT / 'configs/quickstart.yaml'}?" in capsys.readouterr().err  # not in this folder


def test_the_cli_names_the_producer_of_a_missing_teacher_checkpoint_by_itself(tmp_path, monkeypatch, capsys):
    """The library's error says the file is missing; the command to make it comes from the CLI's table."""
    import shutil

    import lit_distill.weights

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lit_distill.weights, "producer_hint", lambda *args, **kwargs: "", raising=False)
    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/quickstart.yaml"])
    first = capsys.readouterr().err.splitlines()[0]
    assert first.endswith(
        "'checkpoints/digits/teacher.ckpt' does not exist. Create it first with: lit-distill fit --config "
        "configs/digits/teacher.yaml"
    ), first
