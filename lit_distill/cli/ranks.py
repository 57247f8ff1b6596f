"""One error report for a run of several processes.

Under DDP or FSDP every process builds the same run, so a configuration error is raised by each of them and would
be printed once per process. Here rank 0 posts the first line of its error to the process group's key-value store
and prints it; another rank that fails stays silent when rank 0 already said the same, and otherwise prints its own
error under its rank. A rank waits only a few seconds for rank 0's report, so one that fails alone still speaks.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any, Protocol

#: Seconds a failing rank waits for rank 0's report, and rank 0 for the others to have read it.
WAIT_S = 10.0


class Store(Protocol):
    """The part of :class:`torch.distributed.Store` used here."""

    def set(self, key: str, value: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def wait(self, keys: list[str], timeout: timedelta) -> None: ...


def process_group() -> tuple[Any, int, int] | None:
    """``(store, rank, world size)`` of the running process group, or None in a single process."""
    dist = sys.modules.get("torch.distributed")  # never imported here: the light error paths have no torch
    if dist is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    try:
        store = dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a torch without it: every rank prints, as before
        return None
    return store, dist.get_rank(), dist.get_world_size()


class SharedReport:
    """Decides whether this rank prints its error; rank 0 then waits briefly for the others to have read it.

    Example:
        >>> report = SharedReport.of_this_run()  # None in a single process
    """

    def __init__(self, store: Store, rank: int, world_size: int, wait_s: float = WAIT_S) -> None:
        self.store, self.rank, self.world_size, self.wait_s = store, rank, world_size, wait_s
        self.prefix = f"lit-distill/error/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"

    @classmethod
    def of_this_run(cls) -> SharedReport | None:
        found = process_group()
        return None if found is None else cls(*found)

    def first_line(self, line: str) -> str | None:
        """The line to print for this rank's error ``line``, or None when rank 0 already printed it."""
        if self.rank == 0:
            self.store.set(self.prefix + "0", line)
            return line
        try:
            self.store.wait([self.prefix + "0"], timedelta(seconds=self.wait_s))
            theirs = self.store.get(self.prefix + "0").decode()
            self.store.set(f"{self.prefix}read/{self.rank}", "1")
        except Exception:  # noqa: BLE001 - rank 0 did not fail (or is gone): this rank's error is news
            return f"rank {self.rank}: {line}"
        if theirs in line or line in theirs:  # the same error, or one rank retelling the other's (run_together)
            return None
        return f"rank {self.rank}: {line}"

    def linger(self) -> None:
        """On rank 0: wait (a few seconds at most) until the other ranks have read its report."""
        if self.rank != 0:
            return
        try:
            keys = [f"{self.prefix}read/{r}" for r in range(1, self.world_size)]
            self.store.wait(keys, timedelta(seconds=self.wait_s))
        except Exception:  # noqa: BLE001 - a rank that did not fail never reads it
            pass
