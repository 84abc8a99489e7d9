"""Thread count for small CPU steps, chosen by timing the steps themselves.

A small model's decode step is hundreds of tiny ops, and every op spread over threads waits for the slowest
one. On the idle 2-core VM two threads decode the built-in model about 25 % faster than one (their memory
reads overlap); beside one busy process the same two threads were three times slower than one, because each
op waits a scheduler tick for the descheduled thread. Neither fixed count is right, and which one wins
changes while the app runs (the TUI redraws, another job starts or ends). So the engine times its steps,
runs the faster count, and now and then runs one step with another count to notice when that changes.
"""

from __future__ import annotations

from collections.abc import Sequence

EXPLORE_EVERY = 32
"""One step in this many tries a count other than the current best (costs a few per cent when it is slow)."""

SMOOTHING = 0.3
"""Weight of a new timing in a count's running estimate: a single stalled step moves it only part way."""


class ThreadChooser:
    def __init__(self, choices: Sequence[int]) -> None:
        self.choices = sorted(set(choices))
        self._estimate: dict[tuple[int, int], float] = {}  # (step key, threads) -> seconds
        self._steps = 0

    def pick(self, key: int) -> int:
        """Threads for the next step of kind `key` (steps of different sizes are timed apart)."""
        self._steps += 1
        if len(self.choices) == 1:
            return self.choices[0]
        for c in self.choices:
            if (key, c) not in self._estimate:
                return c
        best = self.best(key)
        if self._steps % EXPLORE_EVERY == 0:
            others = [c for c in self.choices if c != best]
            return others[(self._steps // EXPLORE_EVERY) % len(others)]
        return best

    def record(self, key: int, threads: int, seconds: float) -> None:
        old = self._estimate.get((key, threads))
        self._estimate[(key, threads)] = seconds if old is None else old + SMOOTHING * (seconds - old)

    def best(self, key: int) -> int:
        """The count with the lowest estimate for `key` (the smallest count while nothing is measured)."""
        timed = [c for c in self.choices if (key, c) in self._estimate]
        if not timed:
            return self.choices[0]
        return min(timed, key=lambda c: self._estimate[(key, c)])
