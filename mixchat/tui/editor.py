"""Writing a message in the user's own editor: $VISUAL or $EDITOR on a temporary file.

The app suspends itself around the editor (`App.suspend`), so the editor gets the terminal as it was before
the app started. The file round trip is a plain function, apart from the suspending, so a test can drive it
with a stub editor script.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path


class EditorError(Exception):
    """The editor could not be run, or failed (one line)."""


def editor_command(env: dict[str, str] | None = None) -> list[str]:
    """$VISUAL, else $EDITOR (either may carry arguments, e.g. `code --wait`), else vi or nano if present."""
    env = dict(os.environ) if env is None else env
    for var in ("VISUAL", "EDITOR"):
        value = env.get(var, "").strip()
        if value:
            return shlex.split(value)
    for fallback in ("vi", "nano"):
        if shutil.which(fallback):
            return [fallback]
    raise EditorError("no editor: set $EDITOR (for example EDITOR=nano)")


def edit_text(text: str, command: list[str] | None = None) -> str:
    """Let the editor change `text`; returns what the file holds afterwards (one final newline dropped)."""
    cmd = command if command is not None else editor_command()
    with tempfile.TemporaryDirectory(prefix="mixchat-edit-") as tmp:
        path = Path(tmp) / "message.md"
        path.write_text(text, encoding="utf-8")
        try:
            done = subprocess.run([*cmd, str(path)], check=False)
        except OSError as e:
            raise EditorError(f"could not run the editor {cmd[0]!r}: {e.strerror or e}") from None
        if done.returncode != 0:
            raise EditorError(f"the editor {cmd[0]!r} exited with status {done.returncode}; the message is unchanged")
        new = path.read_text(encoding="utf-8", errors="replace")
    return new[:-1] if new.endswith("\n") else new
