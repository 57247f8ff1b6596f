"""``--loss.NAME.ARG VALUE``: change one loss of a recipe's ``losses:`` list from the command line.

jsonargparse cannot address one element of a list of classes (``--model.init_args.losses.0.init_args.x``
is rejected, and nested keys go to the last element). These flags are taken out of the arguments, the
rest is parsed, the named loss is changed in the parsed list, and the whole list is handed back to the
parser as one value, so jsonargparse still validates and converts every value. A loss is addressed by
its ``name`` (``logit_kd``, ``ce``, or the ``name:`` the recipe gives it) or by its position (``0``);
``--model.init_args.losses.N.init_args.ARG`` and ``--model.losses.N.ARG`` are accepted as the same thing.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import yaml

from lit_distill.cli.errors import ConfigError

_FLAG = re.compile(
    r"^--(?:loss|model\.(?:init_args\.)?losses)\.([^.=\s]+)\.(?:init_args\.)?([^.=\s]+)(?:=(.*))?$", re.S
)


@dataclass
class LossOverride:
    """One ``--loss.<target>.<arg> <value>`` flag as given."""

    flag: str
    target: str
    arg: str
    value: Any


def split_loss_overrides(args: list[str]) -> tuple[list[str], list[LossOverride]]:
    """``(other arguments, loss overrides)``; values are read as YAML (``2`` → 2, ``null`` → None)."""
    rest: list[str] = []
    found: list[LossOverride] = []
    i = 0
    while i < len(args):
        match = _FLAG.match(args[i])
        if match is None:
            rest.append(args[i])
            i += 1
            continue
        target, arg, value = match.groups()
        flag = f"--loss.{target}.{arg}"
        if value is None:
            if i + 1 >= len(args):
                raise ConfigError(f"{flag} needs a value, e.g. {flag} 2")
            value, i = args[i + 1], i + 1
        found.append(LossOverride(flag, target, arg, yaml.safe_load(value)))
        i += 1
    return rest, found


def loss_name(entry: dict[str, Any]) -> str:
    """The ``name`` a loss entry (``{class_path, init_args}``) will have once built."""
    init_args = dict(entry.get("init_args") or {})
    if init_args.get("name"):
        return str(init_args["name"])
    cls = _import(entry["class_path"])
    try:  # the default name is set in each class's __init__; building the (small) module is the sure way
        return cls(**init_args).name
    except Exception:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


def apply_loss_overrides(losses: list[dict[str, Any]] | None, overrides: list[LossOverride]) -> list[dict[str, Any]]:
    """A copy of ``losses`` with every override applied; a wrong name, position or argument is refused."""
    if not losses:
        raise ConfigError(
            f"{overrides[0].flag}: this recipe lists no losses (model.init_args.losses), so there is none to "
            "change; write the list in the YAML first."
        )
    losses = json.loads(json.dumps(losses))  # a deep copy of plain data
    names = [loss_name(entry) for entry in losses]
    for override in overrides:
        index = _position(override, names, losses)
        entry = losses[index]
        accepted = _arguments(entry["class_path"])
        if accepted is not None and override.arg not in accepted:
            close = difflib.get_close_matches(override.arg, accepted, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"{override.flag}: {entry['class_path'].rsplit('.', 1)[-1]} (loss {names[index]!r}) has no "
                f"argument {override.arg!r}; {hint}its arguments: {', '.join(accepted)}."
            )
        entry.setdefault("init_args", {})[override.arg] = override.value
    return losses


def _position(override: LossOverride, names: list[str], losses: list[dict[str, Any]]) -> int:
    listed = ", ".join(
        f"{i}: {n} ({e['class_path'].rsplit('.', 1)[-1]})" for i, (n, e) in enumerate(zip(names, losses))
    )
    if override.target.isdigit():
        if int(override.target) < len(losses):
            return int(override.target)
        raise ConfigError(f"{override.flag}: the recipe has {len(losses)} loss(es), no position {override.target}; "
                         f"they are {listed}.")  # fmt: skip
    if override.target in names:
        return names.index(override.target)
    close = difflib.get_close_matches(override.target, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"{override.flag}: no loss is named {override.target!r}; {hint}the recipe's losses are {listed}.")


def _arguments(class_path: str) -> list[str] | None:
    """Constructor argument names, or None when the class takes ``**kwargs`` (anything goes)."""
    params = inspect.signature(_import(class_path)).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(import_module(module), name)
