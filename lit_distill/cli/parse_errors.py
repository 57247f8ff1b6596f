"""jsonargparse's error message, told in one line: ``<file>: <key>: <problem>; did you mean ...``.

jsonargparse reports a config mistake as a tree: every Union alternative it tried, the whole given
value, and the cause last, several levels deep. :func:`parse_error` walks that tree to the innermost
cause and says it with the YAML key, the file it came from and the closest valid names.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import re
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import yaml


def config_files(argv: list[str]) -> list[str]:
    """The ``--config``/``-c`` files named in ``argv``, in order."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-c", "--config")]
    return files + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]


@dataclass
class _Node:
    text: str
    indent: int
    children: list[_Node] = field(default_factory=list)


@dataclass
class _Class:
    """A ``class_path`` on the way down the tree; ``index`` is its position when it sits in a list."""

    class_path: str
    index: int | None = None


@dataclass
class _Cause:
    path: list[str | _Class]
    text: str
    given: Any = None
    message: str = ""  # the whole message, for what a sibling branch says


def _tree(message: str) -> list[_Node]:
    root = _Node("", -1)
    stack = [root]
    for raw in message.splitlines():
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip())
        text = raw.strip()
        if text.startswith("- "):
            indent, text = indent + 2, text[2:]
        while stack[-1].indent >= indent:
            stack.pop()
        node = _Node(text, indent)
        stack[-1].children.append(node)
        stack.append(node)
    return root.children


_NOISE = ("Does not validate", "Subtypes:", "Given value type:", "Given value:")
_NONE = re.compile(r"Expected a <class 'NoneType'>")


def _given(nodes: list[_Node]) -> Any:
    for node in nodes:
        if node.text.startswith("Given value:"):
            try:
                return ast.literal_eval(node.text.removeprefix("Given value:").strip())
            except (ValueError, SyntaxError):
                return node.text.removeprefix("Given value:").strip()
    return None


def _index_in(given: Any, class_path: str) -> int | None:
    if isinstance(given, list):
        for i, item in enumerate(given):
            if isinstance(item, dict) and item.get("class_path") == class_path:
                return i
    return None


def _cause(nodes: list[_Node], path: list[str | _Class], given: Any = None) -> _Cause | None:
    here = _given(nodes)
    given = here if here is not None else given
    for node in nodes:
        text = node.text
        key = re.match(r'Parser key "([^"]+)":\s*(.*)', text)
        cls = re.match(r"Problem with given class_path '([^']+)':\s*(.*)", text)
        if key or cls:
            step = key.group(1) if key else _Class(cls.group(1), _index_in(given, cls.group(1)))
            rest = (key or cls).group(2)
            if rest:
                return _Cause([*path, step], rest, given)
            found = _cause(node.children, [*path, step], given)
            if found is not None:
                return found
        elif text == "Errors:":
            options = [c for c in node.children if not _NONE.match(c.text)]
            if options and all(c.text.startswith("Expected a ") and not c.children for c in options):
                return _Cause(path, " | ".join(c.text for c in options), given)
            for option in options:
                found = _cause([option], path, given)
                if found is not None:
                    return found
        elif not text.startswith(_NOISE) and not _NONE.match(text):
            return _Cause(path, " ".join([text, *(c.text for c in node.children)]), given)
    return None


def parse_error(message: str, argv: list[str], valid_keys: list[str]) -> list[str]:
    """The cause of a jsonargparse error, first line: ``<file>: <key>: <problem>; did you mean ...``."""
    details = [line for line in message.splitlines() if line.strip()]
    cause = _cause(_tree(message), [])
    if cause is None:
        return details
    cause.message = message
    keys, context = _key_path(cause.path)
    key, problem = _explain(cause, context, valid_keys)
    keys += [key] if key else []
    where = _source(keys, argv) if keys else ""
    return [": ".join(part for part in (where, ".".join(keys), problem) if part)]


def _key_path(path: list[str | _Class]) -> tuple[list[str], _Class | None]:
    parts: list[str] = []
    context = None
    for step in path:
        if isinstance(step, _Class):
            if step.index is not None and parts:
                parts[-1] += f"[{step.index}]"
            parts.append("init_args")
            context = step
        else:
            parts.append(step)
    if parts and parts[-1] == "init_args":
        parts.pop()
    return parts, context


def _explain(cause: _Cause, context: _Class | None, valid_keys: list[str]) -> tuple[str | None, str]:
    """``(key to append to the path, what is wrong)`` for the innermost message of the tree."""
    text = cause.text
    owner = context.class_path.rsplit(".", 1)[-1] if context else None
    m = re.match(r"module '([\w.]+)' has no attribute '(\w+)'", text)
    if m and context is not None:
        return "class_path", _missing_class(context.class_path, m.group(1), m.group(2))
    m = re.match(r"No module named '([\w.]+)'", text)
    if m and context is not None:
        return "class_path", (
            f"{context.class_path!r}: no module named {m.group(1)!r} (a class of your own must be importable: "
            "install its package, or run with its folder on PYTHONPATH, e.g. PYTHONPATH=. lit-distill ...)"
        )
    m = re.match(r"Expected a path but (\S+) either not accessible or invalid", text)
    if m:
        base = re.search(r"does not correspond to a subclass of (\w+)", cause.message)
        module, _, name = m.group(1).rpartition(".")
        if base and _exists(module, name):
            return None, f"{m.group(1)!r} is not a {base.group(1)}; give a {base.group(1)} or a subclass of it"
        return None, _missing_class(m.group(1), module, name)
    m = re.match(r"Import path (\S+ )?does not correspond to a subclass of (\w+)", text)
    if m:
        given = (m.group(1) or "").strip() or (context.class_path if context else "it")
        return None, f"{given!r} is not a {m.group(2)}; give a {m.group(2)} or a subclass of it"
    m = re.match(r"Option '(\w+)' is not accepted", text)
    if m and context is not None:
        return ("init_args." if cause.path and isinstance(cause.path[-1], _Class) else "") + m.group(1), (
            _unknown_argument(context.class_path, m.group(1))
        )
    m = re.match(r"the following arguments are required: (.*)", text)
    if m:
        names = [n.split(".")[-1] for n in m.group(1).split(", ")]
        if owner is None and set(names) <= {"model", "data"}:
            return (
                None,
                f"no {' and no '.join(names)} given: name a recipe with --config (e.g. configs/quickstart.yaml)",
            )
        return "init_args." + names[0] if len(names) == 1 else None, (
            f"not given, and {owner or 'it'} requires {', '.join(names)}"
        )
    m = re.match(r"Subcommand '\w+' does not accept option '(\S+)'", text) or re.match(
        r"unrecognized arguments: (.*)", text
    )
    if m:
        option, known = _unknown_part(m.group(1).split()[0].lstrip("-").split("=")[0], valid_keys)
        hint = _did_you_mean(option, known)
        return option, "unknown option" + (f"; {hint}" if hint else "; see lit-distill fit --help-full")
    m = re.match(r"argument subcommand: invalid choice: '(\S+)' \(choose from (.*)\)", text)
    if m:
        choices = [c.strip(" '") for c in m.group(2).split(",")]
        hint = _did_you_mean(m.group(1), choices)
        return None, f"unknown subcommand {m.group(1)!r}" + (f"; {hint}" if hint else "") + f" ({', '.join(choices)})"
    if text.startswith("Expected a "):
        return None, _wrong_value(text, cause.given) + (f" ({owner})" if owner else "")
    return None, text


def _unknown_part(option: str, valid_keys: list[str]) -> tuple[str, list[str]]:
    """The shortest prefix of ``option`` that no valid key has, and the valid keys at that depth."""
    parts = option.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if not any(k == prefix or k.startswith(prefix + ".") for k in valid_keys):
            return prefix, sorted({".".join(k.split(".")[:depth]) for k in valid_keys})
    return option, valid_keys


def _exists(module: str, name: str) -> bool:
    try:
        return hasattr(import_module(module), name)
    except ImportError:
        return False


def _did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    """``did you mean 'X'?`` for the closest of ``choices`` (case-insensitive), or ``""``."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f"did you mean {prefix + lowered[close[0]]!r}?" if close else ""


def _missing_class(class_path: str, module: str, name: str) -> str:
    try:
        names = [n for n in dir(import_module(module)) if not n.startswith("_") and n[:1].isupper()]
    except ImportError:
        return f"{class_path!r} does not exist: no module {module!r}"
    hint = _did_you_mean(name, names, prefix=f"{module}.") or f"it has {', '.join(sorted(names)[:12])}"
    return f"{class_path!r} does not exist ({module} has no {name!r}); {hint}"


def _unknown_argument(class_path: str, option: str) -> str:
    module, _, name = class_path.rpartition(".")
    try:
        params = [p for p in inspect.signature(getattr(import_module(module), name)).parameters if p != "self"]
    except (ImportError, AttributeError, TypeError, ValueError):
        params = []
    hint = _did_you_mean(option, params)
    return (
        f"{name} has no argument {option!r}"
        + (f"; {hint}" if hint else "")
        + (f" (its arguments: {', '.join(params)})" if params else "")
    )


def _wrong_value(text: str, given: Any) -> str:
    allowed: list[str] = []
    for part in text.split(" | "):
        m = re.match(r"Expected a (?:typing\.)?Literal\[(.*)\](?:\. Got value: (.*))?", part)
        if m:
            allowed += [repr(v) for v in ast.literal_eval(f"[{m.group(1)}]")]
            given = m.group(2) if m.group(2) is not None else given
            continue
        m = re.match(r"Expected a <class '(\w+)'>(?:\. Got value: (.*))?", part) or re.match(
            r"Expected a (.*?)(?:\. Got value: (.*))?$", part, re.S
        )
        allowed.append(m.group(1))
        given = m.group(2) if m.group(2) is not None else given
    unique: dict[str, str] = {}
    for choice in allowed:
        unique.setdefault(choice.strip("'"), choice)  # 64 and '64' once
    allowed = list(unique.values())
    hint = _did_you_mean(str(given), [a.strip("'") for a in allowed]) if isinstance(given, str) else ""
    hint = f"; {hint}" if hint else ""
    if len(allowed) == 1:
        return f"expected {allowed[0]}, got {given!r}{hint}"
    return f"{given!r} is not one of {', '.join(allowed)}{hint}"


def _source(keys: list[str], argv: list[str]) -> str:
    """Where the offending value came from: the command line, or the last --config file that sets it."""

    def plain(key: str) -> str:
        return re.sub(r"\[\d+\]", "", key.replace("init_args.", ""))

    dotted = plain(".".join(keys))
    flags = [plain(a.lstrip("-").split("=")[0]) for a in argv if a.startswith("--") and not a.startswith("--config")]
    if any(dotted == f or dotted.startswith(f + ".") or f.startswith(dotted + ".") for f in flags):
        return "command line"
    if dotted.startswith("model.losses.") and any(
        f.startswith("loss.") and f.rsplit(".", 1)[-1] == dotted.rsplit(".", 1)[-1] for f in flags
    ):
        return "command line"  # set by --loss.NAME.ARG
    files = config_files(argv)
    for file in reversed(files):
        try:
            data = yaml.safe_load(Path(file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and dotted.split(".")[0] in data:
            return file
    return "command line" if any(f.split(".")[0] == dotted.split(".")[0] for f in flags) else ""
