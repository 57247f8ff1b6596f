"""Stop (or skip) on a non-finite loss term without a host-device sync per step."""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import Tensor


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite."""


class NonFiniteGuard:
    """Watches loss terms step by step and raises :class:`NonFiniteLossError` naming the bad term.

    The finiteness flags are copied to the host asynchronously and read once the copy has landed
    (usually one step later), so the training step never waits for the GPU. :meth:`check` waits for
    everything still in flight; the module calls it before a checkpoint is written, so no
    checkpoint holding weights updated from a NaN loss is saved.

    Example:
        >>> guard = NonFiniteGuard()
        >>> guard.observe(0, {"kd": torch.tensor(0.5)})
        >>> guard.observe(1, {"kd": torch.tensor(float("nan"))})  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ...
        lit_distill.guard.NonFiniteLossError: non-finite loss at step 1: kd=nan (last finite: kd=0.5 at step 0) ...
    """

    def __init__(self) -> None:
        self._pending: deque = deque()
        self._last: Tensor | None = None
        self._last_step: Tensor | None = None
        self._names: tuple[str, ...] = ()

    def observe(self, step: int, terms: dict[str, Tensor]) -> None:
        names = tuple(terms)
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        if names != self._names:
            self._names, self._last, self._last_step = names, torch.full_like(values, float("nan")), None
        finite = torch.isfinite(values)
        step_t = torch.full_like(values, float(step))
        self._last = torch.where(finite, values, self._last)
        self._last_step = step_t if self._last_step is None else torch.where(finite, step_t, self._last_step)
        snapshot = torch.stack([values, self._last, self._last_step])
        event = None
        if snapshot.is_cuda:
            host = torch.empty(snapshot.shape, dtype=snapshot.dtype, pin_memory=True)
            host.copy_(snapshot, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = snapshot.clone()
        self._pending.append((step, names, host, event))
        self._drain(block=False)

    def check(self) -> None:
        """Wait for every observed step and raise if any had a non-finite term."""
        self._drain(block=True)

    def _drain(self, block: bool) -> None:
        while self._pending:
            step, names, host, event = self._pending[0]
            if event is not None:
                if not block and not event.query():
                    return
                event.synchronize()
            self._pending.popleft()
            values, last, last_step = host.tolist()
            bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
            if bad:
                self._pending.clear()
                raise NonFiniteLossError(describe(step, names, values, last, last_step, bad))


def describe(step: int, names, values, last, last_step, bad) -> str:
    now = ", ".join(f"{names[i]}={values[i]}" for i in bad)
    before = ", ".join(
        f"{names[i]}={last[i]:.6g} at step {int(last_step[i])}" if last[i] == last[i] else f"{names[i]}=never finite"
        for i in bad
    )
    return (
        f"non-finite loss at step {step}: {now} (last finite: {before}). Lower the learning rate or the "
        "temperature, check the inputs and teacher outputs for NaN, or set `nan_policy: skip` to skip such batches."
    )
