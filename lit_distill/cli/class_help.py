"""``lit-distill fit --model.help CLASS``: a module's own arguments, and how to ask about a model's or a loss's.

jsonargparse would list, under every argument typed ``nn.Module``, each subclass of ``torch.nn.Module`` it can
import (about a thousand lines). Like the short help (:mod:`lit_distill.cli.help`), this reads the package's source
with :mod:`ast`, so it prints without importing torch. A class that is not lit-distill's own is left to jsonargparse.
"""

from __future__ import annotations

import textwrap

from lit_distill.cli.help import PACKAGE, ClassDoc, exported_names, read_classes

FLAG = "--model.help"


def requested_class(argv: list[str]) -> str | None:
    """The ``CLASS`` of ``--model.help CLASS`` (or ``--model.help=CLASS``) in ``argv``; ``""`` when none is named."""
    for i, arg in enumerate(argv):
        if arg == FLAG:
            following = argv[i + 1] if i + 1 < len(argv) else ""
            return "" if following.startswith("-") else following
        if arg.startswith(FLAG + "="):
            return arg.split("=", 1)[1]
    return None


def package_classes() -> dict[str, ClassDoc]:
    """Every public class of the package, by its dotted module path and name (``lit_distill.module.X``)."""
    found: dict[str, ClassDoc] = {}
    for folder in sorted({p.parent for p in PACKAGE.rglob("*.py")}):
        package = ".".join(("lit_distill", *folder.relative_to(PACKAGE).parts))
        found.update({f"{c.module}.{c.name}": c for c in read_classes(folder, package).values()})
    return found


def find(name: str, classes: dict[str, ClassDoc]) -> ClassDoc | None:
    """The class ``name`` names: ``DistillationModule``, ``lit_distill.DistillationModule`` or its module path."""
    short = name.rsplit(".", 1)[-1]
    matches = [c for path, c in classes.items() if c.name == short and (path == name or "." not in name)]
    if not matches and name.startswith("lit_distill."):  # an export: lit_distill.generation.OnPolicyDistillationModule
        package = name.rsplit(".", 1)[0]
        init = PACKAGE.joinpath(*package.split(".")[1:], "__init__.py")
        if init.is_file() and short in exported_names(init):
            matches = [c for c in classes.values() if c.name == short and c.module.startswith(package)]
    return matches[0] if len(matches) == 1 else None


def _chain(cls: ClassDoc, classes: dict[str, ClassDoc]) -> list[ClassDoc]:
    """``cls`` and the base classes whose arguments it takes through ``**kwargs``."""
    by_name = {c.name: c for c in classes.values()}
    chain = [cls]
    while chain[-1].args is None or any(a.startswith("**") for a in chain[-1].args):
        parent = next((by_name[b] for b in chain[-1].bases if b in by_name), None)
        if parent is None or parent in chain:
            break
        chain.append(parent)
    return chain


def _argument(cls: ClassDoc, name: str, width: int) -> list[str]:
    kind = cls.types.get(name, "")
    default = f" = {cls.defaults[name]}" if name in cls.defaults else " (required)"
    head = f"  --model.{name}" + (f": {kind}" if kind else "") + (default if not default.startswith(" = _") else "")
    text = cls.arg_text.get(name, "").replace("``", "")
    return [head, *textwrap.wrap(text, width, initial_indent=" " * 6, subsequent_indent=" " * 6)]


def class_help(name: str, subcommand: str = "fit", width: int = 100) -> str | None:
    """The help text for module class ``name`` (None when it is not a class of lit-distill)."""
    classes = package_classes()
    cls = find(name or "DistillationModule", classes)
    if cls is None:
        return None
    lines = [
        f"usage: lit-distill {subcommand} --config RECIPE.yaml [--model.NAME VALUE ...]",
        "",
        *textwrap.wrap(f"{cls.module}.{cls.name}: {cls.summary}.", width),
        "In a recipe the arguments go under model.init_args; on the command line each is --model.NAME VALUE.",
    ]
    seen: set[str] = set()
    kinds: set[str] = set()
    for owner in _chain(cls, classes):
        args = [a for a in owner.args or [] if not a.startswith("**") and a not in seen]
        if not args:
            continue
        lines += ["", "Arguments:" if owner is cls else f"Arguments it passes on to {owner.name}:"]
        for arg in args:
            lines += _argument(owner, arg, width)
            kinds.add(owner.types.get(arg, ""))
        seen.update(args)
    lines += _pointers(" ".join(kinds), subcommand, width)
    return "\n".join(lines)


def _pointers(types: str, subcommand: str, width: int) -> list[str]:
    """How to ask for the arguments of what the module's arguments take: models, losses, optimizers."""
    lines: list[str] = []
    if "nn.Module" in types:
        names = sorted(exported_names(PACKAGE / "models" / "__init__.py") - {"__all__"})
        lines += ["", "Models (any torch.nn.Module by class_path; the package's own):"]
        lines += textwrap.wrap(", ".join(f"lit_distill.models.{n}" for n in names if n[:1].isupper()), width,
                               initial_indent="  ", subsequent_indent="  ")  # fmt: skip
        lines.append(f"  one model's arguments: lit-distill {subcommand} --model.student.help lit_distill.models.MLP")
    if "DistillationLoss" in types:
        names = sorted(n for n in exported_names(PACKAGE / "losses" / "__init__.py") if n[:1].isupper())
        lines += ["", "Losses (a list of strategies by class_path; the package's own):"]
        lines += textwrap.wrap(", ".join(n for n in names if n != "DistillationLoss"), width,
                               initial_indent="  ", subsequent_indent="  ")  # fmt: skip
        lines.append(
            f"  one loss's arguments:  lit-distill {subcommand} --model.losses.help lit_distill.losses.LogitKD"
        )
        lines.append("  change one loss:       --loss.NAME.ARG VALUE, e.g. --loss.logit_kd.temperature 2")
    if "OptimizerCallable" in types:
        lines += ["", "Optimizer and scheduler (any torch.optim class by class_path):"]
        lines.append(f"  their arguments:       lit-distill {subcommand} --model.optimizer.help torch.optim.AdamW")
    return lines
