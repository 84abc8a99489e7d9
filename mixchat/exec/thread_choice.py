"""Thread count for small CPU steps, chosen by timing the steps themselves.

A small model's decode step is hundreds of tiny ops, and every op spread over threads waits for the slowest
one. On the idle 2-core VM two threads decode the built-in model about 25 % faster than one (their memory
reads overlap); beside one busy process the same two threads were three times slower than one, because each
op waits a scheduler tick for the descheduled thread. Neither fixed count is right, and which one wins
changes while the app runs (the TUI redraws, another job starts or ends). So the engine times its steps,
runs the faster count, and now and then runs one step with another count to notice when that changes.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence

EXPLORE_EVERY = 32
"""Steps between tries of a count other than the current best, while that count is close to the best."""

EXPLORE_MAX = 2048
"""The longest gap between tries: each try that is over twice as slow as the best doubles the gap. Beside a
busy process a two-thread step on the 2-core VM has taken over a second, so such tries must become rare."""

KEEP = 3
"""Timings kept per count; the estimate is their median, so one stalled step does not flip the choice."""


class ThreadChooser:
    def __init__(self, choices: Sequence[int]) -> None:
        self.choices = sorted(set(choices))
        self._samples: dict[tuple[int, int], deque[float]] = {}  # (step key, threads) -> recent seconds
        self._warmed: set[tuple[int, int]] = set()
        self._gap: dict[int, int] = {}  # step key -> steps between tries of another count
        self._next_try: dict[int, int] = {}  # step key -> step number of the next try
        self._steps = 0

    def pick(self, key: int) -> int:
        """Threads for the next step of kind `key` (steps of different sizes are timed apart)."""
        self._steps += 1
        if len(self.choices) == 1:
            return self.choices[0]
        for c in self.choices:
            if not self._samples.get((key, c)):
                return c
        best = self.best(key)
        if self._steps >= self._next_try.setdefault(key, self._steps + EXPLORE_EVERY):
            others = [c for c in self.choices if c != best]
            return others[self._steps % len(others)]
        return best

    def record(self, key: int, threads: int, seconds: float) -> None:
        """Note a step's time. The first step on a count is not kept: switching the thread count wakes or
        builds the thread pool, which cost that step 30-130 ms on the 2-core VM against 3 ms for the next."""
        k = (key, threads)
        if k not in self._warmed:
            self._warmed.add(k)
            return
        best = self.best(key)
        if threads != best and self._samples.get((key, best)):  # a try of another count: how did it do?
            far_slower = seconds > 2 * statistics.median(self._samples[(key, best)])
            gap = self._gap.get(key, EXPLORE_EVERY)
            self._gap[key] = min(2 * gap, EXPLORE_MAX) if far_slower else EXPLORE_EVERY
            self._next_try[key] = self._steps + self._gap[key]
        self._samples.setdefault(k, deque(maxlen=KEEP)).append(seconds)

    def best(self, key: int) -> int:
        """The count with the lowest median recent time for `key` (the smallest count while none is timed)."""
        timed = [c for c in self.choices if self._samples.get((key, c))]
        if not timed:
            return self.choices[0]
        return min(timed, key=lambda c: statistics.median(self._samples[(key, c)]))
