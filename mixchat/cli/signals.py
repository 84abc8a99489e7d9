"""SIGINT, SIGTERM and SIGHUP: stop at the next step, keep what was generated, exit with 128 + signal.

Python's default turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be: inside an
import of torch (a traceback), inside a save (a lost turn) or inside a C++ call (an abort); SIGTERM and
SIGHUP kill the process outright and lose the turn in progress. So the commands install these handlers
before anything heavy is imported, and a signal only raises `Stopped` where that is safe:

- during start-up the signal is remembered and acted on at the next check point: after the imports, after
  each tensor the loader copies, after the model is loaded (raising inside an import leaves half-imported
  modules behind that fail again on the way out, e.g. numpy's lazy submodules recursing);
- while waiting for input, where nothing is unsaved, `Stopped` ends the command at once;
- while a reply runs, the handler only sets the reply's cancel event: the engine stops after its current
  forward pass, the partial reply is saved (marked as cancelled), and then the command exits. A first
  Ctrl-C stops just the reply; a second one, or SIGTERM/SIGHUP, also ends the process after the save;
- elsewhere (saving, printing) the signal is remembered and acted on at the next safe point (`check`).

This module imports nothing heavy: `python -m mixchat` installs it first of all.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS: tuple[signal.Signals, ...] = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None
)
NAMES = {s: s.name for s in SIGNALS}


class Stopped(BaseException):
    """A stop signal arrived where the command can end at once; `status` is the conventional exit status.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def status(self) -> int:
        return 128 + self.signum

    @property
    def message(self) -> str:
        if self.signum == signal.SIGINT:
            return "mixchat: interrupted"
        return f"mixchat: stopped by {NAMES.get(self.signum, f'signal {self.signum}')}"  # type: ignore[call-overload]


class StopSignals:
    """The process's one signal state (see the module docstring for when a signal raises)."""

    def __init__(self) -> None:
        self.cancel: threading.Event | None = None  # the running reply's, while one runs
        self.requested: int | None = None  # a signal that ends the process at the next safe point
        self.raise_now = False  # see the module docstring: only `interruptible` stretches raise at once
        self.stopped_reply = False  # the running reply was stopped by a (first) Ctrl-C
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Take over the three signals with a fresh state (main thread only; elsewhere a no-op)."""
        self.cancel, self.requested, self.raise_now, self.stopped_reply = None, None, False, False
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        import mixchat

        for s in SIGNALS:
            previous = signal.signal(s, self._handle)
            # The package's own start-up handler (mixchat/__init__.py) stands in for Python's default.
            self._previous[s] = (
                signal.default_int_handler
                if previous is mixchat._early and s == signal.SIGINT
                else (signal.SIG_DFL if previous is mixchat._early else previous)
            )
        if mixchat.EARLY_SIGNALS:
            self.requested = mixchat.EARLY_SIGNALS[0]  # acted on at the first check point

    def uninstall(self) -> None:
        """Give the signals back to their previous handlers (the TUI handles Ctrl-C as a key itself)."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.cancel is not None:  # a reply runs: stop it after the current forward pass
            if signum == signal.SIGINT and self.requested is None and not self.cancel.is_set():
                self.stopped_reply = True  # the first Ctrl-C stops the reply only
            else:
                self.requested = self.requested or signum
            self.cancel.set()
            return
        self.requested = self.requested or signum
        if self.raise_now:
            raise Stopped(self.requested)

    def check(self) -> None:
        """At a safe point: end the command if a stop signal arrived meanwhile."""
        if self.requested is not None:
            raise Stopped(self.requested)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A stretch (waiting for input) where a signal may end the command at once."""
        self.check()
        before, self.raise_now = self.raise_now, True
        try:
            yield
        finally:
            self.raise_now = before

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A stretch (saving, printing) that a signal must not cut short; it is acted on afterwards."""
        before, self.raise_now = self.raise_now, False
        try:
            yield
        finally:
            self.raise_now = before

    @contextmanager
    def reply(self, cancel: threading.Event) -> Iterator[None]:
        """While a reply runs, a signal sets `cancel` instead of raising."""
        before, self.raise_now = self.raise_now, False
        self.cancel, self.stopped_reply = cancel, False
        if self.requested is not None:
            cancel.set()
        try:
            yield
        finally:
            self.cancel = None
            self.raise_now = before


STOP = StopSignals()
