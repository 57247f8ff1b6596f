"""Every mistake reaching `lit-distill` ends with exit 2, the cause on the first line, no traceback, no new files."""

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_distill.cli import main
from lit_distill.models import MLP

ROOT = Path(__file__).resolve().parents[2]
Q = ["fit", "--config", "configs/quickstart.yaml"]
NO_KD = [
    "fit",
    "--config",
    "configs/digits/no_kd.yaml",
    "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false",
]


def edited(name: str, old: str, new: str, source: str = "configs/quickstart.yaml") -> list[str]:
    text = Path(source).read_text()
    assert old in text, old
    Path(name).write_text(text.replace(old, new, 1))
    return ["fit", "--config", name]


def nan_student() -> str:
    state = {k: torch.full_like(v, float("nan")) for k, v in MLP(64, [32], 10).state_dict().items()}
    torch.save({"state_dict": {f"student.{k}": v for k, v in state.items()}}, "nan_student.ckpt")
    return "--model.init_args.student_checkpoint=nan_student.ckpt"


# mistake -> (arguments, built in the recipe folder; text the first line must hold)
MISTAKES = {
    "misspelled model class_path": (
        lambda: edited("a.yaml", "lit_distill.models.MLP", "lit_distill.models.MPL"),
        "a.yaml: model.init_args.student.class_path: 'lit_distill.models.MPL' does not exist (lit_distill.models "
        "has no 'MPL'); did you mean 'lit_distill.models.MLP'?",
    ),
    "misspelled loss class_path": (
        lambda: edited("b.yaml", "lit_distill.losses.LogitKD", "lit_distill.losses.LogitKd"),
        "b.yaml: model.init_args.losses[0].class_path: 'lit_distill.losses.LogitKd' does not exist "
        "(lit_distill.losses has no 'LogitKd'); did you mean 'lit_distill.losses.LogitKD'?",
    ),
    "choice not in a Literal": (
        lambda: edited("c.yaml", "temperature: 4.0,", "temperature: 4.0, divergence: kld,"),
        "c.yaml: model.init_args.losses[0].init_args.divergence: 'kld' is not one of 'forward_kl', 'reverse_kl', "
        "'jsd', 'tvd' (LogitKD)",
    ),
    "misspelled loss argument": (
        lambda: edited("d.yaml", "temperature: 4.0", "temprature: 4.0"),
        "d.yaml: model.init_args.losses[0].init_args.temprature: LogitKD has no argument 'temprature'; "
        "did you mean 'temperature'?",
    ),
    "misspelled trainer key in YAML": (
        lambda: edited("e.yaml", "max_epochs: 100", "max_epcohs: 100"),
        "e.yaml: trainer.max_epcohs: unknown option; did you mean 'trainer.max_epochs'?",
    ),
    "misspelled section in YAML": (
        lambda: edited("m.yaml", "\nmodel:", "\nmodle:"),
        "m.yaml: modle: unknown option; did you mean 'model'?",
    ),
    "model of the wrong class": (
        lambda: [*Q, "--model", "lit_distill.models.MLP"],
        "command line: model: 'lit_distill.models.MLP' is not a LightningModule; give a LightningModule or a "
        "subclass of it",
    ),
    "empty YAML": (lambda: (Path("f.yaml").write_text(""), ["fit", "--config", "f.yaml"])[1], "f.yaml is empty"),
    "YAML syntax error": (
        lambda: (Path("g.yaml").write_text("trainer:\n  max_epochs: [1\nmodel: x\n"), ["fit", "-c", "g.yaml"])[1],
        "g.yaml: not valid YAML at line 3, column 6",
    ),
    "recipe path typo": (
        lambda: ["fit", "--config", "configs/quickstat.yaml"],
        "config file 'configs/quickstat.yaml' does not exist; did you mean configs/quickstart.yaml?",
    ),
    "no recipe": (lambda: ["fit"], "no data and no model given: name a recipe with --config"),
    "unknown subcommand": (lambda: ["fti", *Q[1:]], "unknown subcommand 'fti'; did you mean 'fit'?"),
    "misspelled trainer flag": (
        lambda: [*Q, "--trainer.max_epcohs", "3"],
        "command line: trainer.max_epcohs: unknown option; did you mean 'trainer.max_epochs'?",
    ),
    "value of the wrong type": (
        lambda: [*Q, "--trainer.max_epochs", "abc"],
        "command line: trainer.max_epochs: expected int, got 'abc'",
    ),
    "data argument typo": (
        lambda: [*Q, "--data.batch_sise", "3"],
        "command line: data.init_args.batch_sise: DigitsDataModule has no argument 'batch_sise'; did you mean "
        "'batch_size'?",
    ),
    "own class not importable": (
        lambda: edited("h.yaml", "lit_distill.losses.LogitKD", "mypkg.MyLoss"),
        "h.yaml: model.init_args.losses[0].class_path: 'mypkg.MyLoss': no module named 'mypkg' (a class of your "
        "own must be importable: install its package, or run with its folder on PYTHONPATH",
    ),
    "unknown loss name": (
        lambda: [*Q, "--loss.logit_kdd.temperature", "2"],
        "--loss.logit_kdd.temperature: no loss is named 'logit_kdd'; did you mean 'logit_kd'? the recipe's losses "
        "are 0: logit_kd (LogitKD), 1: ce (CrossEntropy)",
    ),
    "unknown loss argument": (
        lambda: [*Q, "--loss.0.temprature=2"],
        "--loss.0.temprature: LogitKD (loss 'logit_kd') has no argument 'temprature'; did you mean 'temperature'?",
    ),
    "bad value for a loss argument": (
        lambda: [*Q, "--loss.logit_kd.divergence=kld"],
        "command line: model.init_args.losses[0].init_args.divergence: 'kld' is not one of 'forward_kl'",
    ),
    "missing teacher checkpoint": (
        lambda: Q,
        "FileNotFoundError: checkpoint 'checkpoints/digits/teacher.ckpt' does not exist. Create it first with: "
        "lit-distill fit --config configs/digits/teacher.yaml",
    ),
    "Lightning rejects a trainer value": (
        lambda: [*NO_KD, "--trainer.max_epochs=-3"],
        "MisconfigurationException: `max_epochs` must be a non-negative integer or -1. You passed in -3.",
    ),
    "failure in data setup": (
        lambda: [*NO_KD, "--data.init_args.train_samples=5000"],
        "ValueError: train_samples=5000 exceeds the 1259 training samples.",
    ),
    "NaN in the first batch": (
        lambda: [*NO_KD, nan_student()],
        "NonFiniteLossError: the first batch already gives non-finite loss term(s) ['ce']",
    ),
    "class count below the labels": (
        lambda: [*NO_KD, "--model.init_args.student.init_args.num_classes=5"],
        "IndexError: Target 5 is out of bounds.",
    ),
}


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    work = tmp_path_factory.mktemp("mistakes")
    shutil.copytree(ROOT / "configs", work / "configs")
    return work


class CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time (pytest swaps it per test and phase)."""

    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def logs_into_this_test(monkeypatch):
    """Log handlers keep the stderr of the test that imported their library, closed since; use this test's."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict))]
    for handler in {h for logger in loggers for h in logger.handlers}:
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            monkeypatch.setattr(handler, "stream", CurrentStderr())


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file() or (p.is_dir() and not any(p.iterdir()))}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_mistake_is_one_clear_line_and_leaves_no_files(mistake, recipes, monkeypatch, capsys):
    monkeypatch.chdir(recipes)
    build, first_line = MISTAKES[mistake]
    args = build()
    before = files_under(recipes)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    error = err.splitlines()
    assert error[0].startswith("lit-distill: error: "), f"the error is not the first line:\n{err}"  # no "Seed set"
    assert first_line in error[0], f"\nexpected: {first_line}\n     got: {error[0]}"
    assert len(error) <= 4 and "-v" in error[-1], err
    assert files_under(recipes) == before, f"left behind: {sorted(map(str, files_under(recipes) - before))}"


def test_verbose_adds_the_traceback_after_the_same_first_line(recipes, monkeypatch, capsys):
    monkeypatch.chdir(recipes)
    with pytest.raises(SystemExit):
        main([*Q, "--trainer.max_epochs", "abc", "-v"])
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "lit-distill: error: command line: trainer.max_epochs: expected int, got 'abc'"
    assert "Traceback" in err and 'Parser key "trainer.max_epochs"' in err


def test_an_error_of_every_process_is_printed_once(recipes):
    """Under DDP each process builds the run and meets the same mistake; the user reads it once, first."""
    run = subprocess.run(
        [sys.executable, "-m", "lit_distill.cli", *NO_KD, "--trainer.accelerator=cpu", "--trainer.devices=2",
         "--trainer.strategy=ddp", "--data.init_args.train_samples=5000"],
        cwd=recipes, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.count("lit-distill: error:") == 1, run.stderr
    assert run.stderr.startswith("lit-distill: error: ValueError: train_samples=5000 exceeds"), run.stderr
