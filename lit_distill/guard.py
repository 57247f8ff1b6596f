"""Stop on a non-finite loss term without a host-device sync per step."""

from __future__ import annotations

import math
import warnings
from collections import deque
from typing import Any

import torch
from torch import Tensor


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite."""


class NonFiniteGuard:
    """Watches loss terms step by step and raises :class:`NonFiniteLossError` naming the bad term.

    Each step costs one small device op (stacking the scalar terms) and an asynchronous copy into a
    reused pinned host buffer; the values are read once the copy has landed (usually a step later),
    so the training step never waits for the GPU. The last finite value of each term is tracked on
    the host. :meth:`check` waits for everything in flight; the module calls it before a checkpoint
    is written, so no checkpoint holding weights updated from a NaN loss is saved.

    Args:
        ring: pinned buffers in rotation (how many steps may be in flight before one waits).

    Example:
        >>> guard = NonFiniteGuard()
        >>> guard.observe(0, {"kd": torch.tensor(0.5)})
        >>> guard.observe(1, {"kd": torch.tensor(float("nan"))})  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        NonFiniteLossError: non-finite loss at step 1: kd=nan (last finite: kd=0.5 at step 0) ...
    """

    def __init__(self, ring: int = 16) -> None:
        self.ring = ring
        self._pending: deque = deque()
        self._buffers: list[Tensor] = []
        self._slot = 0
        self._last: dict[str, tuple[float, int]] = {}

    def observe(self, step: int, terms: dict[str, Tensor]) -> None:
        values = torch.stack([v.detach().reshape(()).float() for v in terms.values()])
        event = None
        if values.is_cuda:
            host = self._pinned(values.numel())
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = values
        self._pending.append((step, tuple(terms), host, event))
        self._drain(block=False)

    def check(self) -> None:
        """Wait for every observed step and raise if any had a non-finite term."""
        self._drain(block=True)

    def _pinned(self, size: int) -> Tensor:
        if not self._buffers or self._buffers[0].numel() != size:
            self._drain(block=True)
            self._buffers = [torch.empty(size, pin_memory=True) for _ in range(self.ring)]
        if len(self._pending) >= self.ring:
            self._drain(block=True)  # every buffer is in flight: wait for the oldest copies
        self._slot = (self._slot + 1) % self.ring
        return self._buffers[self._slot]

    def _drain(self, block: bool) -> None:
        while self._pending:
            step, names, host, event = self._pending[0]
            if event is not None:
                if not block and not event.query():
                    return
                event.synchronize()
            self._pending.popleft()
            values = host.tolist()
            bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
            if bad:
                self._pending.clear()
                raise NonFiniteLossError(self._describe(step, names, values, bad))
            for name, value in zip(names, values):
                self._last[name] = (value, step)

    def _describe(self, step: int, names: tuple[str, ...], values: list[float], bad: list[int]) -> str:
        now = ", ".join(f"{names[i]}={values[i]}" for i in bad)
        before = ", ".join(
            f"{names[i]}={self._last[names[i]][0]:.6g} at step {self._last[names[i]][1]}"
            if names[i] in self._last
            else f"{names[i]}=never finite"
            for i in bad
        )
        return (
            f"non-finite loss at step {step}: {now} (last finite: {before}). Lower the learning rate or the "
            "temperature, check the inputs and teacher outputs for NaN, or set `nan_policy: skip` to skip such "
            "batches."
        )


def skip_everywhere(strategy: Any, step: int, rank: int, total: Tensor, terms: dict[str, Tensor]) -> bool:
    """``nan_policy: skip``: whether this step's update is skipped, decided by all ranks together (one small
    collective), so that every rank skips the same step: each then backpropagates :func:`zero_loss` (DDP's gradient
    all-reduce runs on every rank as usual) and the module drops the gradients before the optimizer step.

    The rank that saw the non-finite term says which, and rank 0 says that the batch was skipped.
    """
    finite = bool(torch.isfinite(total))
    if strategy.reduce_boolean_decision(finite, all=True):
        return False
    if not finite:
        bad = [name for name, value in terms.items() if not torch.isfinite(value).all()] or ["loss"]
        warnings.warn(f"step {step}, rank {rank}: non-finite loss term(s) {bad}; skipping the batch.", stacklevel=2)
    elif rank == 0:
        warnings.warn(f"step {step}: a non-finite loss on another rank; batch skipped on every rank.", stacklevel=2)
    return True


def zero_loss(params: list[Tensor]) -> Tensor:
    """A loss of 0 that reaches every parameter with a gradient of exactly 0 (``0 * NaN`` would be NaN), so a skipped
    step's backward touches the same parameters on every rank as a normal step does."""
    return torch.stack([(p * 0).sum() for p in params]).sum()
