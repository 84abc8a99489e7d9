"""`mixchat` (no command) and `mixchat chat` open the app; problems before it opens, and a model that fails
to load inside it, end with one line on stderr and exit status 2."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from session_support import REPO
from tui_support import chat_screen, tiny_checkpoint

from mixchat.cli.main import build_parser
from mixchat.tui.keys import CHAT_KEYS, CONVERSATION_KEYS, SETTINGS_KEYS


def mixchat(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mixchat", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_a_missing_model_is_one_line_and_status_2(tmp_path: Path) -> None:
    proc = mixchat("--model", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "model folder not found" in proc.stderr and "Traceback" not in proc.stderr


def test_without_a_terminal_the_app_points_to_the_plain_repl() -> None:
    proc = mixchat("--model", str(tiny_checkpoint()))
    assert proc.returncode == 2 and "chat --plain" in proc.stderr and proc.stderr.count("\n") == 1
    proc = mixchat("chat", "--model", str(tiny_checkpoint()))  # `mixchat chat` without --plain is the app too
    assert proc.returncode == 2 and "chat --plain" in proc.stderr


def test_nothing_to_resume_is_one_line(tmp_path: Path) -> None:
    proc = mixchat("--model", str(tiny_checkpoint()), "--resume", "--data-dir", str(tmp_path))
    assert proc.returncode == 2 and "no saved conversation to resume" in proc.stderr


def test_app_options_parse() -> None:
    args = build_parser().parse_args(["--model", "m", "--resume", "--theme", "ember", "--experts-per-token", "3"])
    assert (args.model, args.resume, args.theme, args.experts_per_token) == ("m", "", "ember", 3)
    assert args.tui_func.__module__ == "mixchat.cli.tui_command"
    args = build_parser().parse_args(["--resume", "trip plans"])
    assert args.resume == "trip plans"
    args = build_parser().parse_args(["generate", "--model", "x", "--prompt", "hi"])
    assert args.func.__module__ == "mixchat.cli.generate"  # subcommands still win


def test_weights_that_fail_to_load_end_the_app_with_one_line(tmp_path: Path) -> None:
    import shutil

    from mixchat.tui.app import MixchatApp

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint(), broken)
    (broken / "consolidated.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")

    async def scenario() -> MixchatApp:
        app = MixchatApp(broken, data_dir=tmp_path / "d", config=tmp_path / "c", deterministic=True)
        async with app.run_test() as pilot:
            for _ in range(200):
                if app._exit:
                    break
                await pilot.pause(0.02)
        return app

    app = asyncio.run(scenario())
    assert app.return_code == 2 and app.load_error and "\n" not in app.load_error


def test_the_app_loads_a_model_folder_with_progress(tmp_path: Path) -> None:
    from mixchat.tui.app import MixchatApp
    from mixchat.tui.messages import ModelLoadProgressed

    stages: list[str] = []

    class Recording(MixchatApp):
        def on_model_load_progressed(self, message: ModelLoadProgressed) -> None:
            stages.append(message.stage)
            super().on_model_load_progressed(message)

    async def scenario() -> None:
        app = Recording(
            tiny_checkpoint(), device="cpu", data_dir=tmp_path / "d", config=tmp_path / "c", deterministic=True
        )
        async with app.run_test() as pilot:
            chat = await chat_screen(pilot)
            assert chat.runtime.model.args.n_layers == 2

    asyncio.run(scenario())
    assert stages[0] == "reading the model folder" and any(s.startswith("loading the weights") for s in stages)


def test_readme_documents_every_key_and_shows_the_screenshot() -> None:
    readme = (REPO / "README.md").read_text()
    for key in (*CHAT_KEYS, *CONVERSATION_KEYS, *SETTINGS_KEYS):
        assert key.label in readme, f"README does not mention {key.label}"
    image = re.search(r"!\[[^\]]*\]\((docs/[^)]+\.svg)\)", readme)
    assert image and (REPO / image.group(1)).is_file()
