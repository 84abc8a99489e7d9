"""One writer per conversation: an advisory lock held for as long as a process has the conversation open.

Without it, two `chat --resume c` processes each saved their own view of the conversation and the last
writer silently dropped the other's turns. The lock is `flock` on a small file under
`conversations/.locks/`, keyed by the conversation's id (stable across renames). The kernel releases a
flock when its holder dies, however it dies, so a stale lock (a killed or crashed holder) is simply taken
over by the next process; the file's content (pid, host, start time) is only there to name the holder in
the message. Reading (`conversations show/export/list`) never takes the lock.

The lock files are never deleted: unlinking a lock file while another process waits on it would let two
processes hold "the" lock on two different files.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from mixchat.session.errors import ConversationError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; one process per conversation is then up to the user
    fcntl = None  # type: ignore[assignment]

LOCKS = ".locks"
_HELD: set[str] = set()  # lock files this process holds: taking one again (the app renaming the open one) is fine


class ConversationLocked(ConversationError):
    """Another live process has the conversation open."""


class ConversationLock:
    """A held lock; `release` (or process exit) gives it up."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self.fd = fd

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        _HELD.discard(str(self.path))
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> ConversationLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_path(root: Path, key: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_:" else "_" for ch in key)[:80].replace(":", "_")
    return root / LOCKS / f"{safe}.lock"


def acquire(root: Path, key: str, name: str, purpose: str = "chat") -> ConversationLock:
    """Lock conversation `key` (its id) under the conversations folder `root`, or raise ConversationLocked.

    `name` and `purpose` only make the messages readable. A folder that cannot hold lock files (read-only
    media) gives an unlocked handle: reading and chatting still work there, and any save fails on its own.
    """
    path = lock_path(root, key)
    if fcntl is None or str(path) in _HELD:  # no locks here, or this process holds it already
        return ConversationLock(path, None)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return ConversationLock(path, None)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder(fd)
        os.close(fd)
        raise ConversationLocked(
            f"conversation {name!r} is open in another mixchat ({holder}); "
            f"read it with `mixchat conversations show {_quote(name)}`, or continue a copy with --fork NEW_NAME"
        ) from None
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": _now(),
        "purpose": purpose,
        "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200],
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
    except OSError:
        pass  # the lock is held all the same; only the holder's description is missing
    _HELD.add(str(path))
    return ConversationLock(path, fd)


def _holder(fd: int) -> str:
    try:
        info: Any = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "holder unknown"
    pid, host, since = info.get("pid"), info.get("host", "?"), info.get("since", "?")
    return f"pid {pid} on {host} since {since}, {info.get('purpose', '?')}"


def _now() -> str:
    from datetime import datetime

    return datetime.now().astimezone().isoformat(timespec="seconds")


def _quote(name: str) -> str:
    import shlex

    return shlex.quote(name)


class LockHolder:
    """The one conversation a front end has open: switching takes the new lock, then gives up the old one.

    One holder per process and data dir: two flocks on one file from one process would refuse each other.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key: str | None = None
        self.lock: ConversationLock | None = None

    def switch(self, key: str, name: str, purpose: str = "chat") -> None:
        """Hold conversation `key` instead of the current one; ConversationLocked if another process has it."""
        if key == self.key:
            return
        new = acquire(self.root, key, name, purpose)
        self.release()
        self.key, self.lock = key, new

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
        self.key, self.lock = None, None
