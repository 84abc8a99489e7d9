"""The TUI's own remembered preferences (chosen theme, panel on or off) and where user themes live.

Kept apart from conversations: conversations are data (platformdirs user *data* dir), preferences are
configuration (platformdirs user *config* dir). `MIXCHAT_CONFIG_DIR` overrides the location, so tests and
portable setups never touch the real home directory.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import platformdirs

from mixchat.flags import CONFIG_DIR
from mixchat.session.files import user_dir

ENV_CONFIG_DIR = CONFIG_DIR
PREFS_FILE = "tui.json"


def config_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """--config-dir, else $MIXCHAT_CONFIG_DIR, else the platform's user config dir (e.g. ~/.config/mixchat)."""
    return user_dir(override, ENV_CONFIG_DIR, platformdirs.user_config_dir("mixchat", appauthor=False))


def user_theme_dir(base: Path) -> Path:
    return base / "themes"


@dataclass
class Prefs:
    theme: str | None = None
    panel: bool = True

    @classmethod
    def load(cls, base: Path) -> Prefs:
        """Read the preferences; a missing or damaged file means defaults (they are only preferences)."""
        try:
            data: Any = json.loads((base / PREFS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        prefs = cls()
        if isinstance(data.get("theme"), str):
            prefs.theme = data["theme"]
        if isinstance(data.get("panel"), bool):
            prefs.panel = data["panel"]
        return prefs

    def save(self, base: Path) -> str | None:
        """Write atomically; returns a one-line problem instead of raising (losing a preference is not fatal)."""
        known = {f.name for f in fields(self)}
        path = base / PREFS_FILE
        tmp = base / f".{PREFS_FILE}.{os.getpid()}.tmp"
        try:
            base.mkdir(parents=True, exist_ok=True)
            tmp.write_text(
                json.dumps({k: v for k, v in asdict(self).items() if k in known}, indent=2) + "\n", encoding="utf-8"
            )
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return f"could not save preferences in {path}: {e.strerror or e}"
        return None
