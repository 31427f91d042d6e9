"""transcoder.parallel: results in item order, every call run to its end, the
first error in item order, at most the given number of threads."""

from __future__ import annotations

import threading
import time

import pytest

from transcoder.parallel import each


def test_results_come_in_item_order_whatever_order_the_calls_end_in() -> None:
    def slow_first(n: int) -> int:
        time.sleep(0.05 * (3 - n))
        return n * n

    assert each(slow_first, [0, 1, 2, 3], 4, "t") == [0, 1, 4, 9]


def test_every_call_ends_before_the_first_error_in_item_order_is_raised() -> None:
    ended: list[int] = []

    def work(n: int) -> int:
        if n == 1:
            time.sleep(0.1)  # fails last in time, first in item order
            raise ValueError("one")
        if n == 3:
            raise KeyError("three")
        time.sleep(0.05)
        ended.append(n)
        return n

    with pytest.raises(ValueError, match="one"):
        each(work, [0, 1, 2, 3, 4], 3, "t")
    assert sorted(ended) == [0, 2, 4]


def test_threads_are_bounded_and_one_thread_runs_in_order() -> None:
    running = peak = 0
    lock = threading.Lock()
    order: list[int] = []

    def work(n: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            order.append(n)
        time.sleep(0.02)
        with lock:
            running -= 1

    each(work, list(range(8)), 3, "t")
    assert peak == 3
    order.clear()
    each(work, list(range(5)), 1, "t")
    assert order == [0, 1, 2, 3, 4]


def test_no_items_no_threads() -> None:
    before = threading.active_count()
    assert each(lambda n: n, [], 4, "t") == []
    assert threading.active_count() == before


def test_ahead_gives_a_started_result_once_and_redoes_a_failed_one() -> None:
    from transcoder.errors import TransientError
    from transcoder.parallel import Ahead

    calls: list[str] = []

    def call(tag: str, fail: bool = False) -> str:
        calls.append(tag)
        if fail:
            raise TransientError(tag)
        return tag

    ahead: Ahead[str, str] = Ahead("test", TransientError)
    ahead.start("a", lambda: call("ahead"))
    ahead.start("a", lambda: call("twice"))  # one call per key while it is pending
    assert ahead.take("a", lambda: call("now")) == "ahead"
    assert ahead.take("a", lambda: call("now")) == "now"  # taken once: asked again
    ahead.start("b", lambda: call("broken", fail=True))
    assert ahead.take("b", lambda: call("redone")) == "redone"
    assert calls == ["ahead", "now", "broken", "redone"]
    ahead.start("c", lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    with pytest.raises(ZeroDivisionError):
        ahead.take("c", lambda: call("never"))


def test_ahead_drain_waits_for_the_calls_not_taken() -> None:
    """``drain`` returns only once every call started and not taken has
    ended, a failed one included, and forgets them: a later take calls anew."""
    from transcoder.errors import TransientError
    from transcoder.parallel import Ahead

    release = threading.Event()
    ended: list[str] = []

    def slow(tag: str) -> str:
        assert release.wait(10)
        ended.append(tag)
        return tag

    def broken() -> str:
        slow("broken")
        raise TransientError("broken")

    ahead: Ahead[str, str] = Ahead("test", TransientError)
    ahead.start("a", lambda: slow("a"))
    ahead.start("b", broken)
    draining = threading.Thread(target=ahead.drain)
    draining.start()
    draining.join(0.2)
    assert draining.is_alive() and ended == []  # both calls are still under way
    release.set()
    draining.join(10)
    assert not draining.is_alive() and sorted(ended) == ["a", "broken"]
    assert ahead.take("a", lambda: "anew") == "anew"
