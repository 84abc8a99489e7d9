"""Driving the app without a terminal (`App.run_test`), for the scripts that measure or draw it."""

from __future__ import annotations

import time
from typing import Any


async def open_chat(pilot: Any, timeout: float = 60.0) -> Any:
    """Wait for the model to load and the chat screen to open; returns that screen."""
    from mixchat.tui.screens.chat import ChatScreen

    deadline = time.monotonic() + timeout
    while not isinstance(pilot.app.screen, ChatScreen):
        if time.monotonic() > deadline:
            raise SystemExit("the chat screen did not open")
        await pilot.pause(0.05)
    return pilot.app.screen


async def send_and_wait(pilot: Any, chat: Any, text: str) -> None:
    """Send one message and return when its reply has finished."""
    await chat.send(text)
    while chat.busy:
        await pilot.pause(0.05)
