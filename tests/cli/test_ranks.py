"""A configuration error in a run of several processes is printed once: rank 0 reports, the others stay silent
unless their error is another one (or rank 0 has none)."""

import threading
import time
from datetime import timedelta

import pytest

from lit_distill.cli.ranks import SharedReport


class FakeStore:
    """An in-memory stand-in for the process group's key-value store, shared by threads acting as ranks."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.changed = threading.Condition()

    def set(self, key: str, value: str) -> None:
        with self.changed:
            self.values[key] = value.encode()
            self.changed.notify_all()

    def get(self, key: str) -> bytes:
        return self.values[key]

    def wait(self, keys: list[str], timeout: timedelta) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: all(k in self.values for k in keys), timeout.total_seconds()):
                raise RuntimeError(f"timed out waiting for {keys}")


def reports(lines: dict[int, str], world_size: int = 2, wait_s: float = 5.0) -> dict[int, str | None]:
    """What each failing rank prints (its ``first_line``), every rank in its own thread, as processes would."""
    store, printed = FakeStore(), {}

    def rank(r: int) -> None:
        shared = SharedReport(store, r, world_size, wait_s)
        printed[r] = shared.first_line(lines[r])
        shared.linger()

    threads = [threading.Thread(target=rank, args=(r,)) for r in sorted(lines, reverse=True)]  # rank 1 first
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return printed


def test_the_same_error_on_every_rank_is_printed_by_rank_0_only():
    same = "ValueError: train_samples=5000 exceeds the 1259 training samples."
    assert reports({0: same, 1: same, 2: same}, world_size=3) == {0: same, 1: None, 2: None}


def test_another_error_on_another_rank_is_printed_under_its_rank():
    printed = reports({0: "RuntimeError: connection closed by peer", 1: "NonFiniteLossError: batch 0 is NaN"})
    assert printed == {0: "RuntimeError: connection closed by peer", 1: "rank 1: NonFiniteLossError: batch 0 is NaN"}


def test_a_rank_retelling_rank_0s_error_stays_silent():
    retold = "RuntimeError: rank 0 failed while exporting the student: OSError: disk full"  # export.run_together
    printed = reports({0: "OSError: disk full", 1: retold})
    assert printed == {0: "OSError: disk full", 1: None}


def test_a_rank_that_fails_alone_speaks_after_a_short_wait():
    start = time.monotonic()
    assert reports({1: "ValueError: only here"}, wait_s=0.3) == {1: "rank 1: ValueError: only here"}
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("readers", [0, 1])
def test_rank_0_waits_for_the_others_to_read_at_most_briefly(readers):
    store = FakeStore()
    shared = SharedReport(store, 0, 2, wait_s=0.3)
    shared.first_line("ValueError: x")
    if readers:
        store.set(f"{shared.prefix}read/1", "1")
    start = time.monotonic()
    shared.linger()
    assert (time.monotonic() - start < 0.2) == bool(readers)
