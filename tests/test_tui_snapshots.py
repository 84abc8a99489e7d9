"""Snapshot tests (pytest-textual-snapshot) of the chat screen mid-conversation, the conversations screen
and the settings screen, on the tiny random Mixtral with greedy decoding, fixed names and times, no speed
figures and no blinking cursor, so every run draws the same screens.

Update the snapshots after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tui_support import chat_screen, idle, make_app, tiny_runtime, until

from mixchat.session import ChatSettings, Conversation, ConversationStore

SIZE = (110, 32)
FIXED_TIME = "2025-01-31T14:25:00+00:00"


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Conversation times and their display do not depend on when or where the tests run."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setattr("mixchat.session.conversation.now_iso", lambda: FIXED_TIME)


async def two_turns(pilot) -> None:  # type: ignore[no-untyped-def]
    chat = await chat_screen(pilot)
    for text in ("Hello! What is a mixture of experts?", "Tell me more about routing."):
        await chat.send(text)
        await idle(pilot, chat)
    await pilot.pause(0.1)


def test_chat_screen_mid_conversation(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tmp_path, conversation="snapshot", overrides={"max_tokens": 24})
    assert snap_compare(app, terminal_size=SIZE, run_before=two_turns)


def test_conversations_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mixchat.tui.screens.conversations import ConversationsScreen

    store = ConversationStore(tmp_path / "data")
    for name, text in (("trip plans", "Where should we go?"), ("recipes", "A soup, please")):
        conv = Conversation.from_runtime(tiny_runtime(), ChatSettings(temperature=0.0, max_tokens=6))
        for _ in conv.send(text):
            pass
        store.save(conv, name)

    async def open_list(pilot) -> None:  # type: ignore[no-untyped-def]
        await chat_screen(pilot)
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConversationsScreen), what="conversations")
        await pilot.pause(0.1)

    app = make_app(tmp_path, conversation="recipes")
    assert snap_compare(app, terminal_size=SIZE, run_before=open_list)


def test_conversations_screen_with_a_filter(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The filter box keeps the conversations whose name or messages contain its text, and shows the match."""
    from mixchat.tui.screens.conversations import ConversationsScreen

    store = ConversationStore(tmp_path / "data")
    for name, text in (("trip plans", "Where should we go?"), ("recipes", "A soup, please"),
                       ("soup stories", "Tell me a story about soup")):  # fmt: skip
        conv = Conversation.from_runtime(tiny_runtime(), ChatSettings(temperature=0.0, max_tokens=6))
        for _ in conv.send(text):
            pass
        store.save(conv, name)

    async def filter_list(pilot) -> None:  # type: ignore[no-untyped-def]
        await chat_screen(pilot)
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConversationsScreen), what="conversations")
        await pilot.press("slash", *"soup")
        await until(pilot, lambda: len(pilot.app.screen.names) == 2, what="the filter")
        await pilot.pause(0.1)

    app = make_app(tmp_path, conversation="recipes")
    assert snap_compare(app, terminal_size=SIZE, run_before=filter_list)


def test_settings_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mixchat.tui.screens.settings import SettingsScreen

    async def open_settings(pilot) -> None:  # type: ignore[no-untyped-def]
        await chat_screen(pilot)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(pilot.app.screen, SettingsScreen), what="settings")
        await pilot.pause(0.1)

    app = make_app(
        tmp_path,
        conversation="settings demo",
        system="You are a helpful assistant.",
        overrides={"seed": 7, "max_tokens": 256},
    )
    assert snap_compare(app, terminal_size=SIZE, run_before=open_settings)
