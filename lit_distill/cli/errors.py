"""Every error that reaches ``lit-distill`` becomes one line naming the cause, then its details.

Config mistakes found by jsonargparse are retold by :mod:`lit_distill.cli.parse_errors`; other errors
print their own message (lit-distill's checks are written to be read); ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

import yaml

from lit_distill.cli.parse_errors import config_files, parse_error
from lit_distill.cli.ranks import SharedReport
from lit_distill.cli.recipes import close_recipe, producer_hint

PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
HINT = "(add -v, or set LIT_DISTILL_TRACEBACK=1, for the full traceback)"


class ConfigError(ValueError):
    """A mistake in the recipe or the command line, found by the CLI itself; printed without a type name."""


def report(err: BaseException, argv: list[str], verbose: bool, valid_keys: list[str] | None = None) -> int:
    """Print ``err`` as ``lit-distill: error: <cause>`` plus details; returns the exit code (2).

    In a run of several processes the error is printed once (:mod:`lit_distill.cli.ranks`).
    """
    lines = describe(err, argv, valid_keys or [])
    shared = SharedReport.of_this_run()
    first = lines[0] if shared is None else shared.first_line(lines[0])
    if first is None:
        return 2  # rank 0 printed it
    print(f"lit-distill: error: {first}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  {line}", file=sys.stderr)
    if verbose:
        if isinstance(err, argparse.ArgumentError):
            print(f"\nThe parser's full message:\n{err}", file=sys.stderr)
        print(file=sys.stderr)
        traceback.print_exception(err, file=sys.stderr)
    else:
        print(f"  {HINT}", file=sys.stderr)
    if shared is not None:
        sys.stderr.flush()
        shared.linger()
    return 2


def describe(err: BaseException, argv: list[str], valid_keys: list[str]) -> list[str]:
    """The lines to print for ``err``: the cause first."""
    if isinstance(err, argparse.ArgumentError):
        try:
            return parse_error(str(err), argv, valid_keys)
        except Exception:  # a message shape not seen before: jsonargparse's own words, never a crash here
            return [line for line in str(err).splitlines() if line.strip()] or [repr(err)]
    cause = our_error(err) or err
    message = cause.args[0] if isinstance(cause, KeyError) and cause.args else str(cause)
    lines = [line for line in str(message).splitlines() if line.strip()] or [repr(cause)]
    if not isinstance(cause, ConfigError):
        lines[0] = f"{type(cause).__name__}: {lines[0]}"
    lines[0] += producer_hint(str(message))  # a missing teacher checkpoint: the recipe that writes it
    return [lines[0], *(line.strip() for line in lines[1:])]


def our_error(err: BaseException) -> BaseException | None:
    """The innermost exception in ``err``'s chain that lit-distill code raised (a message meant for users)."""
    found = None
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        frames = traceback.extract_tb(err.__traceback__)
        if frames and frames[-1].filename.startswith(PACKAGE_DIR):
            found = err
        err = err.__cause__ or err.__context__
    return found


# ------------------------------------------------------------------------ config files, before parsing
def check_config_files(argv: list[str]) -> None:
    """Refuse a missing, empty or malformed ``--config`` file, naming it (jsonargparse names neither)."""
    for path in config_files(argv):
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {path!r} does not exist; {close_recipe(path)}")
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.MarkedYAMLError as bad:
            context = f" ({bad.context} at {_at(bad.context_mark)})" if bad.context and bad.context_mark else ""
            raise ConfigError(f"{path}: not valid YAML at {_at(bad.problem_mark)}: {bad.problem}{context}") from None
        if data is None:
            raise ConfigError(
                f"{path} is empty; a recipe needs at least model: and data: (see configs/quickstart.yaml)"
            )
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path} holds a {type(data).__name__}, not a mapping of sections (trainer:, model:, data:)."
            )


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "an unknown place"
