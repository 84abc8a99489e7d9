"""Retry, undo, edit, fork, copy, $EDITOR and search in the TUI, driven by Textual's pilot on the tiny real
random Mixtral (no fakes). What the app did is checked in the conversation, its cache (against one fresh
pre-fill of its ids), its files, the clipboard and the routing history.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import torch
from tui_support import chat_screen, idle, make_app, tiny_runtime, until

from mixchat.engine import TokenGenerated
from mixchat.model.layout import fresh_layout
from mixchat.session import ChatSettings, Conversation, ConversationStore


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@torch.inference_mode()
def assert_cache_matches_fresh_prefill(conv: Conversation) -> None:
    model = conv.model
    ref = model(torch.tensor(conv.ids), fresh_layout([len(conv.ids)], model.args.sliding_window, "cpu"),
                last_only=True)[0]  # fmt: skip
    torch.testing.assert_close(conv.next_token_logits(), ref, atol=1e-4, rtol=0)


def reference(turns: list[str]) -> tuple[Conversation, list[int]]:
    """The same turns on the session layer: the conversation and the last reply's routed token count."""
    conv = Conversation.from_runtime(tiny_runtime(), ChatSettings(temperature=0.0, max_tokens=12))
    n = 0
    for t in turns:
        n = sum(1 for ev in conv.send(t) if isinstance(ev, TokenGenerated) and ev.token >= 0)
    return conv, [n]


async def turns(pilot, chat, texts: list[str]) -> None:  # type: ignore[no-untyped-def]
    for t in texts:
        await chat.send(t)
        await idle(pilot, chat)


def test_retry_replaces_the_reply_with_the_same_one_at_temperature_zero(tmp_path: Path) -> None:
    ref, _ = reference(["Hello there", "Tell me about the sea and the sky"])

    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await turns(pilot, chat, ["Hello there", "Tell me about the sea and the sky"])
            history = len(chat.history.tokens)
            await pilot.press("f5")
            await idle(pilot, chat)
            conv = chat.conversation
            assert [m.content for m in conv.messages] == [m.content for m in ref.messages]
            assert conv.ids == ref.ids
            assert [r.content for r in chat.transcript.replies()] == [m.content for m in ref.messages[1::2]]
            assert len(chat.transcript.query("UserMessage")) == 2
            assert len(chat.history.tokens) == history  # the old reply's routing went, the new one's came
            assert_cache_matches_fresh_prefill(conv)
            assert chat.query_one("#cache-gauge").state.position == conv.cache.seen[0]

    run(scenario())


def test_undo_puts_the_message_back_and_the_panel_and_gauge_follow(tmp_path: Path) -> None:
    first, counts = reference(["One small step"])

    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await turns(pilot, chat, ["One small step", "and a second one that is a bit longer"])
            await pilot.press("f4")
            await idle(pilot, chat)
            conv = chat.conversation
            assert chat.input.text == "and a second one that is a bit longer"
            assert conv.ids == first.ids and [m.content for m in conv.messages] == [m.content for m in first.messages]
            assert len(chat.transcript.replies()) == 1 and len(chat.transcript.query("UserMessage")) == 1
            assert len(chat.history.tokens) == counts[0]  # only the first reply's routed tokens remain
            assert sum(chat.history.counts[0]) == 2 * counts[0]
            gauge = chat.query_one("#cache-gauge").state
            assert (gauge.position, gauge.live) == (conv.cache.seen[0], conv.cache.live(0))
            assert_cache_matches_fresh_prefill(conv)
            assert ConversationStore(tmp_path / "data").read(conv.name).turns == 1  # saved after the undo
            await pilot.press("f4")
            await idle(pilot, chat)
            assert conv.messages == [] and chat.transcript.replies() == []
            assert chat.input.text == "and a second one that is a bit longer"  # a full box is left alone
            await pilot.press("f4")  # nothing left: a warning, no crash
            await pilot.pause()
            assert not chat.busy

    run(scenario())


def test_edit_sends_the_changed_message_in_place_of_the_old(tmp_path: Path) -> None:
    ref, _ = reference(["Hello", "What is a dog?"])

    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await turns(pilot, chat, ["Hello", "What is a cat?"])
            await pilot.press("f3")
            assert chat.input.text == "What is a cat?" and chat.editing
            await pilot.press("backspace", "backspace", "backspace", "backspace", *"dog?")
            await pilot.press("enter")
            await idle(pilot, chat)
            conv = chat.conversation
            assert conv.ids == ref.ids and [m.content for m in conv.messages] == [m.content for m in ref.messages]
            assert [u.text for u in chat.transcript.query("UserMessage")] == ["Hello", "What is a dog?"]
            assert len(chat.transcript.replies()) == 2
            # Esc leaves edit mode without changing anything
            await pilot.press("f3")
            await pilot.press("escape")
            assert not chat.editing and chat.input.text == ""
            assert conv.ids == ref.ids

    run(scenario())


def test_fork_goes_on_in_a_copy_and_the_original_stays(tmp_path: Path) -> None:
    async def scenario() -> None:
        from mixchat.tui.screens.dialogs import TextPrompt

        app = make_app(tmp_path, conversation="original")
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await turns(pilot, chat, ["A first message"])
            ids = list(chat.conversation.ids)
            await pilot.press("f6")
            await until(pilot, lambda: isinstance(app.screen, TextPrompt), what="the name prompt")
            app.screen.query_one("Input").value = "branch"
            await pilot.press("enter")
            await until(pilot, lambda: chat.conversation.name == "branch" and not chat.busy, what="the fork")
            await pilot.app.workers.wait_for_complete()
            await turns(pilot, chat, ["only in the branch"])
            store = ConversationStore(tmp_path / "data")
            assert store.read("original").ids == ids and store.read("original").turns == 1
            assert store.read("branch").turns == 2 and store.read("branch").ids[: len(ids)] == ids
            assert store.read("original").id != store.read("branch").id
            assert store.folder("original") != store.folder("branch")

    run(scenario())


def test_copy_the_reply_or_a_code_block(tmp_path: Path) -> None:
    async def scenario() -> None:
        from mixchat.tui.screens.copy import CopyChoice

        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await pilot.press("f9")  # no reply yet: a warning only
            assert app.clipboard == ""
            await turns(pilot, chat, ["Copy me"])
            await pilot.press("f9")
            assert app.clipboard == chat.conversation.messages[-1].content != ""
            reply = chat.conversation.messages[-1]
            reply.content = "Two blocks:\n```python\nprint('one')\n```\ntext\n```sh\nls -l\necho two\n```\n"
            await pilot.press("f9")
            await until(pilot, lambda: isinstance(app.screen, CopyChoice), what="the choice")
            await pilot.press("down", "down", "enter")
            await until(pilot, lambda: app.screen is chat, what="back")
            assert app.clipboard == "ls -l\necho two"

    run(scenario())


def test_editor_rewrites_the_message_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub = tmp_path / "stub_editor.py"
    stub.write_text(
        "import sys, pathlib\n"
        "p = pathlib.Path(sys.argv[1])\n"
        "p.write_text('edited: ' + p.read_text(encoding='utf-8').upper() + '\\nsecond line\\n', encoding='utf-8')\n",
        encoding="utf-8",
    )
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", f"{sys.executable} {stub}")

    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await pilot.press(*"a draft")
            await pilot.press("f2")
            await until(pilot, lambda: chat.input.text.startswith("edited"), what="the editor")
            assert chat.input.text == "edited: A DRAFT\nsecond line"
            await pilot.press("enter")
            await idle(pilot, chat)
            assert chat.conversation.messages[0].content == "edited: A DRAFT\nsecond line"
            monkeypatch.setenv("EDITOR", f"{sys.executable} -c 'import sys; sys.exit(3)'")
            await pilot.press(*"keep me")
            await pilot.press("f2")
            await pilot.pause()
            assert chat.input.text == "keep me"  # a failing editor changes nothing

    run(scenario())


def save_two(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "data")
    for name, text in (("trip plans", "Where should we go?"), ("recipes", "A soup, please")):
        conv = Conversation.from_runtime(tiny_runtime(), ChatSettings(temperature=0.0, max_tokens=6))
        for _ in conv.send(text):
            pass
        store.save(conv, name)


def test_search_filters_the_conversations_and_c_copies_one(tmp_path: Path) -> None:
    save_two(tmp_path)

    async def scenario() -> None:
        from mixchat.tui.screens.conversations import ConversationsScreen

        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            chat.action_search()  # the palette's "Search conversations": the filter box has the focus
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), what="conversations")
            screen = app.screen
            await pilot.pause()
            assert set(screen.names) == {"trip plans", "recipes"}
            await pilot.press(*"SOUP")
            await until(pilot, lambda: screen.names == ["recipes"], what="the filter")
            await pilot.press("enter", "c")  # to the list, then copy the selected one
            await pilot.pause()
            app.screen.query_one("Input").value = "soups"
            await pilot.press("enter")
            await until(pilot, lambda: "soups" in screen.names, what="the copy")
            store = ConversationStore(tmp_path / "data")
            assert store.read("soups").ids == store.read("recipes").ids
            assert store.read("soups").id != store.read("recipes").id
            screen.query_one("#conversations-filter").value = "nothing like this"
            await until(pilot, lambda: screen.names == [], what="no match")
            # the copy opens with its own cache (and undo log): nothing to pre-fill
            screen.query_one("#conversations-filter").value = ""
            await until(pilot, lambda: len(screen.names) == 3, what="all again")
            screen.query_one("DataTable").move_cursor(row=screen.names.index("soups"))
            await pilot.press("enter")
            await until(pilot, lambda: chat.conversation.name == "soups" and not chat.busy, what="opening")
            assert chat.conversation.prefilled_tokens == 0 and len(chat.conversation.undo_log) == 1

    run(scenario())


def test_palette_lists_the_steering_commands(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            titles = {c.title for c in app.get_system_commands(chat)}
            assert {
                "Retry the last reply",
                "Undo the last turn",
                "Edit the last message",
                "Fork this conversation",
                "Copy the last reply",
                "Write the message in $EDITOR",
                "Search conversations",
            } <= titles

    run(scenario())


def test_undo_beyond_the_log_rebuilds_the_cache_with_progress(tmp_path: Path) -> None:
    from mixchat.tui.messages import PrefillProgressed, TurnUndone

    seen: list[object] = []

    async def scenario() -> None:
        app = make_app(tmp_path, overrides={"chunk_size": 8})
        async with app.run_test(size=(120, 40), message_hook=seen.append) as pilot:
            chat = await chat_screen(pilot)
            await turns(pilot, chat, ["A first message about rivers", "and a second one about hills"])
            conv = chat.conversation
            assert conv.cache.wraps(0) >= 2  # the window (16) has wrapped: no exact rewind without the log
            conv.undo_log.clear()  # as for a conversation whose saved log could not be used
            await pilot.press("f4")
            await idle(pilot, chat)
            (undone,) = {id(m): m for m in seen if isinstance(m, TurnUndone)}.values()  # once (it bubbles)
            assert not undone.exact and undone.error is None
            progress = [m for m in seen if isinstance(m, PrefillProgressed)]
            assert progress and progress[-1].done == progress[-1].total == len(conv.ids) - 1
            assert conv.cache.seen[0] == len(conv.ids) - 1 and chat.input.text == "and a second one about hills"
            assert_cache_matches_fresh_prefill(conv)
            assert chat.query_one("#cache-gauge").state.position == conv.cache.seen[0]

    run(scenario())
