"""The layers below the front ends never import Textual (DESIGN.md: data flows one way)."""

from __future__ import annotations

import subprocess
import sys

from session_support import REPO

CORE = [
    "mixchat.model",
    "mixchat.model.transformer",
    "mixchat.model.layers",
    "mixchat.model.attention",
    "mixchat.cache",
    "mixchat.engine",
    "mixchat.tokenizer",
    "mixchat.chat_template",
    "mixchat.loader",
    "mixchat.runtime",
    "mixchat.sampling",
    "mixchat.session",
    "mixchat.session.conversation",
    "mixchat.session.store",
    "mixchat.session.settings",
    "mixchat.session.transcript",
    "mixchat.session.cachefile",
    "mixchat.session.fingerprint",
    "mixchat.session.files",
    "mixchat.model.stage",
    "mixchat.distributed.driver",
    "mixchat.distributed.follower",
    "mixchat.distributed.launch",
]


def imported_after(modules: list[str], *extra: str) -> set[str]:
    code = (
        "import importlib, sys\n"
        + "".join(f"importlib.import_module({m!r})\n" for m in modules)
        + "".join(f"{line}\n" for line in extra)
        + "print('\\n'.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, check=True
    )
    return set(out.stdout.split())


def test_model_cache_engine_and_session_import_without_textual() -> None:
    loaded = imported_after(CORE)
    assert set(CORE) <= loaded
    assert not {m for m in loaded if m == "textual" or m.startswith("textual.")}


def test_the_cli_loads_textual_only_to_run_the_app() -> None:
    loaded = imported_after(
        ["mixchat.cli.main", "mixchat.cli.chat", "mixchat.cli.tui_command"],
        "from mixchat.cli.main import build_parser",
        "build_parser()",
    )
    assert "textual" not in loaded
    assert "textual" in imported_after(["mixchat.tui.app"])
