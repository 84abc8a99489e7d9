"""Ending a pipeline cleanly when one of its ranks dies.

A pipeline is only as alive as its weakest rank: if one process dies, the others would otherwise wait for
it forever (a follower in the command channel, rank 0 in a receive). Three things prevent that:

- torchrun's agent notices a worker that exits and sends SIGTERM to the others; each rank answers it with
  one clear line and exits at once (no clean-up that could itself wait on the dead peer);
- gloo reports a closed connection as an error, and NCCL/gloo data transfers have a short timeout: the
  rank that sees it says so in one line and exits, which in turn makes the agent stop the rest;
- a watchdog thread exits if the launcher itself disappears (the process gets a new parent).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from types import FrameType

STATUS_PEER_EXITED = 1


def stop(rank: int, reason: str, status: int = STATUS_PEER_EXITED) -> None:
    """Print one line and leave now, without running clean-up that may block on a dead peer."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        os.write(2, f"mixchat: rank {rank} stopping: {reason}\n".encode())
    os._exit(status)


def install(rank: int, follower: bool) -> None:
    """Signal handlers and the launcher watchdog for this rank."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop(rank, "another rank exited")

    signal.signal(signal.SIGTERM, on_term)
    if follower:
        # Ctrl-C reaches every process of the terminal's group; only rank 0 (the front end) acts on it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                stop(rank, "the launcher exited")

    threading.Thread(target=watch, name="mixchat-launcher-watchdog", daemon=True).start()


def detach_stdin() -> None:
    """Followers never read the terminal or a pipe meant for rank 0."""
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
