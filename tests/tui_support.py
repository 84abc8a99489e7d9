"""Helpers for the TUI tests: a tiny real random Mixtral (session_support's checkpoint), apps on it, and
small async helpers for pilots. No fakes: the app runs the real engine, cache and session."""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from session_support import make_checkpoint, runtime

from mixchat.runtime import Runtime


@functools.cache
def tiny_checkpoint() -> Path:
    """One tiny random Mixtral checkpoint per test process (its folder name shows in the status line)."""
    root = Path(tempfile.mkdtemp(prefix="mixchat-tui-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return make_checkpoint(root / "tiny-mixtral")


@functools.cache
def tiny_runtime() -> Runtime:
    """The checkpoint loaded once, shared by the tests (each opens its own conversations on it)."""
    import torch

    torch.set_num_threads(1)  # tiny model: one thread is faster and leaves a core for the UI
    return runtime(tiny_checkpoint())


def make_app(tmp: Path, rt: Runtime | None = None, **kwargs: Any) -> Any:
    """The app on an already loaded model (the tiny one by default), greedy, deterministic drawing."""
    from mixchat.tui.app import MixchatApp

    rt = rt if rt is not None else tiny_runtime()
    overrides = {"temperature": 0.0, "max_tokens": 12, **kwargs.pop("overrides", {})}
    kwargs.setdefault("deterministic", True)
    return MixchatApp(runtime=rt, data_dir=tmp / "data", config=tmp / "config", overrides=overrides, **kwargs)


async def until(pilot: Any, condition: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """Let the app run until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def chat_screen(pilot: Any) -> Any:
    from mixchat.tui.screens.chat import ChatScreen

    await until(pilot, lambda: isinstance(pilot.app.screen, ChatScreen), what="the chat screen")
    await pilot.pause()
    return pilot.app.screen


async def idle(pilot: Any, chat: Any) -> None:
    """Wait until no model work runs and the UI has handled every message."""
    await until(pilot, lambda: not chat.busy, what="the turn to end")
    await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.05)


@contextlib.contextmanager
def slowed(engine: Any, seconds: float) -> Iterator[None]:
    """Make every forward pass of the real engine take a little longer, so a test can act mid-turn."""
    original = engine.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return original(*args, **kwargs)

    engine.forward = forward
    try:
        yield
    finally:
        del engine.forward


def strip_text(strip: Any) -> str:
    return "".join(segment.text for segment in strip)


def panel_lines(panel: Any) -> list[str]:
    return [strip_text(s) for s in panel._strips_for(panel.scrollable_content_region.width)]
