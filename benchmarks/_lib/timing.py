"""Measuring time, memory and spread: one clock for every benchmark, and the summaries its readings go into.

:class:`Clock` keeps named time marks. By default a mark synchronises the device and reads the host's wall clock
and this process's CPU time: right for a few marks around many steps (throughput). With ``events=True`` on CUDA a
mark records a CUDA event instead (no synchronisation, GPU time between marks): right for marks inside a step.
:class:`FitClock` puts a Lightning fit on a clock; :func:`median_ms` times a function.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback

GiB = float(1 << 30)


def sync(device: torch.device | str | None = None) -> None:
    """Wait for the device's queued work (CUDA only; the CPU has none)."""
    if torch.device(device or "cpu").type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Named time marks on one device; ``ms(a, b)`` is the time from the i-th mark ``a`` to the i-th mark ``b``.

    Example:
        >>> clock = Clock("cpu")
        >>> clock.mark("start"); clock.mark("end")
        >>> clock.ms("start", "end") >= 0.0
        True
    """

    def __init__(self, device: torch.device | str | None = None, events: bool = False) -> None:
        self.device = torch.device(device or "cpu")
        self.events = events and self.device.type == "cuda"
        self.marks: dict[str, list[Any]] = {}

    def mark(self, name: str = "step") -> None:
        if self.events:
            value: Any = torch.cuda.Event(enable_timing=True)
            value.record()
        else:
            sync(self.device)
            value = (time.perf_counter(), time.process_time())
        self.marks.setdefault(name, []).append(value)

    def count(self, name: str) -> int:
        return len(self.marks.get(name, ()))

    def _ms(self, a: Any, b: Any, cpu: bool) -> float:
        if self.events:
            if cpu:
                raise ValueError("an events clock has no CPU time; use Clock(events=False)")
            b.synchronize()
            return a.elapsed_time(b)
        return 1000.0 * (b[1] - a[1] if cpu else b[0] - a[0])

    def ms(self, start: str, end: str, index: int = -1, cpu: bool = False) -> float:
        """Milliseconds from mark ``start`` to mark ``end`` (their ``index``-th); ``cpu``: this process's CPU time."""
        return self._ms(self.marks[start][index], self.marks[end][index], cpu)

    def between(self, start: str, end: str, cpu: bool = False) -> list[float]:
        """Milliseconds of every ``start``/``end`` pair, in order."""
        return [self._ms(a, b, cpu) for a, b in zip(self.marks[start], self.marks[end])]

    def intervals(self, name: str = "step") -> list[float]:
        """Milliseconds between successive marks ``name``."""
        marks = self.marks.get(name, [])
        return [self._ms(a, b, False) for a, b in zip(marks, marks[1:])]


def _samples(batch: Any) -> int:
    """Rows of a batch: the leading size of its ``input_ids``, or of its first tensor (searched in order)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict) and "input_ids" in batch:
        return _samples(batch["input_ids"])
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    return next((n for n in (_samples(item) for item in items) if n), 0)


class FitClock(Callback):
    """A Lightning fit on a :class:`Clock`, with the loss and sample count of every training step.

    Marks: ``"step"`` at the start of every training step (``per_step=True``; give an events clock on CUDA so the
    steps are not synchronised); ``"start"`` before the step ``warmup`` of this fit (counted from this fit's
    first step, also after a resume; peak memory statistics reset there) and ``"end"`` when training ends: the timed
    window of :attr:`seconds`; ``"epoch"``/``"epoch_end"`` around every training epoch (``per_epoch=True``).

    Args:
        warmup: steps before the timed window (None: no window, so no synchronisation at all).
        per_step: mark every step.
        per_epoch: mark every epoch (with the samples each saw: :meth:`epoch_rates`).
        clock: the clock to mark (default: a host clock on the module's device, made at setup).
    """

    def __init__(
        self, warmup: int | None = 0, per_step: bool = False, per_epoch: bool = False, clock: Clock | None = None
    ) -> None:
        self.warmup, self.per_step, self.per_epoch, self.clock = warmup, per_step, per_epoch, clock
        self.losses: list[torch.Tensor] = []
        self.epoch_samples: list[int] = []
        self.timed_steps = 0

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.clock is None:
            self.clock = Clock(pl_module.device)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.per_epoch:
            self.clock.mark("epoch")
            self.epoch_samples.append(0)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.warmup is not None and len(self.losses) == self.warmup and not self.clock.count("start"):
            sync(pl_module.device)
            reset_peak_memory(pl_module.device)
            self.clock.mark("start")
        if self.per_step:
            self.clock.mark("step")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float("nan")))
        self.timed_steps += bool(self.clock.count("start"))
        if self.per_epoch:
            self.epoch_samples[-1] += _samples(batch)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.per_epoch:
            self.clock.mark("epoch_end")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.clock.count("start"):
            self.clock.mark("end")

    @property
    def seconds(self) -> float:
        """Wall seconds of the timed window (step ``warmup`` to the end of training)."""
        return self.clock.ms("start", "end") / 1000.0

    def step_ms(self, skip: int = 0) -> list[float]:
        """Milliseconds from each step's start to the next one's (``per_step``), the first ``skip`` left out."""
        return self.clock.intervals("step")[skip:]

    def epoch_rates(self, cpu: bool = False) -> list[float]:
        """Samples per second of every epoch (``cpu``: per second of this process's CPU time)."""
        ms = self.clock.between("epoch", "epoch_end", cpu=cpu)
        return [1000.0 * n / t for n, t in zip(self.epoch_samples, ms)]


def median_ms(fn: Callable[[], Any], reps: int, warmup: int = 1, before: Callable[[], Any] | None = None) -> float:
    """Median milliseconds of ``fn`` over ``reps`` calls after ``warmup`` untimed ones; ``before`` runs untimed
    before every call (CUDA events around each call after a synchronisation; the wall clock on the CPU)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clock = Clock(device, events=True)
    for i in range(warmup + reps):
        if before:
            before()
        if i < warmup:
            fn()
            continue
        sync(device)
        clock.mark("call")
        fn()
        clock.mark("done")
    return statistics.median(clock.between("call", "done"))


def reset_peak_memory(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device | str) -> dict[str, float] | None:
    """``{"allocated": GiB, "reserved": GiB}`` peaks of the caching allocator on ``device`` (None on the CPU)."""
    if torch.device(device).type != "cuda":
        return None
    return {
        "allocated": round(torch.cuda.max_memory_allocated(device) / GiB, 2),
        "reserved": round(torch.cuda.max_memory_reserved(device) / GiB, 2),
    }


def peak_extra_gib(fn: Callable[[], Any]) -> float:
    """GiB allocated at the peak of ``fn`` beyond what was allocated before it (its outputs included; NaN on CPU)."""
    if not torch.cuda.is_available():
        fn()
        return float("nan")
    sync("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync("cuda")
    return (torch.cuda.max_memory_allocated() - base) / GiB


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_std_text(values: list[float], digits: int = 3) -> str:
    """``"mean ± std"`` (``"mean"`` alone for a single value).

    Example:
        >>> mean_std_text([1.0, 2.0, 3.0])
        '2.000 ± 1.000'
    """
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"
