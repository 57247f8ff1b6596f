"""The short ``lit-distill --help``: module arguments, strategies, data modules and recipes.

Built from the package's source files with :mod:`ast` and from the recipes' comment headers, so it
prints without importing torch or Lightning (those take seconds to import; the help should not).
"""

from __future__ import annotations

import ast
import re
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from lit_distill.cli.recipes import RECIPES

PACKAGE = Path(__file__).resolve().parents[1]
COMMON_LOSS_ARGS = ("weight", "name")  # every strategy has them; listed once in the section header


@dataclass
class ClassDoc:
    """What the help shows of one class, read from its source."""

    name: str
    module: str
    summary: str
    bases: list[str]
    args: list[str] | None = None  # None: the class has no __init__ of its own
    arg_docs: dict[str, str] = field(default_factory=dict)  # first sentences
    types: dict[str, str] = field(default_factory=dict)  # annotations as written
    defaults: dict[str, str] = field(default_factory=dict)  # source of each default (absent: required)
    arg_text: dict[str, str] = field(default_factory=dict)  # whole Args: entries


def _google_args(doc: str) -> dict[str, str]:
    """``{name: first sentence}`` from a Google-style ``Args:`` section."""
    return {name: first_sentence(text) for name, text in google_args(doc).items()}


def google_args(doc: str) -> dict[str, str]:
    """``{name: text}`` of a Google-style ``Args:`` section, each entry's lines joined."""
    found: dict[str, str] = {}
    in_args, indent, current = False, None, None
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped == "Args:":
            in_args = True
            continue
        if not in_args:
            continue
        if not stripped:
            current = None
            continue
        width = len(line) - len(line.lstrip())
        indent = width if indent is None else indent
        if width < indent:
            break
        match = re.match(r"(\w+)(?: \(.*?\))?: (.*)", stripped)
        if width == indent and match:
            current = match.group(1)
            found[current] = match.group(2)
        elif current is not None:
            found[current] += " " + stripped
    return found


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (not the one in "et al."), without reST markup."""
    text = text.replace("``", "").replace(":class:", "").replace(":func:", "")
    return re.split(r"(?<!\bal)(?<!e\.g)(?<!i\.e)\.(?:\s|$)", text, maxsplit=1)[0].rstrip(".:")


def _init(node: ast.ClassDef) -> ast.arguments | None:
    return next((i.args for i in node.body if isinstance(i, ast.FunctionDef) and i.name == "__init__"), None)


def _init_args(node: ast.ClassDef) -> list[str] | None:
    args = _init(node)
    if args is None:
        return None
    names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs] if a.arg != "self"]
    return names + ([f"**{args.kwarg.arg}"] if args.kwarg else [])


def _signature(node: ast.ClassDef) -> tuple[dict[str, str], dict[str, str]]:
    """``({arg: annotation}, {arg: default source})`` of the class's own ``__init__``."""
    args = _init(node)
    if args is None:
        return {}, {}
    positional = [*args.posonlyargs, *args.args]
    types = {a.arg: ast.unparse(a.annotation) for a in [*positional, *args.kwonlyargs] if a.annotation}
    pairs = [*zip(positional[len(positional) - len(args.defaults) :], args.defaults)]
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
    return types, {a.arg: ast.unparse(d) for a, d in pairs}


def read_classes(folder: Path, package: str) -> dict[str, ClassDoc]:
    """Every top-level public class defined in ``folder/*.py``, by name."""
    classes: dict[str, ClassDoc] = {}
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node) or ""
            types, defaults = _signature(node)
            classes[node.name] = ClassDoc(
                name=node.name,
                module=f"{package}.{path.stem}",
                summary=first_sentence(doc.split("\n\n")[0].replace("\n", " ").strip()),
                bases=[ast.unparse(b).split(".")[-1] for b in node.bases],
                args=_init_args(node),
                arg_docs=_google_args(doc),
                types=types,
                defaults=defaults,
                arg_text=google_args(doc),
            )
    return classes


def exported_names(init_file: Path) -> set[str]:
    """Names a package's ``__init__.py`` imports or lists in ``__all__`` (its public ``class_path`` short forms)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(init_file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            names.add(node.value)
    return names


def _descends(cls: ClassDoc, root: str, classes: dict[str, ClassDoc]) -> bool:
    seen: set[str] = set()
    todo = list(cls.bases)
    while todo:
        base = todo.pop()
        if base == root:
            return True
        if base in classes and base not in seen:
            seen.add(base)
            todo.extend(classes[base].bases)
    return False


def _args_of(cls: ClassDoc, classes: dict[str, ClassDoc]) -> list[str]:
    """The constructor's arguments, from the nearest class in the chain that defines ``__init__``."""
    while cls.args is None:
        parent = next((classes[b] for b in cls.bases if b in classes), None)
        if parent is None:
            return []
        cls = parent
    return [a for a in cls.args if not a.startswith("**") and a not in ("args", "kwargs")]


def _class_path(cls: ClassDoc, package: str, exported: set[str]) -> str:
    return f"{package}.{cls.name}" if cls.name in exported else f"{cls.module}.{cls.name}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _row(left: str, right: str, width: int, pad: int) -> str:
    return _fit(f"  {left:<{pad}} {right}".rstrip(), width)


def recipes(root: Path) -> list[tuple[str, str, str]]:
    """``(path, subcommand, first comment sentence)`` of every recipe under ``root/configs``."""
    found = []
    usage = re.compile(r"^#\s+(?:\S+=\S+\s+)*lit-distill (fit|validate|test|predict) --config (\S+)", re.M)
    for path in sorted((root / "configs").rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        commands = [m.group(1) for m in usage.finditer(text)]
        header = [line.lstrip("# ").rstrip() for line in text.splitlines() if line.startswith("#")]
        header = [line for line in header if line and not line.startswith(("requires:", "lit-distill"))]
        summary = first_sentence(" ".join(header))
        found.append((path.relative_to(root).as_posix(), commands[-1] if commands else "fit", summary))
    return found


def short_help(subcommand: str | None = None, width: int | None = None) -> str:
    """The short help text (about 80 lines): what to run, and the arguments that are lit-distill's own."""
    width = width or max(80, min(shutil.get_terminal_size((100, 24)).columns, 120))
    command = subcommand or "{fit,validate,test,predict}"
    lines = [
        f"usage: lit-distill {command} --config RECIPE.yaml [--SECTION.KEY VALUE ...] [-v]",
        "",
        "Knowledge distillation with PyTorch Lightning: a frozen teacher, a trainable student, weighted loss",
        "strategies. A recipe (YAML) names them; any value can be overridden on the command line:",
        "  lit-distill fit --config configs/quickstart.yaml --trainer.max_epochs 10 --loss.logit_kd.temperature 2",
        "",
    ]
    module = read_classes(PACKAGE, "lit_distill")["DistillationModule"]
    args = _args_of(module, {})
    pad = max(len(a) for a in args)
    lines.append("DistillationModule (--model.NAME VALUE; YAML: model.init_args.NAME):")
    lines += [_row(arg, module.arg_docs.get(arg, ""), width, pad) for arg in args]
    lines.append("")
    lines += _strategy_rows(width)
    lines.append("")
    lines += _data_rows(width)
    root = RECIPES.parent if RECIPES.is_dir() else None  # the package's own recipes, wherever the user runs it
    if root is not None:
        rows = recipes(root)
        pad = max(len(path) for path, _, _ in rows)
        where = "configs/" if root == Path.cwd() else f"{root / 'configs'}; run them from {root}"
        lines += ["", f"Recipes ({where}; predict recipes run with lit-distill predict):"]
        lines += [_row(path, ("predict: " if cmd != "fit" else "") + text, width, pad) for path, cmd, text in rows]
    lines += [
        "",
        "Options:",
        "  --trainer.KEY VALUE  any Lightning Trainer argument, e.g. --trainer.max_epochs 5 --trainer.devices 2",
        "  --print_config       print the resolved recipe (after overrides) and exit",
        "  --model.help CLASS   a module's arguments, e.g. --model.help DistillationModule; one loss's, model's",
        "                       or data module's: --model.losses.help LOSS, --model.student.help MODEL, --data.help X",
        "  -v, --verbose        full traceback on errors (or set LIT_DISTILL_TRACEBACK=1)",
        f"  --help-full          Lightning's help, all Trainer flags: lit-distill {subcommand or 'fit'} --help-full",
    ]
    return "\n".join(lines)


def _strategy_rows(width: int) -> list[str]:
    classes = read_classes(PACKAGE / "losses", "lit_distill.losses")
    exported = exported_names(PACKAGE / "losses" / "__init__.py")
    strategies = [
        c
        for c in classes.values()
        if _descends(c, "DistillationLoss", classes) and not c.summary.startswith("Base ")  # bases are not losses
    ]
    rows = [
        "Loss strategies (YAML: a list under model.init_args.losses, each a class_path; every one also takes",
        "weight and name; change one from the shell: --loss.NAME.ARG VALUE or --loss.INDEX.ARG VALUE):",
    ]
    names = [_class_path(c, "lit_distill.losses", exported).removeprefix("lit_distill.losses.") for c in strategies]
    pad = max(map(len, names))
    for cls, short in zip(strategies, names):
        args = [a for a in _args_of(cls, classes) if a not in COMMON_LOSS_ARGS]
        rows.append(_row(short, cls.summary, width, pad))
        indent = " " * (pad + 3)
        rows += textwrap.wrap("args: " + ", ".join(args), width, initial_indent=indent, subsequent_indent=indent + "  ")
    return rows


def _data_rows(width: int) -> list[str]:
    classes = read_classes(PACKAGE / "data", "lit_distill.data")
    exported = exported_names(PACKAGE / "data" / "__init__.py")
    modules = [c for c in classes.values() if c.name.endswith("DataModule")]
    rows = ["Data modules (data.class_path; a batch is what the summary says, passed to model and losses):"]
    pad = max(len(_class_path(c, "lit_distill.data", exported)) for c in modules)
    rows += [_row(_class_path(c, "lit_distill.data", exported), c.summary, width, pad) for c in modules]
    models = read_classes(PACKAGE / "models", "lit_distill.models")
    names = exported_names(PACKAGE / "models" / "__init__.py")
    shown = [_class_path(c, "lit_distill.models", names) for c in models.values() if c.name in names]
    shown += [f"{c.module}.{c.name}" for c in models.values() if c.name.endswith("Encoder") and c.name not in names]
    text = "Models (student/teacher class_path): " + ", ".join(shown)
    rows += ["", *textwrap.wrap(text, width, subsequent_indent="  ")]
    return rows
