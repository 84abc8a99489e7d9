"""Helpers for the TUI tests: a tiny real random Mixtral (session_support's checkpoint), apps on it, and
small async helpers for pilots. No fakes: the app runs the real engine, cache and session."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from session_support import make_checkpoint, runtime

from mixchat.runtime import Runtime


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tui-ckpt"))


@pytest.fixture(scope="session")
def tiny_rt(tiny_ckpt: Path) -> Runtime:
    import torch

    torch.set_num_threads(1)  # tiny model: one thread is faster and leaves a core for the UI
    return runtime(tiny_ckpt)


def make_app(rt: Runtime, tmp: Path, **kwargs: Any) -> Any:
    from mixchat.tui.app import MixchatApp

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


__all__ = ["asyncio", "chat_screen", "idle", "make_app", "panel_lines", "slowed", "tiny_ckpt", "tiny_rt", "until"]
