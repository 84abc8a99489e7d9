"""The chat app driven by Textual's pilot, on a tiny real random Mixtral: no fake engine, cache or session.

What the app shows is checked against what the engine reports independently (a second run of the same turn
outside the app), and what it does is checked in the conversation, its cache and its files.
"""

from __future__ import annotations

import gc
import itertools
import json
import time
from pathlib import Path

import pytest
from tui_support import chat_screen, idle, make_app, panel_lines, slowed, tiny_runtime, until

from mixchat.engine import TokenGenerated
from mixchat.session import ChatSettings, Conversation, ConversationStore
from mixchat.tui.widgets.palette import expert_char


def run(coro):  # type: ignore[no-untyped-def]
    """Each test drives its app in its own event loop."""
    import asyncio

    return asyncio.run(coro)


def reference_turn(text: str, **settings):  # type: ignore[no-untyped-def]
    """The same turn run directly on the session layer: token ids and the engine's routing per token."""
    conv = Conversation.from_runtime(tiny_runtime(), ChatSettings(**{"temperature": 0.0, "max_tokens": 12, **settings}))
    tokens, routing = [], []
    for ev in conv.send(text):
        if isinstance(ev, TokenGenerated) and ev.token >= 0:
            tokens.append(ev.token)
            routing.append(ev.routing)
    return conv, tokens, routing


def test_reply_streams_and_grid_shows_the_engines_routing(tmp_path: Path) -> None:
    ref_conv, ref_tokens, ref_routing = reference_turn("Hello there")

    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await pilot.press(*"Hello there")
            await pilot.press("enter")
            await idle(pilot, chat)
            conv = chat.conversation
            # the reply on screen is the conversation's reply, which is the engine's
            assert [m.role for m in conv.messages] == ["user", "assistant"]
            assert conv.messages[1].content == ref_conv.messages[1].content
            (reply,) = chat.transcript.replies()
            assert reply.content == conv.messages[1].content
            # the panel's history holds the engine's routing for every generated token
            history = chat.history
            assert [t.token for t in history.tokens] == ref_tokens
            for t, r in zip(history.tokens, ref_routing, strict=True):
                assert [list(e) for e in t.experts] == r.experts
                assert [w for ws in t.weights for w in ws] == pytest.approx([w for ws in r.weights for w in ws])
            # ... and the grid draws those experts, cell by cell, for the columns it shows
            lines = panel_lines(chat.panel)
            grid = chat.panel.grid
            cw = grid.cell_width
            assert grid.view == list(range(len(ref_tokens) - len(grid.view), len(ref_tokens)))
            for layer in range(tiny_runtime().model.args.n_layers):
                row = lines[2 + layer]
                assert row.startswith(f"L{layer}")
                for col, index in enumerate(grid.view):
                    cell = row[4 + col * cw : 4 + col * cw + cw - 1]
                    assert cell == "".join(expert_char(e) for e in ref_routing[index].experts[layer][: cw - 1])
            # load counts: every routed token counted k times per layer
            assert all(sum(row) == 2 * len(ref_tokens) for row in history.counts)
            # the gauge shows the cache of the conversation
            gauge = chat.query_one("#cache-gauge").state
            assert (gauge.position, gauge.live, gauge.capacity) == (conv.cache.seen[0], conv.cache.live(0), 16)
            # saved after the turn
            assert ConversationStore(tmp_path / "data").exists(conv.name)

    run(scenario())


def test_escape_stops_the_reply_and_keeps_it_as_shown(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(tmp_path, overrides={"max_tokens": 400}, stream_interval=0.01)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            with slowed(tiny_runtime().engine, 0.01):
                await chat.send("Tell me everything")
                await until(pilot, lambda: chat.reply is not None and len(chat.history.tokens) >= 3, what="tokens")
                await pilot.press("escape")
                await idle(pilot, chat)
            conv = chat.conversation
            last = conv.messages[-1]
            assert last.finish_reason == "cancelled" and 3 <= last.tokens < 400
            (reply,) = chat.transcript.replies()
            assert reply.content == last.content  # what stays on screen is what the conversation kept
            assert "stopped" in str(reply.query_one(".reply-note").render())
            assert conv.cache.seen[0] == len(conv.ids) - 1  # the cache holds every id but the pending last one
            assert len(chat.history.tokens) == last.tokens
            # the conversation goes on from there
            conv.settings.max_tokens = 12
            await chat.send("Go on")
            await idle(pilot, chat)
            assert len(conv.messages) == 4 and conv.messages[-1].finish_reason == "length"

    run(scenario())


def test_new_conversation_keeps_the_old_one_saved(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await chat.send("First conversation")
            await idle(pilot, chat)
            first = chat.conversation
            await pilot.press("ctrl+n")
            await pilot.pause()
            assert chat.conversation is not first and chat.conversation.messages == []
            assert chat.transcript.replies() == [] and not chat.history.tokens
            assert chat.query_one("#cache-gauge").state.position == 0
            await chat.send("Second conversation")
            await idle(pilot, chat)
            names = {i.name for i in ConversationStore(tmp_path / "data").list()}
            assert names == {first.name, chat.conversation.name} and len(names) == 2

    run(scenario())


def test_resume_opens_the_saved_cache_without_prefilling_again(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "data")
    conv = Conversation.from_runtime(tiny_runtime(), ChatSettings(temperature=0.0, max_tokens=8))
    for text in ("One", "Two"):
        for _ in conv.send(text):
            pass
    store.save(conv, "saved chat")
    saved_ids = list(conv.ids)
    expected_next = reference_continuation(conv, "Three")

    async def scenario() -> None:
        app = make_app(tmp_path, resume="", overrides={"max_tokens": 8})
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            c = chat.conversation
            assert c.name == "saved chat" and c.ids == saved_ids
            assert c.cache.seen[0] == len(saved_ids) - 1 and c.prefilled_tokens == 0  # cache restored, not rebuilt
            assert [r.content for r in chat.transcript.replies()] == [m.content for m in conv.messages[1::2]]
            assert chat.query_one("#cache-gauge").state.position == len(saved_ids) - 1
            await chat.send("Three")
            await idle(pilot, chat)
            assert c.last.prompt_tokens < 20  # only the new turn was pre-filled
            assert c.messages[-1].content == expected_next

    run(scenario())


def reference_continuation(conv, text: str) -> str:  # type: ignore[no-untyped-def]
    """The reply to `text` after `conv`, computed from a fresh pre-fill of the whole conversation."""
    rt = tiny_runtime()
    fresh = Conversation(
        rt.engine,
        rt.tokenizer,
        conv.fingerprint,
        ChatSettings(temperature=0.0, max_tokens=8),
        messages=conv.messages,
        ids=conv.ids,
    )
    for _ in fresh.send(text):
        pass
    return fresh.messages[-1].content


def test_conversations_screen_opens_renames_exports_and_deletes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = ConversationStore(tmp_path / "data")
    for name in ("alpha", "beta"):
        c = Conversation.from_runtime(tiny_runtime(), ChatSettings(temperature=0.0, max_tokens=6))
        for _ in c.send(f"about {name}"):
            pass
        store.save(c, name)
    monkeypatch.chdir(tmp_path)

    async def scenario() -> None:
        from mixchat.tui.screens.conversations import ConversationsScreen

        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await pilot.press("ctrl+o")
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), what="conversations screen")
            screen = app.screen
            assert set(screen.names) == {"alpha", "beta"}
            screen.query_one("DataTable").move_cursor(row=screen.names.index("alpha"))
            await pilot.press("r")
            await pilot.pause()
            await pilot.press(*"gamma", "enter")  # the prompt opens with the old name selected: typing replaces it
            await until(pilot, lambda: "gamma" in screen.names, what="the rename")
            assert store.exists("gamma") and not store.exists("alpha")
            screen.query_one("DataTable").move_cursor(row=screen.names.index("gamma"))
            await pilot.press("e")
            await pilot.pause()
            await pilot.press("enter")  # accept the proposed path
            await until(pilot, lambda: (tmp_path / "gamma.md").is_file(), what="the export")
            assert "## User\n\nabout alpha" in (tmp_path / "gamma.md").read_text()
            screen.query_one("DataTable").move_cursor(row=screen.names.index("beta"))
            await pilot.press("d")
            await pilot.pause()
            await pilot.press("y")
            await until(pilot, lambda: "beta" not in screen.names, what="the delete")
            assert not store.exists("beta")
            await pilot.press("enter")  # open gamma (the only one left), with its cache
            await until(pilot, lambda: chat.conversation.name == "gamma" and not chat.busy, what="opening")
            assert chat.conversation.prefilled_tokens == 0
            assert chat.conversation.cache.seen[0] == len(chat.conversation.ids) - 1
            assert chat.conversation.messages[0].content == "about alpha"

    run(scenario())


def test_theme_switch_recolours_and_is_remembered(tmp_path: Path) -> None:
    from textual.color import Color

    async def scenario(theme: str | None) -> str:
        app = make_app(tmp_path, theme=theme)
        async with app.run_test(size=(100, 30)) as pilot:
            await chat_screen(pilot)
            before = app.expert_colours.colors[0]
            if theme is None:
                return app.theme
            app.theme = "ember"
            await pilot.pause()
            assert app.expert_colours.colors[0] == Color.parse("#fb4934") != before
            assert app.theme_variables["expert-0"] == "#fb4934"
            return app.theme

    assert run(scenario("mixchat-light")) == "ember"
    prefs = json.loads((tmp_path / "config" / "tui.json").read_text())
    assert prefs["theme"] == "ember"
    assert run(scenario(None)) == "ember"  # a new start without --theme uses the remembered one


def test_experts_per_token_is_used_by_the_engine(tmp_path: Path) -> None:
    _, ref_tokens, ref_routing = reference_turn("Route me", experts_per_token=3)

    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await pilot.press("f8")
            assert chat.conversation.settings.experts_per_token == 3
            assert "experts 3/8 (model uses 2)" in chat.status.text()
            await chat.send("Route me")
            await idle(pilot, chat)
            assert tiny_runtime().model.experts_per_token == 3
            assert [t.token for t in chat.history.tokens] == ref_tokens
            assert all(len(e) == 3 for t in chat.history.tokens for e in t.experts)
            assert [[list(e) for e in t.experts] for t in chat.history.tokens] == [r.experts for r in ref_routing]
            assert chat.panel.grid.cell_width == 4  # three experts drawn per cell
            await pilot.press("f7", "f7")
            assert chat.conversation.settings.experts_per_token == 1
            await chat.send("Once more")
            await idle(pilot, chat)
            assert tiny_runtime().model.experts_per_token == 1
            assert len(chat.history.tokens[-1].experts[0]) == 1

    run(scenario())


def test_long_paste_prefills_in_chunks_keeps_answering_and_cancels_cleanly(tmp_path: Path) -> None:
    from textual import events

    paste = "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}." for i in range(1800))
    paste = paste[:100_000]
    assert len(paste) == 100_000

    async def scenario() -> None:
        from mixchat.tui.widgets.prefill_bar import PrefillBar

        app = make_app(tmp_path, overrides={"chunk_size": 256}, stream_interval=0.01)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await chat.send("A first turn")
            await idle(pilot, chat)
            conv = chat.conversation
            before = (list(conv.ids), conv.cache.seen[0], len(conv.messages))
            box = chat.input
            app.post_message(events.Paste(paste))  # as the terminal driver delivers a bracketed paste
            await until(pilot, lambda: box.text == paste, what="the paste")
            assert "\n" in box.text  # the paste kept its lines (no line was sent on its own)
            bar = chat.query_one(PrefillBar)
            beats: list[float] = []  # a UI timer: gaps between its ticks show whether the UI ever froze
            app.set_interval(0.02, lambda: beats.append(time.perf_counter()))
            # What is timed is the app, not a full collection over everything the earlier tests of a whole
            # run left on the heap (in CI such a pass froze this process for about half a second).
            gc.collect()
            gc.freeze()
            with slowed(tiny_runtime().engine, 0.02):
                await pilot.press("enter")
                await until(pilot, lambda: bar.display and bar.progress[0] > 0, what="pre-fill progress")
                done, total = bar.progress
                assert 0 < done < total and total > 20_000
                assert chat.query_one("#cache-gauge").state.position > before[1]  # the gauge moves too
                # the UI answers keys while the model pre-fills
                for expected in (False, True):
                    asked = time.perf_counter()
                    app.simulate_key("ctrl+r")
                    await until(pilot, lambda e=expected: chat.panel_on is e, timeout=2, what="the key")
                    assert time.perf_counter() - asked < 0.5
                assert chat.busy and bar.display and bar.progress[0] < total
                gaps = [b - a for a, b in itertools.pairwise(beats)]  # from Enter to here
                assert len(gaps) > 20 and max(gaps) < 0.25, max(gaps)
                app.simulate_key("escape")
                await idle(pilot, chat)
            gc.unfreeze()
            # as if the paste had never been sent: same ids, same cache, same messages; the text is back
            assert (list(conv.ids), conv.cache.seen[0], len(conv.messages)) == before
            assert not bar.display
            assert box.text == paste
            assert len(chat.transcript.query("UserMessage")) == 1
            assert chat.query_one("#cache-gauge").state.position == before[1]

    run(scenario())


def test_dense_model_shows_no_experts(tmp_path: Path) -> None:
    import shutil

    from session_support import runtime, tiny_args, tokenizer_v1

    from mixchat.loader import random_model, save_native

    folder = tmp_path / "dense"
    args = tiny_args()
    args.moe = None
    save_native(random_model(args, seed=1, std=0.2), folder)
    shutil.copy(tokenizer_v1(), folder / "tokenizer.model.v1")
    rt = runtime(folder)

    async def scenario() -> None:
        app = make_app(tmp_path, rt)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await chat.send("Hello")
            await idle(pilot, chat)
            assert chat.conversation.messages[-1].role == "assistant"
            assert "no experts" in "\n".join(panel_lines(chat.panel))
            assert "dense" in chat.status.text()
            await pilot.press("f8")  # nothing to change, and no failure
            assert chat.conversation.settings.experts_per_token is None

    run(scenario())


def test_settings_screen_changes_the_conversation(tmp_path: Path) -> None:
    async def scenario() -> None:
        from mixchat.tui.screens.settings import SettingsScreen

        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await pilot.press("ctrl+s")
            await until(pilot, lambda: isinstance(app.screen, SettingsScreen), what="settings")
            screen = app.screen
            screen.query_one("#system").load_text("Answer briefly.")
            for field, value in (("temperature", "0.5"), ("max_tokens", "7"), ("seed", "42"), ("chunk_size", "64")):
                screen.query_one(f"#{field}").value = value
            screen.query_one("#experts_per_token").value = 4
            screen.query_one("#theme").value = "glacier"
            screen.query_one("#top_p").value = "2"  # out of range: refused on the screen
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert isinstance(app.screen, SettingsScreen)
            assert "top-p" in str(screen.query_one("#settings-error").render())
            screen.query_one("#top_p").value = "0.9"
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.screen is chat, what="back to the chat")
            s = chat.conversation.settings
            assert (s.system, s.temperature, s.top_p, s.max_tokens, s.seed, s.chunk_size, s.experts_per_token) == (
                "Answer briefly.",
                0.5,
                0.9,
                7,
                42,
                64,
                4,
            )
            assert app.theme == "glacier"
            await chat.send("Hi")
            await idle(pilot, chat)
            assert chat.conversation.messages[-1].tokens <= 7 and tiny_runtime().engine.chunk_size == 64
            assert tiny_runtime().model.experts_per_token == 4

    run(scenario())


def test_help_palette_and_small_terminal(tmp_path: Path) -> None:
    async def scenario() -> None:
        from mixchat.tui.screens.help import HelpScreen

        app = make_app(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            chat = await chat_screen(pilot)
            assert chat.has_class("-narrow") and chat.panel.display and chat.panel.size.width <= 34
            assert chat.input.size.height >= 1 and chat.transcript.size.width >= 40  # room to read and type
            await pilot.press("f1")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is chat, what="chat again")
            titles = {c.title for c in app.get_system_commands(chat)}
            assert {
                "New conversation",
                "Conversations",
                "Settings",
                "Toggle routing panel",
                "Colour by expert",
                "More experts per token",
                "Fewer experts per token",
                "Stop the reply",
                "Theme",
                "Export this conversation",
                "Rename this conversation",
                "Help",
            } <= titles
            await pilot.press("ctrl+r")
            assert not chat.panel.display and chat.transcript.size.width > 70  # the chat takes the room
            prefs = json.loads((tmp_path / "config" / "tui.json").read_text())
            assert prefs["panel"] is False

    run(scenario())


def test_colouring_by_expert_uses_the_selected_layer(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            await chat.send("Colour me")
            await idle(pilot, chat)
            (reply,) = chat.transcript.replies()
            await pilot.press("ctrl+g")
            assert reply.has_class("-coloured") and chat.colour_layer == 0
            await pilot.press("ctrl+l")
            assert chat.colour_layer == 1 and chat.panel.selected_layer == 1
            text = reply.coloured_text
            assert text is not None and text.plain == reply.content
            firsts = [t.experts[1][0] for t in chat.history.tokens if t.text]
            assert [span.style.color for span in text.spans] == [app.expert_colours.fg(e).color for e in firsts]
            await pilot.press("ctrl+g")
            assert not reply.has_class("-coloured") and chat.colour_layer is None

    run(scenario())
