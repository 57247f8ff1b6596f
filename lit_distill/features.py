"""Forward hooks that read intermediate tensors of named submodules (FitNets hints, attention, ...).

Layers are named by their path in ``model.named_modules()`` (``"layer3"``, ``"blocks.2.attn"``), so
model code never changes (the idea of torchdistill's io_dict). ``"layer3"`` reads the module's
output, ``"layer3:input"`` its first positional input.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn


def parse_tap(spec: str) -> tuple[str, str]:
    """``"layer3"`` -> ``("layer3", "output")``; ``"layer3:input"`` -> ``("layer3", "input")``."""
    name, _, io = spec.partition(":")
    io = io or "output"
    if io not in ("input", "output"):
        raise ValueError(f"feature tap {spec!r}: suffix must be ':input' or ':output', got {io!r}.")
    return name, io


def resolve_module(model: nn.Module, name: str, side: str = "model") -> nn.Module:
    """Return ``model``'s submodule at path ``name`` or raise a KeyError listing the closest valid names."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    valid = [n for n in modules if n]
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.4)
    hint = f" Closest: {close}." if close else ""
    shown = valid[:20]
    raise KeyError(
        f"no submodule named {name!r} in the {side} ({type(model).__name__}).{hint} "
        f"Valid names start with: {shown}{' ...' if len(valid) > 20 else ''}"
    )


class FeatureTaps:
    """Hooks on named submodules of one model, capturing their tensors during :meth:`capture`.

    Hooks stay registered between steps but store nothing outside a ``capture()`` block, so no
    activation outlives the step that made it. Call :meth:`remove` to detach them.

    Args:
        model: the model to tap.
        taps: tap specs, ``"path"`` or ``"path:input"``.
        side: ``"student"`` or ``"teacher"``, used in error messages.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> taps = FeatureTaps(net, ["0", "2:input"])
        >>> import torch
        >>> with taps.capture() as feats:
        ...     _ = net(torch.randn(3, 4))
        ...     sorted(feats)
        ['0', '2:input']
        >>> taps.remove()
    """

    def __init__(self, model: nn.Module, taps: Iterable[str], side: str = "model") -> None:
        self.side = side
        self._store: dict[str, Tensor] | None = None
        self._handles = []
        for spec in dict.fromkeys(taps):  # ordered, unique
            name, io = parse_tap(spec)
            module = resolve_module(model, name, side)
            self._handles.append(module.register_forward_hook(self._make_hook(spec, io)))
        self.specs = list(dict.fromkeys(taps))

    def _make_hook(self, key: str, io: str):
        def hook(_module: nn.Module, args: tuple, output: object) -> None:
            if self._store is None:
                return
            value = args[0] if io == "input" else output
            if isinstance(value, (tuple, list)):  # e.g. attention blocks returning (out, weights)
                value = value[0]
            if hasattr(value, "last_hidden_state"):
                value = value.last_hidden_state
            self._store[key] = value

        return hook

    @contextmanager
    def capture(self) -> Iterator[dict[str, Tensor]]:
        """Collect tapped tensors of the forward passes run inside the block; cleared on exit."""
        store: dict[str, Tensor] = {}
        self._store = store
        try:
            yield store
        finally:
            self._store = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __len__(self) -> int:
        return len(self._handles)


def taps_for_losses(
    losses: Iterable[nn.Module], models: dict[str, nn.Module | None], existing: dict[str, FeatureTaps]
) -> None:
    """Add to ``existing`` one :class:`FeatureTaps` per side (``"student"``, ``"teacher"``) on the layers that the
    losses declare in ``student_taps`` / ``teacher_taps``; sides already tapped, or with nothing to tap, are skipped.

    A cache stand-in (:class:`lit_distill.cache.CachedTeacher`, ``reads_from_batch``) is never run: its features
    come with the batch.
    """
    losses = list(losses)
    for side, model in models.items():
        specs = sorted({s for loss in losses for s in getattr(loss, f"{side}_taps", ())})
        if specs and side not in existing and not getattr(model, "reads_from_batch", False):
            existing[side] = FeatureTaps(model, specs, side)
