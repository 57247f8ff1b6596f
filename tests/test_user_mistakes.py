"""Held-out matrix of mistakes a new user makes with the `lit-distill` command: each ends with a nonzero exit and
an error that names the problem and its fix, before any training, and leaves no new files behind.

Two checks per case:

* ``test_mistake_is_refused_naming_the_problem``: nonzero exit, and the message names the problem;
* ``test_mistake_prints_one_line_and_leaves_nothing``: no traceback, the problem in the first line
  (``assert_one_line_error``), and no new files (no ``config.yaml``, no ``version_N`` folder).

The API side of the matrix is tests/test_bad_inputs.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lit_distill.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false"]
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]


@dataclass
class Outcome:
    code: int
    stderr: str
    new_files: list[str]


def files_under(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}


def run_cli(work: Path, args: list[str]) -> Outcome:
    """``lit-distill ARGS`` in this process, in ``work``, as a shell would see it: exit code and stderr.

    An exception that escapes ``main`` is what a real run prints as a traceback (exit code 1).
    """
    before = files_under(work)
    err, old = io.StringIO(), os.getcwd()
    os.chdir(work)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except Exception:  # noqa: BLE001 - the traceback is the observation
        err.write(traceback.format_exc())
        code = 1
    finally:
        os.chdir(old)
    return Outcome(code, err.getvalue(), sorted(files_under(work) - before))


def assert_one_line_error(outcome: Outcome, text: str) -> None:
    """No traceback, and the first line of stderr is lit-distill's error naming the problem."""
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    lines = [line for line in outcome.stderr.splitlines() if line.strip() and not _python_warning(line)]
    assert lines and lines[0].startswith("lit-distill: error:"), outcome.stderr[-3000:]  # not after "Seed set to 0"
    assert text in lines[0], lines[0]


def _python_warning(line: str) -> bool:
    # ``warnings.warn`` output ("/path/file.py:12: UserWarning: ..." and its source line) is not lit-distill's.
    return line.startswith("/") or "Warning" in line or line.startswith("  warnings.warn")


# ---------------------------------------------------------------------------------------------------- inputs
def truncate(path: str, keep: int = 100):
    def cut(work: Path) -> None:
        target = work / path
        target.write_bytes(target.read_bytes()[:keep])

    return cut


def truncate_cache_file(work: Path) -> None:
    (first,) = sorted((work / "artifacts/digits/teacher_cache/train").iterdir())[:1]
    logits = first / "logits.npy"
    logits.write_bytes(logits.read_bytes()[:-64])


def remove(path: str):
    def rm(work: Path) -> None:
        shutil.rmtree(work / path) if (work / path).is_dir() else (work / path).unlink()

    return rm


def write_file(path: str, text: str):
    def write(work: Path) -> None:
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)

    return write


def recipe_exporting_to(path: str):
    """The user's copy of the quickstart whose ExportStudent writes to ``path``, a file the user already has.

    (On the command line ``--trainer.callbacks.init_args.path`` would set the last callback, FitSummary.)
    """

    def write(work: Path) -> None:
        recipe = yaml.safe_load((work / QUICK).read_text())
        (export,) = [c for c in recipe["trainer"]["callbacks"] if c["class_path"].endswith(".ExportStudent")]
        export["init_args"] = {"path": path}
        (work / "my_recipe.yaml").write_text(yaml.safe_dump(recipe))
        (work / path).write_text("user data")

    return write


def finished_generation(work: Path) -> None:
    out = work / "generated/text/teacher_responses.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    Path(f"{out}.meta.json").write_text(json.dumps({"finished": True, "rows": 1, "settings": None}))


def no_change(work: Path) -> None:
    pass


QUICK = "configs/quickstart.yaml"
TOKEN = "configs/text/token_kd.yaml"
CACHED = "configs/digits/quickstart_cached.yaml"
CACHE = "configs/digits/teacher_cache.yaml"

# name: (prepare the copied work dir, arguments, text the error must contain)
CASES = {
    "teacher not trained yet": (
        remove("checkpoints/digits/teacher.ckpt"),
        ["fit", "--config", QUICK],
        "Create it first with: lit-distill fit --config configs/digits/teacher.yaml",
    ),
    "teacher_checkpoint left out": (
        no_change,
        ["fit", "--config", QUICK, "--model.init_args.teacher_checkpoint=null"],
        "the teacher (MLP) is built from the recipe's config",
    ),
    "teacher checkpoint truncated": (
        truncate("checkpoints/digits/teacher.ckpt", 2000),
        ["fit", "--config", QUICK],
        "teacher.ckpt' is damaged or truncated",
    ),
    "teacher checkpoint is not a checkpoint": (
        write_file("checkpoints/digits/teacher.ckpt", "not a checkpoint"),
        ["fit", "--config", QUICK],
        "teacher.ckpt' is not a checkpoint but a text file (it starts with 'not a checkpoint')",
    ),
    "teacher trained again without overwrite": (
        no_change,
        ["fit", "--config", "configs/digits/teacher.yaml", *SHORT],
        "teacher.ckpt' exists and other recipes read it",
    ),
    "teacher architecture changed": (
        no_change,
        ["fit", "--config", QUICK, "--model.init_args.teacher.init_args.hidden=[128]"],
        "does not fit MLP",
    ),
    "class counts differ": (
        no_change,
        ["fit", "--config", QUICK, "--model.init_args.student.init_args.num_classes=7"],
        "student logits (32, 7) and teacher logits (32, 10)",
    ),
    "student input width wrong": (
        no_change,
        ["fit", "--config", QUICK, "--model.init_args.student.init_args.in_features=32"],
        "the student (MLP) cannot run the first training batch (inputs (32, 64))",
    ),
    "unknown teacher dtype": (
        no_change,
        ["fit", "--config", QUICK, "--model.init_args.teacher_dtype=bf17"],
        "unknown dtype 'bf17'",
    ),
    "batch size zero": (no_change, ["fit", "--config", QUICK, "--data.init_args.batch_size=0"], "got 0"),
    "more labelled samples than exist": (
        no_change,
        ["fit", "--config", QUICK, "--data.init_args.train_samples=5000"],
        "train_samples=5000",
    ),
    "negative max_epochs": (no_change, ["fit", "--config", QUICK, "--trainer.max_epochs=-3"], "max_epochs"),
    "misspelled argument": (no_change, ["fit", "--config", QUICK, "--model.init_args.studnet=x"], "studnet"),
    "config file missing": (no_change, ["fit", "--config", "configs/quickstrat.yaml"], "quickstrat.yaml"),
    "unknown class_path": (
        no_change,
        ["fit", "--config", QUICK, "--model.init_args.student.class_path=lit_distill.models.MLPP"],
        "MLPP",
    ),
    "export over the user's file": (
        recipe_exporting_to("mine.safetensors"),
        ["fit", "--config", "my_recipe.yaml"],
        "'mine.safetensors' exists; set overwrite: true",
    ),
    "resume from a checkpoint that does not exist": (
        no_change,
        ["fit", "--config", QUICK, "--ckpt_path=checkpoints/digits/nothing.ckpt"],
        "nothing.ckpt",
    ),
    "text student vocabulary smaller than the tokenizer": (
        no_change,
        ["fit", "--config", TOKEN, "--model.init_args.student.init_args.vocab_size=100"],
        "the student (GPT) embeds 100 token ids, but the data's tokenizer (bytes) has 258",
    ),
    "text student speaks another tokenizer": (
        no_change,
        ["fit", "--config", TOKEN, "--model.init_args.student.init_args.tokenizer_id=gpt2"],
        "the student speaks tokenizer 'gpt2' and the teacher 'bytes'",
    ),
    "text teacher not trained yet": (
        remove("checkpoints/text/teacher.ckpt"),
        ["fit", "--config", TOKEN],
        "Create it first with: lit-distill fit --config configs/text/teacher.yaml",
    ),
    "sequence longer than the student's context": (
        no_change,
        ["fit", "--config", TOKEN, "--model.init_args.student.init_args.block_size=64"],
        "block_size=64",
    ),
    "cached recipe before the cache": (
        remove("artifacts/digits/teacher_cache"),
        ["fit", "--config", CACHED],
        "lit-distill predict --config configs/digits/teacher_cache.yaml",  # "Create it (first) with: ..."
    ),
    "cache file truncated": (
        truncate_cache_file,
        ["fit", "--config", CACHED],
        "teacher cache in 'artifacts/digits/teacher_cache' is damaged",
    ),
    "cached recipe on other data": (
        no_change,
        ["fit", "--config", CACHED, "--data.init_args.datamodule.init_args.seed=1"],
        "stale teacher cache in 'artifacts/digits/teacher_cache'",
    ),
    "cached split that was not written": (
        no_change,
        ["test", "--config", CACHED, "--data.init_args.splits=[train,val,test]"],
        "has no 'test' split",
    ),
    "cache rewritten with other settings": (
        no_change,
        ["predict", "--config", CACHE, "--trainer.callbacks.init_args.top_k=4"],
        "was written with other settings",
    ),
    "cache top_k above the classes": (
        remove("artifacts/digits/teacher_cache"),
        ["predict", "--config", CACHE, "--trainer.callbacks.init_args.top_k=50"],
        "top_k=50",
    ),
    "cache into a folder of other files": (
        write_file("notes/readme.txt", "mine"),
        ["predict", "--config", CACHE, "--data.init_args.cache_dir=notes"],
        "holds no lit-distill teacher cache",
    ),
    "cache teacher left untrained": (
        remove("artifacts/digits/teacher_cache"),
        ["predict", "--config", CACHE, "--model.init_args.teacher_checkpoint=null"],
        "the teacher (MLP) is built from the recipe's config",
    ),
    "generation already finished": (
        finished_generation,
        ["predict", "--config", "configs/text/generate.yaml"],
        "is a finished generation",
    ),
    "generation from an untrained model": (
        no_change,
        ["predict", "--config", "configs/text/generate.yaml", "--model.init_args.checkpoint=null"],
        "the model (GPT) is built from the recipe's config",
    ),
    "sequence KD before generating": (
        no_change,
        ["fit", "--config", "configs/text/seq_kd.yaml"],
        "teacher_responses.jsonl",
    ),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """configs/ with the digits and text teachers trained briefly and the digits teacher cache written."""
    work = tmp_path_factory.mktemp("mistakes_base")
    shutil.copytree(ROOT / "configs", work / "configs")
    for args in (
        ["fit", "--config", "configs/digits/teacher.yaml", *SHORT],
        ["fit", "--config", "configs/text/teacher.yaml", *SHORT],
        ["predict", "--config", CACHE],
    ):
        outcome = run_cli(work, [*args, *QUIET, "--trainer.logger=false"])
        assert outcome.code == 0, outcome.stderr[-3000:]
    assert not (work / "config.yaml").exists()  # without a run-folder logger the CLI saves no config
    return work


@pytest.fixture(scope="module")
def outcomes(base, tmp_path_factory):
    """Each case run once, in its own copy of ``base`` (both tests below read the same run)."""
    cache: dict[str, Outcome] = {}

    def get(case: str) -> Outcome:
        if case not in cache:
            work = tmp_path_factory.mktemp("mistake")
            shutil.copytree(base, work, dirs_exist_ok=True)
            prepare, args, _ = CASES[case]
            prepare(work)
            cache[case] = run_cli(work, [*args, *QUIET])
        return cache[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_mistake_is_refused_naming_the_problem(case, outcomes):
    outcome = outcomes(case)
    assert outcome.code != 0, f"{case}: exit 0\n{outcome.stderr[-2000:]}"
    assert CASES[case][2] in outcome.stderr, outcome.stderr[-3000:]
    assert not [f for f in outcome.new_files if f.endswith((".ckpt", ".safetensors", ".npy", ".jsonl"))], (
        f"{case} wrote outputs: {outcome.new_files}"
    )


@pytest.mark.parametrize("case", list(CASES))
def test_mistake_prints_one_line_and_leaves_nothing(case, outcomes):
    outcome = outcomes(case)
    assert_one_line_error(outcome, CASES[case][2])
    assert not outcome.new_files, f"{case} left files behind: {outcome.new_files}"


def test_the_matrix_covers_about_thirty_mistakes():
    assert len(CASES) >= 30
