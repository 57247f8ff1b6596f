"""Which submodules of a model are its repeated transformer blocks: the units FSDP shards one at a time."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from torch import nn


def find_block_classes(model: nn.Module, names: Sequence[str] | None = None) -> tuple[type[nn.Module], ...]:
    """The classes of ``model``'s transformer blocks.

    In order: the class ``names`` given (e.g. ``["LlamaDecoderLayer"]``); the ``_no_split_modules`` that Hugging
    Face models (and lit-distill's ``GPT``) declare; else the class of the longest ``nn.ModuleList`` whose
    entries all share one class.

    Args:
        model: the student or teacher.
        names: class names to use instead of discovering them.

    Raises:
        ValueError: a name matches no submodule class (the closest ones are listed), or nothing repeats.

    Example:
        >>> from lit_distill.models import GPT
        >>> [c.__name__ for c in find_block_classes(GPT(n_layer=2, n_head=2, n_embd=16))]
        ['Block']
    """
    by_name: dict[str, type[nn.Module]] = {type(m).__name__: type(m) for m in model.modules()}
    if names:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            hints = {n: difflib.get_close_matches(n, by_name, n=3) for n in unknown}
            raise ValueError(
                f"block class(es) {unknown} do not occur in {type(model).__name__}; closest: {hints}. "
                f"Its submodule classes are: {sorted(by_name)}."
            )
        return tuple(by_name[n] for n in names)
    declared = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or ())}
    found = tuple(cls for name, cls in by_name.items() if name in declared)
    if found:
        return found
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) and len({type(c) for c in m}) == 1]
    if not lists:
        raise ValueError(
            f"found no repeated blocks in {type(model).__name__} to shard; name their class, e.g. "
            "FSDP2Strategy(block_classes=[MyBlock])."
        )
    return (type(max(lists, key=len)[0]),)


def blocks_of(model: nn.Module, classes: tuple[type[nn.Module], ...]) -> list[nn.Module]:
    """The block instances of ``model``, outermost first (a block nested in a block is not listed again)."""
    found: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, classes):
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found
