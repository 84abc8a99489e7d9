"""Where conversations live on disk, how their names become folder names, and how files are written.

Names are chosen by users (and by scripts, which may pass anything), while folder names must stay inside
the data dir on every file system. So a name is first cleaned (no control characters, bounded length), then
mapped to a conservative ASCII slug; whenever that mapping loses information, a hash of the full name is
appended, so two different names never share a folder and no name can reach outside the data dir.

Writes are atomic (temporary file in the same folder, fsync, rename, fsync of the folder): after a crash or
a SIGKILL at any moment, a file holds either its previous content or its new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path

import platformdirs

from mixchat.flags import DATA_DIR, folder_from_env
from mixchat.session.errors import ConversationError

ENV_DATA_DIR = DATA_DIR
MAX_NAME = 200  # characters of a conversation name
MAX_SLUG = 60  # characters of the readable part of a folder name
TMP_PREFIX = ".tmp-"
_SLUG_CHARS = re.compile(r"[^a-z0-9._-]+")
_SEPARATORS = ("/", "\\")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def user_dir(override: str | os.PathLike[str] | None, env_var: str, default: str) -> Path:
    """A command-line override, else an environment variable (tests use it), else the platform's folder."""
    if override:
        return Path(override).expanduser()
    env = folder_from_env(env_var)
    if env:
        return Path(env).expanduser()
    return Path(default)


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """--data-dir, else $MIXCHAT_DATA_DIR, else the platform's user data dir (e.g. ~/.local/share/mixchat)."""
    if override is not None and not str(override).strip():  # "" is a mistake, not "the default"
        raise ConversationError('--data-dir "" names no folder; give a folder, or leave the option out')
    return user_dir(override, ENV_DATA_DIR, platformdirs.user_data_dir("mixchat", appauthor=False))


def clean_name(name: str) -> str:
    """The name as it will be stored and shown: control characters removed, whitespace collapsed.

    Raises ConversationError for names that are empty after cleaning, longer than MAX_NAME characters, or
    not exactly one folder name ('.', '..', anything with a path separator): a name is normalised here,
    once, and every command (open, save, rename, delete, export) refuses what this refuses.
    """
    if not isinstance(name, str):
        raise ConversationError("a conversation name must be text")
    text = unicodedata.normalize("NFC", name)
    text = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch)[0] != "C")
    text = " ".join(text.split())
    if not text:
        raise ConversationError("a conversation name needs at least one visible character")
    if len(text) > MAX_NAME:
        raise ConversationError(
            f"a conversation name may have at most {MAX_NAME} characters (this one has {len(text)})"
        )
    if text in (".", "..") or any(sep in text for sep in _SEPARATORS):
        # Refused rather than mapped: 'a/../b' or 'b/.' must never be taken to mean 'b'.
        raise ConversationError(f"a conversation name cannot be '.' or '..' or contain '/' or '\\' (got {text!r})")
    return text


def slug(name: str) -> str:
    """The folder name for a (cleaned) conversation name: [a-z0-9._-], no leading dot, bounded length."""
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    base = _SLUG_CHARS.sub("-", ascii_text).strip("-._")[:MAX_SLUG].strip("-._")
    lossy = base != name or base.split(".")[0] in _WINDOWS_RESERVED
    if not base:
        base = "conversation"
    if lossy:
        base = f"{base}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"
    return base


def contained(root: Path, folder_name: str) -> Path:
    """root/folder_name, refusing anything that would resolve outside root (defence in depth)."""
    path = root / folder_name
    if path.resolve().parent != root.resolve() or folder_name in ("", ".", ".."):
        raise ConversationError(f"unsafe conversation folder name {folder_name!r}")
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temporary file next to `path`, fsync it, then rename it over `path`.

    The temporary sits in a private folder named after this process, because writers may make temporaries
    of their own (safetensors writes to a `.tmpXXXXXX` file and renames it): a kill in the middle then
    leaves everything inside one folder that `remove_stale_temporaries` can recognise and delete.
    """
    workdir = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")
    tmp = workdir / path.name
    try:
        workdir.mkdir()
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files left by a save that was killed (never the files a save renamed into place).

    A temporary whose writer process still runs is kept: it may be another mixchat saving right now.
    """
    for p in folder.glob(f"{TMP_PREFIX}*"):
        pid_text = p.name[len(TMP_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own temporaries are removed as soon as a write fails; any left are stale
    if os.name == "nt":
        return True  # os.kill would terminate the process there, not probe it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True
