"""Run one function over several items on a few threads, as an image's layers
and variant records are.

``concurrent.futures`` would do, but it imports ``logging`` with it: 4 ms of
every image conversion's start-up, spent on one core while the other waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K")
R = TypeVar("R")


class Parallel(Generic[T, R]):
    """``fn`` over ``items`` on up to ``threads`` threads, started at once.

    Items are taken in order, so with one thread they run one by one in
    order. :meth:`join` waits for every call, then returns the results in
    item order or raises the first error in item order; a failed call does
    not stop the others (each runs to its end, as a layer's pipeline must).
    """

    def __init__(self, fn: Callable[[T], R], items: Sequence[T], threads: int, name: str) -> None:
        self._fn = fn
        self._items = items
        self._results: list[R | None] = [None] * len(items)
        self._errors: list[BaseException | None] = [None] * len(items)
        self._next = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, min(threads, len(items))))] if items else []
        for thread in self._threads:
            thread.start()

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= len(self._items):
                return None
            self._next += 1
            return self._next - 1

    def _work(self) -> None:
        while (i := self._take()) is not None:
            try:
                self._results[i] = self._fn(self._items[i])
            except BaseException as exc:  # raised by join, in the caller's thread
                self._errors[i] = exc

    def outcomes(self) -> list[tuple[R | None, BaseException | None]]:
        """Wait for every call; each item's result and error, one of them None."""
        for thread in self._threads:
            thread.join()
        return list(zip(self._results, self._errors, strict=True))

    def join(self) -> list[R]:
        outcomes = self.outcomes()
        for _, exc in outcomes:
            if exc is not None:
                raise exc
        return [result for result, _ in outcomes]  # type: ignore[misc]  # every call returned


class Ahead(Generic[K, R]):
    """Calls started before their result is needed, each on a thread of its
    own and keyed, so a later step that wants the result takes it instead of
    waiting a round trip. A result is taken once; one whose call failed with
    ``redo`` is made again by the taker, which then reports what fails."""

    def __init__(self, name: str, redo: type[BaseException] | tuple[type[BaseException], ...]) -> None:
        """``redo``: the errors after which the taker makes the call again
        (``()``: none, the taker gets the error itself)."""
        self._name = name
        self._redo = redo
        self._calls: dict[K, Parallel[None, R]] = {}
        self._lock = threading.Lock()

    def start(self, key: K, fn: Callable[[], R]) -> None:
        """Start ``fn`` for ``key`` unless a call for it is already under way."""
        with self._lock:
            if key not in self._calls:
                self._calls[key] = Parallel(lambda _: fn(), [None], 1, self._name)

    def take(self, key: K, fn: Callable[[], R]) -> R:
        """The result of the call started for ``key``, else ``fn()`` now."""
        with self._lock:
            call = self._calls.pop(key, None)
        if call is not None:
            try:
                return call.join()[0]
            except self._redo:
                pass
        return fn()

    def drain(self) -> None:
        """Wait for every call started and not taken, dropping its result or error."""
        with self._lock:
            calls, self._calls = list(self._calls.values()), {}
        for call in calls:
            call.outcomes()


def each(fn: Callable[[T], R], items: Sequence[T], threads: int, name: str) -> list[R]:
    """``Parallel(...).join()``: the results in item order, or the first error in item order."""
    return Parallel(fn, items, threads, name).join()


__all__ = ["Ahead", "Parallel", "each"]
