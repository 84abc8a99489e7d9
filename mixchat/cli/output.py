"""Writing replies to stdout without letting stdout decide whether a turn is kept.

A reader that goes away (`| head -c 3`), a closed stdout (`>&-`) or a full one (`> /dev/full`) used to
raise in the middle of a turn, before it was saved. `Output` records the first failure instead of raising;
the REPL then stops the reply (nobody reads it), saves the turn, and only afterwards ends the process:
silently for a broken pipe, as other Unix tools do, with one line on stderr otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import Any, TextIO

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool that a closed pipe ended
EXIT_OUTPUT_FAILED = 1


class Output:
    """A text stream (stdout) whose write errors are kept, not raised."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.failure: OSError | None = None  # a closed stdout (None) fails at the first write, not before

    def isatty(self) -> bool:
        try:
            return self.stream is not None and bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def write(self, text: str) -> bool:
        """Write and flush; False (and nothing more is written) once a write has failed."""
        if self.failure is not None:
            return False
        if self.stream is None:
            self.failure = OSError(errno.EBADF, "stdout is closed")
            return False
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError as e:
            self.failure = e
        except ValueError:  # "I/O operation on closed file"
            self.failure = OSError(errno.EBADF, "stdout is closed")
        return self.failure is None

    def message(self) -> str | None:
        """The one line for stderr (None for a broken pipe, which ends the process silently)."""
        return failure_message(self.failure)

    def exit_status(self) -> int:
        return output_exit_status(self.failure)


def failure_message(e: OSError | None) -> str | None:
    if e is None or e.errno == errno.EPIPE:
        return None
    why = e.strerror or str(e)
    return f"mixchat: error: cannot write to stdout ({why})"


def output_exit_status(e: OSError | None) -> int:
    if e is None:
        return 0
    return EXIT_BROKEN_PIPE if e.errno == errno.EPIPE else EXIT_OUTPUT_FAILED


def silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's last flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, 1)
    except OSError:
        pass
    finally:
        os.close(devnull)
    stream: Any = sys.stdout
    if stream is not None:
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def flush_or_silence_stdout() -> None:
    """Deliver what stdout still buffers; if that fails too, silence it (see silence_stdout)."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):
        silence_stdout()


def say(text: str) -> None:
    """One line on stderr, which may itself be gone (a hung-up terminal): then nothing is said."""
    stream = sys.stderr
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):
        print(text, file=stream, flush=True)
