"""What lit-distill knows about its shipped recipes: where they are, and which recipe writes which file.

Some recipes read what another one writes (a teacher checkpoint, a teacher cache, generated responses). When a run
fails on such a file, the error says which command makes it. The table below is the package's own knowledge of its
recipes (``tests/cli/test_recipes.py`` checks it against ``configs/``); nothing here looks at the user's working
directory beyond the one file an error names.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

#: The source checkout's recipes (an editable or source install; a wheel ships none).
RECIPES = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class Producer:
    """The shipped recipe that writes a file other recipes read, and the flags that let it write it again."""

    subcommand: str
    recipe: str
    again: str = ""

    def command(self) -> str:
        return f"lit-distill {self.subcommand} --config {self.recipe}"


_OVERWRITE = "--trainer.callbacks.init_args.overwrite=true"

#: Output path (as the recipes write it, relative to the directory they run in) -> the recipe that writes it.
OUTPUTS: dict[str, Producer] = {
    "checkpoints/digits/teacher.ckpt": Producer("fit", "configs/digits/teacher.yaml", _OVERWRITE),
    "checkpoints/digits/cnn_teacher.ckpt": Producer("fit", "configs/digits/cnn_teacher.yaml", _OVERWRITE),
    "checkpoints/text/teacher.ckpt": Producer("fit", "configs/text/teacher.yaml", _OVERWRITE),
    "checkpoints/text/sft_student.ckpt": Producer("fit", "configs/text/sft_student.yaml"),
    "checkpoints/text/xtok_teacher.ckpt": Producer("fit", "configs/text/xtok_teacher.yaml", _OVERWRITE),
    "checkpoints/llm/teacher": Producer("fit", "configs/llm/teacher.yaml", _OVERWRITE),
    "checkpoints/text/hf_tiny_chat/teacher_sft": Producer("fit", "configs/text/hf_chat_teacher.yaml", _OVERWRITE),
    "artifacts/digits/teacher_cache": Producer("predict", "configs/digits/teacher_cache.yaml"),
    "artifacts/text/teacher_cache": Producer("predict", "configs/text/teacher_cache.yaml"),
    "generated/text/teacher_responses.jsonl": Producer("predict", "configs/text/generate.yaml"),
    "generated/text/chat_teacher_answers.jsonl": Producer("predict", "configs/text/hf_chat_generate.yaml"),
}

_DAMAGED = ("damaged", "truncated")


def producer_hint(message: str) -> str:
    """``" Create it first with: lit-distill ..."`` when ``message`` names a missing output of a shipped recipe.

    A named output that exists but is damaged gets ``" Recreate it with: ..."``; any other message, or one that
    already names a ``lit-distill`` command, gets ``""``.

    Example:
        >>> producer_hint("checkpoint 'checkpoints/digits/teacher.ckpt' does not exist.")  # doctest: +SKIP
        ' Create it first with: lit-distill fit --config configs/digits/teacher.yaml'
    """
    if re.search(r"lit-distill (fit|predict|validate|test) --config", message):
        return ""
    for output, producer in OUTPUTS.items():
        if not re.search(rf"(?<![\w./-]){re.escape(output)}(?![\w./-])", message):
            continue
        if not Path(output).exists():
            return f" Create it first with: {producer.command()}"
        if any(word in message for word in _DAMAGED):
            return f" Recreate it with: {producer.command()} {producer.again}".rstrip()
        return ""
    return ""


def shipped() -> list[str]:
    """The shipped recipes as ``configs/<task>/<name>.yaml`` (empty where the package came without them)."""
    if not RECIPES.is_dir():
        return []
    return sorted(p.relative_to(RECIPES.parent).as_posix() for p in RECIPES.rglob("*.yaml"))


def close_recipe(path: str) -> str:
    """What to say after "config file PATH does not exist": the closest shipped recipe, or where they are."""
    close = difflib.get_close_matches(path, shipped(), n=1, cutoff=0.7)
    if close:
        here = Path(close[0]).is_file()  # the recipe as the user would type it, from the repository root
        return f"did you mean {close[0] if here else RECIPES.parent / close[0]}?"
    if RECIPES.is_dir():
        return f"the shipped recipes are in {RECIPES} (lit-distill --help lists them)"
    return "the recipes ship in the configs/ folder of the source repository"
